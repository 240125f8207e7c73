"""The JWT a platform writes for tokend to send (``client_assertion_file``): a Kubernetes
projected service-account token, Azure's ``AZURE_FEDERATED_TOKEN_FILE``, a SPIFFE JWT-SVID.

Read at every request, through symlinks (Kubernetes' atomic writer swaps a ``..data``
symlink; :mod:`tokend.io.watch` watches the directories, so the swap wakes the credential),
never held between requests, never deleted or written (the volume is read-only, the file the
platform's). What is judged is :mod:`tokend.core.assertion`'s; a file that cannot be read or
holds no JWT is a one-line :class:`~tokend.config.ConfigError` naming the file and the key,
never quoting a byte of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tokend.config import ConfigError, CredentialConfig, SecretRef
from tokend.core.assertion import (
    MAX_ASSERTION_BYTES,
    MalformedAssertion,
    PlatformAssertion,
    judge_platform_assertion,
)
from tokend.core.token_request import ExchangeTokens
from tokend.io.files import UnreadableFile, read_small
from tokend.io.secret_sources import ref_path


def _read_ascii(
    cred: CredentialConfig, ref: SecretRef, environ: Mapping[str, str], what: str
) -> tuple[Path, str]:
    path = ref_path(cred, ref, environ)
    try:
        raw = read_small(path, MAX_ASSERTION_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(cred.source, f"{path}: {exc}", where=cred.where(ref.key)) from None
    try:
        return path, raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            cred.source, f"{path}: is not {what} (not ASCII text)", where=cred.where(ref.key)
        ) from None


def read_token_file(cred: CredentialConfig, ref: SecretRef, environ: Mapping[str, str]) -> tuple[Path, str]:
    """The one token in the file ``ref`` names, read now (the file the kernel opens through
    the symlinks, judged as read): ASCII, no whitespace inside, 16 KiB at most. Raises
    ConfigError naming the file and the key, never a byte of the content."""
    path, text = _read_ascii(cred, ref, environ, "a token")
    text = text.strip()
    if not text:
        raise ConfigError(cred.source, f"{path}: is empty", where=cred.where(ref.key))
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ConfigError(
            cred.source, f"{path}: holds more than one token or stray characters", where=cred.where(ref.key)
        )
    return path, text


def read_platform_assertion(
    cred: CredentialConfig, environ: Mapping[str, str] | None = None
) -> tuple[Path, PlatformAssertion]:
    """The credential's client assertion file, read now, and its JWT. Raises ConfigError."""
    import os

    ref = cred.client_assertion
    if ref is None:
        raise ConfigError(
            cred.source, "no client assertion configured", where=cred.where("client_assertion_file")
        )
    return read_jwt_file(cred, ref, os.environ if environ is None else environ)


def read_jwt_file(
    cred: CredentialConfig, ref: SecretRef, environ: Mapping[str, str]
) -> tuple[Path, PlatformAssertion]:
    """A file holding one JWT: read, then judged (shape, ``exp``). Raises ConfigError."""
    path, text = _read_ascii(cred, ref, environ, "a JWT")
    try:
        return path, judge_platform_assertion(text)
    except MalformedAssertion as exc:
        raise ConfigError(cred.source, f"{path}: {exc}", where=cred.where(ref.key)) from None


# Subject and actor tokens of these types are JWTs: judged as the client assertion is (an
# expired one is not sent). Others (an opaque access token) are sent as read.
JWT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")


def read_exchange_tokens(
    cred: CredentialConfig, environ: Mapping[str, str] | None = None
) -> tuple[ExchangeTokens, tuple[tuple[Path, PlatformAssertion], ...]]:
    """Token exchange's subject (and actor) token, read now, and those that are JWTs with
    where they came from (for the expiry check). Raises ConfigError."""
    import os

    env = os.environ if environ is None else environ
    jwts: list[tuple[Path, PlatformAssertion]] = []

    def read(ref: SecretRef, token_type: str) -> str:
        if token_type in JWT_TOKEN_TYPES:
            path, jwt = read_jwt_file(cred, ref, env)
            jwts.append((path, jwt))
            return jwt.value
        return read_token_file(cred, ref, env)[1]

    if cred.subject_token is None:
        raise ConfigError(cred.source, "no subject token configured", where=cred.where("subject_token_file"))
    subject = read(cred.subject_token, cred.subject_token_type)
    actor = None if cred.actor_token is None else read(cred.actor_token, cred.actor_token_type)
    exchange = ExchangeTokens(
        subject,
        cred.subject_token_type,
        actor,
        cred.actor_token_type if actor is not None else None,
        cred.requested_token_type,
    )
    return exchange, tuple(jwts)
