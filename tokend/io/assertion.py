"""Key-based client authentication: the private key of ``private_key_jwt`` and the
certificate of mutual TLS, read at request time, and the signed client assertion.

Keys are secrets like the client secret: read when a request is made (a key rotated on
disk is used at the next one), never logged, never echoed in an error. A key that cannot be
read or parsed, or a ``signing_alg`` that does not suit it, is a one-line
:class:`~tokend.config.ConfigError` naming the credential and the key. Which algorithm and
which claims is decided by :mod:`tokend.core.assertion`; signing is PyJWT's (with
``cryptography``), imported only here and only when a credential uses a key: without them,
the error says which extra to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokend.config import ConfigError, CredentialConfig
from tokend.core.assertion import KeyMismatch, assertion_claims, grant_claims, signing_alg
from tokend.io.files import OpenedFile, UnreadableFile, read_small, readable_by_others
from tokend.io.secret_sources import ref_path

MAX_KEY_BYTES = 64 * 1024
MIN_RSA_BITS = 2048
EXTRA = "pip install 'tokend[keys]'"


@dataclass(frozen=True)
class SigningKey:
    """A credential's private key, ready to sign; ``key`` never appears in a repr."""

    key: Any = field(repr=False)  # a cryptography private key
    alg: str
    kid: str | None
    fingerprint: str  # of the public key: safe to log
    headers: Mapping[str, str] = field(default_factory=dict)  # x5t, x5t#S256 from a certificate

    def sign(self, client_id: str, audience: str, *, now: float | None = None) -> str:
        """A fresh client assertion (a new ``jti`` each time: IdPs refuse a replay)."""
        import jwt

        claims = assertion_claims(
            client_id, audience, now=time.time() if now is None else now, jti=secrets.token_urlsafe(24)
        )
        headers = {**self.headers, **({"kid": self.kid} if self.kid is not None else {})}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers or None)

    def sign_grant(
        self, issuer: str, subject: str, audience: str, *, scope: str | None = None, now: float | None = None
    ) -> str:
        """A fresh JWT-bearer grant (RFC 7523 §2.1), signed like a client assertion."""
        import jwt

        claims = grant_claims(
            issuer,
            subject,
            audience,
            now=time.time() if now is None else now,
            jti=secrets.token_urlsafe(24),
            scope=scope,
        )
        headers = {**self.headers, **({"kid": self.kid} if self.kid is not None else {})}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers or None)


def _crypto(cred: CredentialConfig, key: str) -> Any:
    """cryptography's serialization module, or the one-line config error to install it."""
    try:
        import jwt  # noqa: F401  (signing needs it: better to say so now than at the request)
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ConfigError(
            cred.source, f"needs PyJWT and cryptography: {EXTRA}", where=cred.where(key)
        ) from None
    return serialization


def _private(opened: OpenedFile) -> str | None:
    """A private key readable by every local user is no longer private: refused, as
    OpenSSH refuses one (judged on the open file, the one then read)."""
    if readable_by_others(opened.st):
        mode = stat.S_IMODE(opened.st.st_mode)
        return f"holds a private key but is readable by others (mode {mode:04o}); chmod 600 it"
    return None


def _read(cred: CredentialConfig, key: str, path: Path, *, private: bool = False) -> bytes:
    try:
        return read_small(path, MAX_KEY_BYTES, judge=_private if private else None)
    except UnreadableFile as exc:
        raise ConfigError(cred.source, f"{path}: {exc}", where=cred.where(key)) from None


def _family(key: Any) -> tuple[str, str | None]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA", None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return "EC", curves.get(key.curve.name, key.curve.name)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "OKP", None
    return type(key).__name__, None


def load_private_key(cred: CredentialConfig, environ: Mapping[str, str] | None = None) -> Any:
    """The credential's private key (a cryptography object), read now. Raises ConfigError
    naming the key, never showing its content."""
    return _load_private_key(cred, environ)[0]


def _load_private_key(cred: CredentialConfig, environ: Mapping[str, str] | None) -> tuple[Any, bytes]:
    """The key, and the file's bytes (a certificate may follow the key in the same PEM)."""
    ref = cred.private_key
    if ref is None:
        raise ConfigError(cred.source, "no private key configured", where=cred.where("private_key_file"))
    serialization = _crypto(cred, ref.key)
    path = ref_path(cred, ref, environ or {})
    raw = _read(cred, ref.key, path, private=True)
    try:
        return serialization.load_pem_private_key(raw, password=None), raw
    except TypeError:  # "Password was not given but private key is encrypted"
        message = "is encrypted; tokend needs an unencrypted PEM key"
    except Exception:  # ValueError, UnsupportedAlgorithm: said without echoing a byte of it
        message = "is not a PEM private key (RSA, EC or Ed25519) that can be parsed"
    raise ConfigError(cred.source, f"{path}: {message}", where=cred.where(ref.key))


def signing_key(cred: CredentialConfig, environ: Mapping[str, str] | None = None) -> SigningKey:
    """The key to sign this credential's client assertions with, read now, its
    algorithm checked against it (RS256 / ES256 / ES384 / ES512 / EdDSA by default)."""
    import os

    environ = os.environ if environ is None else environ
    key, raw = _load_private_key(cred, environ)
    assert cred.private_key is not None
    family, curve = _family(key)
    if family == "RSA" and key.key_size < MIN_RSA_BITS:
        # RFC 7518 §3.3 asks for 2048 at least; PyJWT would sign anyway, with a warning.
        raise ConfigError(
            cred.source,
            f"{ref_path(cred, cred.private_key, environ)}: an RSA key of {key.key_size} bits is too "
            f"short to sign with; use one of {MIN_RSA_BITS} bits or more",
            where=cred.where(cred.private_key.key),
        )
    try:
        alg = signing_alg(family, curve, cred.signing_alg)
    except KeyMismatch as exc:
        raise ConfigError(
            cred.source, f"{exc} (the key in {cred.private_key.key})", where=cred.where("signing_alg")
        ) from None
    headers = _certificate_headers(cred, key, raw)
    return SigningKey(key, alg, cred.key_id, _fingerprint_of(key.public_key()), headers)


