"""DPoP's edges (RFC 9449): the key a credential's tokens are bound to, the proofs it signs,
and the newest nonce each server gave.

The key is a private key like ``private_key_jwt``'s and is read the same way: a regular
file (never a FIFO), owned by tokend's user or root and readable by no one else, judged
on the open descriptor. Without ``dpop_key_file`` it is made on first use (EC P-256 unless
the server or ``dpop_signing_alg`` says otherwise) and kept 0600 in the state directory's
``dpop/``, published with ``link()`` so that two processes making one at once agree on the
one that landed. Its thumbprint (RFC 7638) is public, and is what the token's ``cnf.jkt``
names; the private key never appears in a repr, a log line or an error.

Signing is PyJWT's (with ``cryptography``), imported only here and only for a DPoP
credential, as for key-based client auth (``tokend[keys]``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokend.config import ConfigError, CredentialConfig
from tokend.core.dpop import (
    ALG_ALIASES,
    KEY_DIR,
    DpopError,
    choose_alg,
    jwk_thumbprint,
    proof_claims,
    proof_header,
    valid_nonce,
)
from tokend.io.files import (
    OpenedFile,
    UnreadableFile,
    ensure_private_dir,
    fsync_dir,
    read_small,
    readable_by_others,
    temp_name,
    trusted_uids,
)

MAX_KEY_BYTES = 64 * 1024
EXTRA = "pip install 'tokend[keys]'"
# The key a new credential gets for each algorithm (RS256's: 2048 bits, as RFC 7518 §3.3 asks).
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}


class DpopKeyError(ValueError):
    """The key cannot be had or used; the message names the file, never its content."""


@dataclass(frozen=True)
class DpopKey:
    """A credential's DPoP key, ready to sign proofs; ``key`` never appears in a repr."""

    key: Any = field(repr=False)  # a cryptography private key
    alg: str
    public_jwk: Mapping[str, str]
    thumbprint: str  # RFC 7638, the token's cnf.jkt: public
    path: Path

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        now: float | None = None,
    ) -> str:
        """A fresh proof for one request (a new ``jti`` each time: servers refuse a replay)."""
        import jwt

        claims = proof_claims(
            method,
            url,
            now=time.time() if now is None else now,
            jti=secrets.token_urlsafe(18),
            access_token=access_token,
            nonce=nonce,
        )
        header = proof_header(self.alg, self.public_jwk)
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=header)


def _crypto() -> Any:
    try:
        import jwt  # noqa: F401  (signing needs it: better said now than at the request)
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise DpopKeyError(f"DPoP needs PyJWT and cryptography: {EXTRA}") from None
    return serialization


def _private(opened: OpenedFile) -> str | None:
    """A key someone else owns, or others can read, is not this daemon's secret."""
    if opened.st.st_uid not in trusted_uids():
        return f"holds a DPoP key but is owned by uid {opened.st.st_uid}, not tokend's user or root"
    if readable_by_others(opened.st) or opened.st.st_mode & 0o040:
        mode = opened.st.st_mode & 0o777
        return f"holds a DPoP key but others can read it (mode {mode:04o}); chmod 600 it"
    return None


