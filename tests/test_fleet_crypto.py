"""tokend/io/fleet_crypto.py's edges: the size and shape a blob must have before any
decryption is tried, a blob that opens but holds no usable token, a publication without
Redis's time, the key per identity and per material, and the key material read at each
call (a rotated secret, a TLS client key, a credential with neither). That only the same
secret and identity open a sealed token, and that a private key's material is not its
public key's, is in tests/test_fleet.py with the rest of fleet mode."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokend.config import ConfigError, CredentialConfig, parse
from tokend.core.fleet import MAX_BLOB_BYTES, Shared
from tokend.core.tokens import Token
from tokend.io.fleet_crypto import MAGIC, NONCE_BYTES, Undecryptable, derive_key, key_material, seal, unseal

from .thirdparty.tls_front import Pki

NOW = 1_900_000_000.0
ID = "0123456789abcdef0123456789abcdef"
MATERIAL = b"secret:one"
TAG_BYTES = 16  # AES-GCM's


def shared(identity: str = ID) -> Shared:
    return Shared(identity, Token("tok-a", NOW + 60, NOW), "host-a", 60.0, NOW)


# --------------------------------------------------------------------------- the blob


def test_a_blob_over_the_limit_is_refused_unread() -> None:
    blob = seal(shared(), MATERIAL)
    with pytest.raises(Undecryptable, match=f"larger than {MAX_BLOB_BYTES} bytes"):
        unseal(blob + b"\0" * (MAX_BLOB_BYTES + 1 - len(blob)), MATERIAL, ID)
    with pytest.raises(Undecryptable, match="another secret"):  # at the limit: tried, and fails
        unseal(blob + b"\0" * (MAX_BLOB_BYTES - len(blob)), MATERIAL, ID)


def test_a_blob_too_short_for_a_nonce_and_a_tag_is_not_a_fleet_blob() -> None:
    shortest = MAGIC + b"\0" * (NONCE_BYTES + TAG_BYTES)
    with pytest.raises(Undecryptable, match="not a tokend fleet blob"):
        unseal(shortest[:-1], MATERIAL, ID)
    with pytest.raises(Undecryptable, match="another secret"):
        unseal(shortest, MATERIAL, ID)
    with pytest.raises(Undecryptable, match="not a tokend fleet blob"):
        unseal(b"tokend-fleet-v2:" + seal(shared(), MATERIAL)[len(MAGIC) :], MATERIAL, ID)


@pytest.mark.parametrize(
    "plain",
    [b"not json", b'{"v": 99}', b"[]", b'{"v": 1, "identity": "x"}'],
    ids=["not JSON", "another version", "not an object", "no token"],
)
def test_a_blob_that_opens_but_holds_no_usable_token_is_a_value_error_not_undecryptable(
    plain: bytes,
) -> None:
    """Sealed with our key (another host of ours, another version of tokend): it opens,
    and what it holds is refused for what it is."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(derive_key(MATERIAL, ID)).encrypt(nonce, plain, ID.encode())
    with pytest.raises(ValueError) as info:
        unseal(MAGIC + nonce + sealed, MATERIAL, ID)
    assert not isinstance(info.value, Undecryptable)


def test_a_publication_without_redis_time_is_never_sealed() -> None:
    with pytest.raises(ValueError, match="Redis's time"):
        seal(dataclasses.replace(shared(), stamped=None), MATERIAL)


def test_what_is_sealed_opens_whole_with_its_host_its_life_and_redis_time() -> None:
    assert unseal(seal(shared(), MATERIAL), MATERIAL, ID) == shared()


def test_each_identity_and_each_material_has_its_own_key() -> None:
    other_id = "f" * 32
    keys = {derive_key(m, i) for m in (MATERIAL, b"secret:two") for i in (ID, other_id)}
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)  # AES-256
    assert derive_key(MATERIAL, ID) == derive_key(MATERIAL, ID)  # every host derives the same


# --------------------------------------------------------------------------- the key material


def secret_credential(tmp: Path) -> CredentialConfig:
    (tmp / "api.secret").write_text("first-secret\n")
    text = (
        '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\n'
        f'client_secret_file = "{tmp}/api.secret"\n'
    )
    return parse(text, tmp / "tokend.toml", environ={}).credentials["api"]


def test_the_material_is_the_secret_as_it_is_now(tmp_path: Path) -> None:
    """A rotated secret is new material at once: what the old one sealed no longer opens."""
    cred = secret_credential(tmp_path)
    before = key_material(cred, {})
    blob = seal(shared(), before)
    (tmp_path / "api.secret").write_text("second-secret\n")
    after = key_material(cred, {})
    assert after == b"secret:second-secret" and after != before
    with pytest.raises(Undecryptable):
        unseal(blob, after, ID)


def test_tls_client_auth_derives_the_material_from_the_client_certificates_key(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.issue("client-a", "client")
    text = (
        '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\n'
        f'client_auth = "tls_client_auth"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
    )
    cred = parse(text, tmp_path / "tokend.toml", environ={}).credentials["api"]
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert key_material(cred, {}) == b"private-key:" + hashlib.sha256(der).digest()
    assert cert.read_bytes() not in key_material(cred, {})


def test_a_credential_with_neither_secret_nor_key_has_no_material(tmp_path: Path) -> None:
    """The config never makes one; the one function that chooses says so, in one line."""
    cred = dataclasses.replace(secret_credential(tmp_path), client_secret=None)
    with pytest.raises(ConfigError, match="fleet mode needs a client secret or a private key"):
        key_material(cred, {})


def test_a_platforms_rotating_assertion_is_no_material_and_fleet_mode_refuses_it(tmp_path: Path) -> None:
    """The platform's JWT rotates and differs between hosts: no key only the fleet holds."""
    base = (
        '[credentials.wi]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\n'
        f'client_assertion_file = "{tmp_path}/token"\n'
    )
    cred = parse(base, tmp_path / "tokend.toml", environ={}).credentials["wi"]
    with pytest.raises(ConfigError, match="cannot seal a token with a rotating platform token"):
        key_material(cred, {})
    fleet = '[fleet]\nredis_url = "redis://127.0.0.1:6379/0"\n'
    with pytest.raises(ConfigError, match=r"credentials\.wi\.fleet: fleet mode cannot seal tokens"):
        parse(fleet + base, tmp_path / "tokend.toml", environ={})
    parsed = parse(fleet + base + "fleet = false\n", tmp_path / "tokend.toml", environ={})
    assert parsed.credentials["wi"].fleet is False
