"""Encryption of what fleet mode keeps in Redis: AES-256-GCM under a key derived (HKDF-SHA256)
from what only the client's own hosts hold, with the identity as salt, info and associated
data. Someone who reads Redis without that material cannot use the tokens; a host with
another secret (or a blob moved to another identity's key) cannot decrypt them.

``cryptography`` is imported only here, and this module only when ``[fleet]`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tokend.config import ConfigError, CredentialConfig
from tokend.core.fleet import MAX_BLOB_BYTES, Shared, decode, encode
from tokend.io.secret_sources import read_secret

MAGIC = b"tokend-fleet-v1:"
NONCE_BYTES = 12
INFO = b"tokend fleet token v1 "


class Undecryptable(ValueError):
    """The blob was sealed with other key material, for another identity, or altered."""


def key_material(cred: CredentialConfig, environ: Mapping[str, str] | None = None) -> bytes:
    """What the fleet key derives from: the ONE place that chooses it.

    With a client secret, the secret. With a key-based client authentication
    (private_key_jwt, tls_client_auth) there is no shared secret, but every host of the
    client holds the same private key: the key derives from a digest of that private key
    (:func:`tokend.io.assertion.private_key_digest`), known only to those hosts. Not from
    the public key's fingerprint, which was once suggested:
    a public key is published (JWKS, certificates), and whoever reads Redis could then
    derive the key too. A client whose proof is the platform's rotating JWT
    (``client_assertion_file``) has nothing of the kind: refused, with a one-line error.
    """
    if cred.client_secret is not None:
        return b"secret:" + read_secret(cred, cred.client_secret, environ).encode("utf-8")
    from tokend.io import assertion  # only the key-based auths need it

    digest = assertion.private_key_digest(cred, environ)
    if digest is None and cred.client_assertion is not None:
        # The platform's JWT rotates and is readable by whatever reads the platform's files:
        # no key to seal with that only the fleet's hosts hold, and the same on all of them.
        raise ConfigError(
            cred.source,
            f"fleet mode cannot seal a token with a rotating platform token ({cred.client_assertion.key}); "
            "set fleet = false for this credential",
            where=cred.where("fleet"),
        )
    if digest is None:
        raise ConfigError(
            cred.source, "fleet mode needs a client secret or a private key", where=cred.where("fleet")
        )
    return b"private-key:" + digest


def derive_key(material: bytes, identity: str) -> bytes:
    ident = identity.encode("utf-8")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ident, info=INFO + ident)
    return hkdf.derive(material)


def seal(shared: Shared, material: bytes) -> bytes:
    """The blob stored in Redis and published: magic, nonce, AES-GCM(payload)."""
    nonce = os.urandom(NONCE_BYTES)
    ident = shared.identity.encode("utf-8")
    return MAGIC + nonce + AESGCM(derive_key(material, shared.identity)).encrypt(nonce, encode(shared), ident)


def unseal(blob: bytes, material: bytes, identity: str) -> Shared:
    """Raises :class:`Undecryptable` for a blob this host cannot open, ValueError for one
    that opens but holds something unusable. A blob over :data:`MAX_BLOB_BYTES` is
    refused before any work (a flood of big ones costs nothing but reading them)."""
    if len(blob) > MAX_BLOB_BYTES:
        raise Undecryptable(f"larger than {MAX_BLOB_BYTES} bytes")
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise Undecryptable("not a tokend fleet blob")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    sealed = blob[len(MAGIC) + NONCE_BYTES :]
    try:
        plain = AESGCM(derive_key(material, identity)).decrypt(nonce, sealed, identity.encode("utf-8"))
    except InvalidTag:
        raise Undecryptable("sealed with another secret or for another identity") from None
    return decode(plain)
