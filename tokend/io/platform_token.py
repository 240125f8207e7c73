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
from tokend.io.files import UnreadableFile, read_small


def assertion_path(cred: CredentialConfig, ref: SecretRef, environ: Mapping[str, str]) -> Path:
    """The file ``ref`` names: the path, or the systemd credential in $CREDENTIALS_DIRECTORY."""
    if ref.source == "file":
        return Path(ref.value)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            cred.source,
            "$CREDENTIALS_DIRECTORY is not set; load the credential with systemd's LoadCredential= "
            "or use client_assertion_file",
            where=cred.where(ref.key),
        )
    return Path(directory) / ref.value


def read_platform_assertion(
    cred: CredentialConfig, environ: Mapping[str, str] | None = None
) -> tuple[Path, PlatformAssertion]:
    """The credential's client assertion file, read now (the one the kernel opens through
    the symlinks, judged as read), and its JWT. Raises ConfigError."""
    import os

    ref = cred.client_assertion
    if ref is None:
        raise ConfigError(
            cred.source, "no client assertion configured", where=cred.where("client_assertion_file")
        )
    path = assertion_path(cred, ref, os.environ if environ is None else environ)
    try:
        raw = read_small(path, MAX_ASSERTION_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(cred.source, f"{path}: {exc}", where=cred.where(ref.key)) from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            cred.source, f"{path}: is not a JWT (not ASCII text)", where=cred.where(ref.key)
        ) from None
    try:
        return path, judge_platform_assertion(text)
    except MalformedAssertion as exc:
        raise ConfigError(cred.source, f"{path}: {exc}", where=cred.where(ref.key)) from None