def _certificate_headers(cred: CredentialConfig, key: Any, raw: bytes) -> dict[str, str]:
    """``x5t`` and ``x5t#S256`` (RFC 7515 §4.1.7-8) when the key's PEM file holds its
    certificate too: Entra ID picks a certificate credential by its thumbprint, not by kid."""
    start = raw.find(b"-----BEGIN CERTIFICATE-----")
    if start < 0:
        return {}
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert cred.private_key is not None
    try:
        cert = x509.load_pem_x509_certificate(raw[start:])
    except Exception:
        raise ConfigError(
            cred.source,
            "the certificate after the key cannot be parsed",
            where=cred.where(cred.private_key.key),
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ConfigError(
            cred.source,
            "the certificate after the key is not the key's",
            where=cred.where(cred.private_key.key),
        )
    der = cert.public_bytes(serialization.Encoding.DER)

    def b64(digest: bytes) -> str:
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    return {"x5t": b64(hashlib.sha1(der).digest()), "x5t#S256": b64(hashlib.sha256(der).digest())}  # noqa: S324


def _fingerprint_of(public_key: Any) -> str:
    """SHA-256 of the public key's SubjectPublicKeyInfo (DER), hex: the same on every host
    with this key pair, and nothing secret."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def private_key_digest(cred: CredentialConfig, environ: Mapping[str, str] | None = None) -> bytes | None:
    """SHA-256 of the private key itself (PKCS#8 DER) of a key-based credential, or None:
    the same on every host with the key, and known only to them. Secret: never log it."""
    import os

    from cryptography.hazmat.primitives import serialization

    environ = os.environ if environ is None else environ
    if cred.private_key is not None:
        key = load_private_key(cred, environ)
    elif cred.tls_cert_file is not None:
        key = tls_identity(cred).key
    else:
        return None
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return hashlib.sha256(der).digest()


# --------------------------------------------------------------------------- mutual TLS


@dataclass(frozen=True)
class TlsIdentity:
    """The client certificate and its key, checked, and the very bytes that were checked."""

    cert_file: Path
    key_file: Path | None
    fingerprint: str  # of the certificate's public key
    subject: str
    key: Any = field(repr=False)
    pem: bytes = field(repr=False, default=b"")  # the certificate, then its key: a secret

    @contextlib.contextmanager
    def requests_cert(self) -> Iterator[str | tuple[str, str]]:
        """What to give requests as ``cert`` for one request. ssl loads a certificate only
        by path; the path given is of an anonymous in-memory file (``memfd``) holding the
        bytes judged here, so the files cannot be swapped between the check and the TLS
        handshake. Without memfd, the configured paths (read again by ssl)."""
        try:
            fd = os.memfd_create("tokend-client-cert", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            yield str(self.cert_file) if self.key_file is None else (str(self.cert_file), str(self.key_file))
            return
        try:
            view = memoryview(self.pem)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)


def certificate_thumbprint(cred: CredentialConfig) -> str:
    """SHA-256 of the client certificate (DER), hex, read now: what an IdP binds a token
    to (RFC 8705 §3.1), so part of the token's identity. Raises ConfigError naming the file."""
    cert_file = cred.tls_cert_file
    if cert_file is None:
        raise ConfigError(cred.source, "no client certificate configured", where=cred.where("tls_cert_file"))
    serialization = _crypto(cred, "tls_cert_file")
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(_read(cred, "tls_cert_file", cert_file))
    except ConfigError:
        raise
    except Exception:
        raise ConfigError(
            cred.source, f"{cert_file}: is not a PEM certificate", where=cred.where("tls_cert_file")
        ) from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def tls_identity(cred: CredentialConfig) -> TlsIdentity:
    """Read and check the client certificate and key now: they must parse and belong
    together, so that a bad file is a config error naming it, not a TLS failure."""
    cert_file = cred.tls_cert_file
    if cert_file is None:
        raise ConfigError(cred.source, "no client certificate configured", where=cred.where("tls_cert_file"))
    serialization = _crypto(cred, "tls_cert_file")
    from cryptography import x509

    # A certificate is public, unless its key is in the same file.
    cert_pem = _read(cred, "tls_cert_file", cert_file, private=cred.tls_key_file is None)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except Exception:
        raise ConfigError(
            cred.source, f"{cert_file}: is not a PEM certificate", where=cred.where("tls_cert_file")
        ) from None
    where, key_pem = (
        ("tls_key_file", _read(cred, "tls_key_file", cred.tls_key_file, private=True))
        if cred.tls_key_file
        else (
            "tls_cert_file",
            cert_pem,
        )
    )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            cred.source, "the key is encrypted; tokend needs an unencrypted PEM key", where=cred.where(where)
        ) from None
    except Exception:
        message = (
            "is not a PEM private key"
            if where == "tls_key_file"
            else "holds no PEM private key; set tls_key_file"
        )
        raise ConfigError(cred.source, message, where=cred.where(where)) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise ConfigError(
            cred.source,
            "the key does not belong to the certificate in tls_cert_file",
            where=cred.where(where),
        )
    return TlsIdentity(
        cert_file,
        cred.tls_key_file,
        _fingerprint_of(cert.public_key()),
        cert.subject.rfc4514_string(),
        key,
        cert_pem if cred.tls_key_file is None else cert_pem + b"\n" + key_pem,
    )
