"""io/dpop: the DPoP key, made once and kept private, read like every private key, and the
proofs it signs, checked with PyJWT as a server would; the newest nonce per server."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokend.core.dpop import access_token_hash, jwk_thumbprint
from tokend.io.dpop import DpopKeyError, NonceBook, generated_key_path, key_for, read_key


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256"])
def test_a_made_key_signs_proofs_a_server_verifies_with_the_key_in_the_header(
    tmp_path: Path, alg: str
) -> None:
    key = key_for(tmp_path, "api", alg)
    assert key.alg == alg
    proof = key.proof("get", "https://api.example/v1?q=1", access_token="tok", nonce="n", now=1_700_000_000)
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == alg
    assert "d" not in header["jwk"]
    claims = jwt.decode(
        proof, jwt.PyJWK(header["jwk"], alg).key, algorithms=[alg], options={"verify_iat": False}
    )
    assert claims["htm"] == "GET" and claims["htu"] == "https://api.example/v1"
    assert claims["ath"] == access_token_hash("tok") and claims["nonce"] == "n"
    assert jwk_thumbprint(header["jwk"]) == key.thumbprint


def test_each_proof_has_a_fresh_jti(tmp_path: Path) -> None:
    key = key_for(tmp_path, "api", "ES256")
    jtis = {
        jwt.decode(key.proof("POST", "https://idp/t"), options={"verify_signature": False})["jti"]
        for _ in range(50)
    }
    assert len(jtis) == 50


def test_the_made_key_is_kept_0600_and_used_again(tmp_path: Path) -> None:
    first = key_for(tmp_path, "api", "ES256")
    path = generated_key_path(tmp_path, "api")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert key_for(tmp_path, "api", "ES256").thumbprint == first.thumbprint
    assert key_for(tmp_path, "other", "ES256").thumbprint != first.thumbprint
    assert "BEGIN" not in repr(first) and "key=" not in repr(first)


def _make(state: str, queue: multiprocessing.Queue[str]) -> None:
    queue.put(key_for(Path(state), "api", "ES256").thumbprint)


def test_two_processes_making_the_key_at_once_agree_on_one(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    makers = [context.Process(target=_make, args=(str(tmp_path), queue)) for _ in range(6)]
    for p in makers:
        p.start()
    for p in makers:
        p.join(30)
    assert len({queue.get(timeout=5) for _ in makers}) == 1
    assert [p.name for p in tmp_path.joinpath("dpop").iterdir()] == ["api.pem"]  # no temp left


def test_a_key_file_others_can_read_is_refused_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "dpop.pem"
    path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    path.chmod(0o644)
    with pytest.raises(DpopKeyError, match="others can read it") as refused:
        read_key(path)
    assert "BEGIN" not in str(refused.value)
    path.chmod(0o600)
    assert read_key(path).alg == "ES256"


def test_a_fifo_a_missing_file_and_garbage_are_one_line_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(DpopKeyError, match="FIFO"):
        read_key(fifo)
    with pytest.raises(DpopKeyError, match="no such file"):
        read_key(tmp_path / "absent")
    junk = tmp_path / "junk"
    junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n")
    junk.chmod(0o600)
    with pytest.raises(DpopKeyError, match="not an unencrypted PEM") as refused:
        read_key(junk)
    assert "secretstuff" not in str(refused.value)


def test_a_key_dpop_cannot_sign_with_or_the_wrong_alg_is_refused(tmp_path: Path) -> None:
    small = tmp_path / "small.pem"
    small.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))  # noqa: S505
    small.chmod(0o600)
    with pytest.raises(DpopKeyError, match="not a key DPoP signs with"):
        read_key(small)
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    p256.chmod(0o600)
    with pytest.raises(DpopKeyError, match="ES384 cannot be used"):
        read_key(p256, "ES384")


def test_the_newest_nonce_is_kept_per_server() -> None:
    book = NonceBook()
    assert book.get("https://idp.example/token") is None
    book.note("https://idp.example/token", {"DPoP-Nonce": "one"})
    book.note("https://IDP.example/token", {"DPoP-Nonce": "two"})
    book.note("https://idp.example/token", {"DPoP-Nonce": 'not"one'})
    book.note("https://api.example/x", {"DPoP-Nonce": "api"})
    assert book.get("https://idp.example/other") == "two"
    assert book.get("https://api.example/y") == "api"


def _dpop_credential(tmp_path: Path, extra: str = "") -> object:
    from tokend.config import parse

    config = parse(
        f'[tokend]\nstate_dir = "{tmp_path}/state"\n[credentials.api]\ntoken_url = "https://idp.example/t"\n'
        f'client_id = "c"\nclient_secret = "s"\nfleet = false\ndpop = true\n{extra}',
        tmp_path / "t.toml",
        environ={},
    )
    return config.credentials["api"]


def test_a_made_key_follows_dpop_signing_alg_and_the_servers_list_is_held_to(tmp_path: Path) -> None:
    """The made key is ES256 unless dpop_signing_alg says otherwise; setting it makes a key
    for that algorithm in place of the old one (a new thumbprint: a new token); a server
    whose dpop_signing_alg_values_supported leaves the key's algorithm out is a one-line
    error naming the key and the list, never a proof the server would refuse."""
    from tokend.config import ConfigError
    from tokend.io.dpop import credential_key

    first = credential_key(_dpop_credential(tmp_path))  # type: ignore[arg-type]
    assert first.alg == "ES256"
    assert credential_key(_dpop_credential(tmp_path), ("ES256", "RS256")).thumbprint == first.thumbprint  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as refused:
        credential_key(_dpop_credential(tmp_path), ("RS256", "PS256"))  # type: ignore[arg-type]
    message = str(refused.value)
    assert "ES256 key" in message and "PS256, RS256" in message and "dpop_signing_alg" in message
    assert "\n" not in message and "PRIVATE" not in message
    other = credential_key(_dpop_credential(tmp_path, 'dpop_signing_alg = "ES384"\n'))  # type: ignore[arg-type]
    assert other.alg == "ES384" and other.thumbprint != first.thumbprint
    assert read_key(other.path).thumbprint == other.thumbprint  # replaced on disk, still 0600
    assert os.stat(other.path).st_mode & 0o777 == 0o600