def _family(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256" if key.key_size >= 2048 else ""
    return ""


def public_jwk(key: Any) -> dict[str, str]:
    """The public half as a JWK with only its required members (what a proof's header carries)."""
    import json

    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    family = _family(key)
    public = key.public_key()
    if family in ("ES256", "ES384"):
        full = json.loads(ECAlgorithm.to_jwk(public))
        return {"kty": "EC", "crv": full["crv"], "x": full["x"], "y": full["y"]}
    if family == "EdDSA":
        full = json.loads(OKPAlgorithm.to_jwk(public))
        return {"kty": "OKP", "crv": full["crv"], "x": full["x"]}
    if family == "RS256":
        full = json.loads(RSAAlgorithm.to_jwk(public))
        return {"kty": "RSA", "e": full["e"], "n": full["n"]}
    raise DpopKeyError("not a key DPoP signs with (EC P-256 or P-384, Ed25519, RSA of 2048 bits or more)")


def _parse(raw: bytes, path: Path, alg: str | None) -> DpopKey:
    serialization = _crypto()
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise DpopKeyError(f"{path}: not an unencrypted PEM private key") from None
    family = _family(key)
    if not family:
        raise DpopKeyError(
            f"{path}: not a key DPoP signs with (EC P-256 or P-384, Ed25519, RSA of 2048 bits or more)"
        )
    if alg is not None and alg != family:
        raise DpopKeyError(f"{path}: dpop_signing_alg {alg} cannot be used with this key ({family})")
    jwk = public_jwk(key)
    try:
        thumbprint = jwk_thumbprint(jwk)
    except DpopError as exc:
        raise DpopKeyError(f"{path}: {exc}") from None
    return DpopKey(key, family, jwk, thumbprint, path)


class MissingKey(DpopKeyError):
    """No key file (yet): a generated key is made then."""


def read_key(path: Path, alg: str | None = None) -> DpopKey:
    """The key in ``path``, judged on the open file (owner, mode, a regular file)."""
    if not os.path.lexists(path):
        raise MissingKey(f"{path}: no such file")
    try:
        raw = read_small(path, MAX_KEY_BYTES, limit_words="64 KiB", judge=_private)
    except UnreadableFile as exc:
        raise DpopKeyError(f"{path}: {exc}") from None
    return _parse(raw, path, alg)


def new_private_key(alg: str) -> Any:
    """A fresh key for ``alg`` (cryptography's, from the OS's randomness)."""
    _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg in _CURVES:
        curve = ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()
        return ec.generate_private_key(curve)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise DpopKeyError(f"tokend cannot make a DPoP key for {alg}")


def generated_key_path(state_dir: Path, credential: str) -> Path:
    return state_dir / KEY_DIR / f"{credential}.pem"


def key_for(state_dir: Path, credential: str, alg: str) -> DpopKey:
    """The credential's made key in ``state_dir`` (see :func:`made_key`)."""
    return made_key(generated_key_path(state_dir, credential), alg)


def made_key(path: Path, alg: str, *, exactly: bool = False) -> DpopKey:
    """The key tokend made at ``path``: the one there, or a new one made now and published
    only if no other process published one first (``link`` refuses an existing name, so
    both end up with the same key). ``exactly``: the one there must be for ``alg``
    (``dpop_signing_alg`` was set or changed), else a new one replaces it (a new key is a
    new token: the thumbprint is of the identity)."""
    existing = None
    with contextlib.suppress(MissingKey):
        existing = read_key(path)
    if existing is not None and (existing.alg == alg or not exactly):
        return existing
    serialization = _crypto()
    ensure_private_dir(path.parent)
    pem = new_private_key(alg).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if existing is not None:
            os.replace(tmp, path)  # for another algorithm: this one wins
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return read_key(path)


def credential_key(cred: CredentialConfig, supported: tuple[str, ...] | None = None) -> DpopKey:
    """A DPoP credential's key: its ``dpop_key_file`` (which must exist), else the one
    tokend made for it, made now for ``dpop_signing_alg`` or the first algorithm of the
    server's list (``supported``) that tokend signs with. With the server's list, the key's
    algorithm must be on it. Raises ConfigError naming the key."""
    path = cred.dpop_key
    if path is None:
        raise ConfigError(cred.source, "is not a DPoP credential", where=cred.where("dpop"))
    where = cred.where("dpop_key_file" if cred.dpop_key_file is not None else "dpop")
    try:
        if cred.dpop_key_file is not None:
            key = read_key(path, cred.dpop_signing_alg)
        else:
            alg = choose_alg(cred.dpop_signing_alg, supported)
            key = made_key(path, alg, exactly=cred.dpop_signing_alg is not None)
    except (DpopKeyError, DpopError) as exc:
        raise ConfigError(cred.source, str(exc), where=where) from None
    except OSError as exc:
        raise ConfigError(cred.source, f"{path}: cannot make the key: {exc.strerror}", where=where) from None
    offered = None if supported is None else {ALG_ALIASES.get(a, a) for a in supported}
    if offered is not None and key.alg not in offered:
        raise ConfigError(
            cred.source,
            f"{path} is an {key.alg} key, which the server's dpop_signing_alg_values_supported "
            f"({', '.join(sorted(offered)) or 'none'}) leaves out: set dpop_signing_alg to one of them",
            where=where,
        )
    return key


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class NonceBook:
    """The newest nonce each server gave (RFC 9449 §8.2: a server may hand a new one in any
    answer, and the next proof should carry it), keyed by the server's origin. Read and
    written from workers and the local-http thread: one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nonces: dict[str, str] = {}

    def get(self, url: str) -> str | None:
        with self._lock:
            return self._nonces.get(_origin(url))

    def note(self, url: str, headers: Mapping[str, str]) -> str | None:
        """Keep the answer's ``DPoP-Nonce`` (when it is one); the nonce kept, or None."""
        nonce = valid_nonce(headers.get("DPoP-Nonce"))
        if nonce is not None:
            with self._lock:
                self._nonces[_origin(url)] = nonce
        return nonce


NONCES = NonceBook()  # the process's one book: every worker's token requests and the proxies share it
