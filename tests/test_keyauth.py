"""Key-based client authentication (tokend/io/assertion.py, and its use by
tokend/io/token_client.py): private_key_jwt (RFC 7523) and tls_client_auth (RFC 8705)
against panva's oidc-provider, a real third-party server (tests/thirdparty/node), the
latter behind a TLS front that checks the client certificate (tests/thirdparty/tls_front.py).

Keys and certificates are made at test time; each PEM is a secret the hygiene check looks
for in everything tokend prints.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from tokend.config import ConfigError, parse
from tokend.core.assertion import ASSERTION_TYPE, KeyMismatch, signing_alg
from tokend.io.assertion import signing_key

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import (
    Start,
    assert_one_line_error,
    clean_env,
    distinct_tokens,
    run_tokend,
    started_server,
    stop_server,
    wait_for,
)
from .test_interop import _command
from .thirdparty.tls_front import Pki, TlsFront, key_pem, make_key, public_jwk

LIFETIME = 2


@dataclass(frozen=True)
class Provider:
    base: str  # the issuer, http://127.0.0.1:PORT
    port: int

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"

    def register(self, client_id: str, **metadata: Any) -> None:
        """Register (or register again) a client, as an operator would at the IdP."""
        request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1 only)
            f"{self.base}/test/clients/{client_id}", data=json.dumps(metadata).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (http://127.0.0.1)
            assert answer.status == 204


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """oidc-provider, once for the module, issuing LIFETIME-second tokens."""
    command, _ = _command("oidc-provider")
    errors = tmp_path_factory.mktemp("oidc") / "stderr.log"
    proc, port = started_server([*command, "unused-client", "unused-secret-1", str(LIFETIME)], errors)
    try:
        yield Provider(f"http://127.0.0.1:{port}", port)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def front(provider: Provider, pki: Pki) -> Iterator[TlsFront]:
    tls = TlsFront(provider.port, pki)
    yield tls
    tls.close()


def write_key(path: Path, key: Any) -> Path:
    pem = key_pem(key)
    SECRETS.add(pem, *pem.splitlines()[1:-1])  # the whole PEM, and each line of it
    path.write_text(pem)
    path.chmod(0o600)
    return path


def key_config(tmp: Path, *, where: str, client_id: str, key: Path | None = None, extra: str = "") -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    path = tmp / "tokend.toml"
    key_line = f'client_auth = "private_key_jwt"\nprivate_key_file = "{key}"\n' if key else ""
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.idp]\n{where}\n'
        f'client_id = "{client_id}"\n{key_line}scope = "read"\n{extra}\n'
        f'[[credentials.idp.sink]]\npath = "{tmp}/out/idp.token"\n'
    )
    return path


def fetched_token(result: subprocess.CompletedProcess[str], tmp: Path) -> str:
    assert result.returncode == 0, result.stderr
    token = (tmp / "out" / "idp.token").read_text().strip()
    assert len(token) >= 20
    SECRETS.add(token)
    return token


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert errors, stderr
    return errors[0]


# --------------------------------------------------------------------------- private_key_jwt


@pytest.mark.parametrize(("kind", "alg"), [("rsa", None), ("ec", None), ("ec384", None), ("rsa", "PS256")])
def test_private_key_jwt_by_token_url(provider: Provider, tmp_path: Path, kind: str, alg: str | None) -> None:
    key = make_key(kind)
    client_id = f"pkj-{kind}-{alg}"
    provider.register(
        client_id, token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(key, "k1")]}
    )
    extra = 'key_id = "k1"\n' + (f'signing_alg = "{alg}"\n' if alg else "")
    path = key_config(
        tmp_path,
        where=f'token_url = "{provider.token_url}"',
        client_id=client_id,
        key=write_key(tmp_path / "idp.key", key),
        extra=extra,
    )
    fetched_token(run_tokend("fetch", "-c", path, tmp=tmp_path), tmp_path)


def test_private_key_jwt_by_issuer_discovers_the_endpoint_and_caches_it(
    provider: Provider, tmp_path: Path
) -> None:
    key = make_key("ec")
    provider.register(
        "pkj-issuer", token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(key, "e1")]}
    )
    path = key_config(
        tmp_path,
        where=f'issuer = "{provider.base}"',
        client_id="pkj-issuer",
        key=write_key(tmp_path / "idp.key", key),
    )
    first = fetched_token(run_tokend("fetch", "-c", path, tmp=tmp_path), tmp_path)
    (cached,) = (tmp_path / "state" / "discovery").glob("*.json")
    record = json.loads(cached.read_text())
    assert record["metadata"]["token_endpoint"] == provider.token_url
    assert "private_key_jwt" in record["metadata"]["token_endpoint_auth_methods_supported"]
    # `tokend token` serves the cached token by the issuer's identity, fast path or not.
    result = run_tokend("token", "idp", "-c", path, tmp=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == first, result.stderr
    # check --online shows what was discovered, with no warning: the method is supported.
    online = run_tokend("check", "--online", "-c", path, tmp=tmp_path)
    assert online.returncode == 0, online.stderr
    assert f"discovered: idp: issuer {provider.base}: token endpoint {provider.token_url}" in online.stdout
    assert "warning" not in online.stderr


def test_a_wrong_key_is_an_invalid_client(provider: Provider, tmp_path: Path) -> None:
    registered, other = make_key("rsa"), make_key("rsa")
    provider.register(
        "pkj-wrong",
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [public_jwk(registered, "r1")]},
    )
    path = key_config(
        tmp_path,
        where=f'token_url = "{provider.token_url}"',
        client_id="pkj-wrong",
        key=write_key(tmp_path / "idp.key", other),
    )
    result = run_tokend("fetch", "-c", path, tmp=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "invalid_client (HTTP 401)" in error_line(result.stderr)


def test_a_key_rotated_on_disk_is_used_at_the_next_refresh(
    provider: Provider, tmp_path: Path, daemons: Start
) -> None:
    old, new = make_key("rsa"), make_key("ec")
    provider.register(
        "pkj-rotate", token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(old, "old")]}
    )
    key_file = write_key(tmp_path / "idp.key", old)
    path = key_config(
        tmp_path,
        where=f'token_url = "{provider.token_url}"',
        client_id="pkj-rotate",
        key=key_file,
        extra='min_ttl_margin = "0s"\nrefresh_at = 0.6\n',
    )
    daemon = daemons(path, tmp_path, clean_env(tmp_path))
    sink = tmp_path / "out" / "idp.token"
    before = distinct_tokens(sink, 1, 15, "a token signed with the old key")
    # The operator registers the new key beside the old, swaps the file, then retires the old.
    provider.register(
        "pkj-rotate",
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [public_jwk(old, "old"), public_jwk(new, "new")]},
    )
    fresh = tmp_path / "idp.key.new"
    write_key(fresh, new)
    fresh.replace(key_file)
    provider.register(
        "pkj-rotate", token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(new, "new")]}
    )
    # Only the new key is accepted now: new tokens prove the daemon signs with it.
    after = distinct_tokens(sink, len(before) + 2, 15, "two tokens signed with the new key")
    SECRETS.add(*after)
    wait_for(lambda: "invalid_client" not in daemon.log, 1, "no refused assertion")
    assert daemon.proc.poll() is None


# --------------------------------------------------------------------------- tls_client_auth


def tls_config(tmp: Path, front: TlsFront, pki: Pki, cert: Path, key: Path, client_id: str) -> Path:
    return key_config(
        tmp,
        where=f'token_url = "https://127.0.0.1:{front.port}/token"',
        client_id=client_id,
        extra=(
            f'client_auth = "tls_client_auth"\nca_bundle = "{pki.ca_file}"\n'
            f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        ),
    )


def test_tls_client_auth_with_the_registered_certificate(
    provider: Provider, front: TlsFront, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.issue("tokend-svc", "svc")
    SECRETS.add(key.read_text())
    provider.register(
        "mtls-svc", token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn="CN=tokend-svc"
    )
    seen = len(front.subjects)
    fetched_token(
        run_tokend("fetch", "-c", tls_config(tmp_path, front, pki, cert, key, "mtls-svc"), tmp=tmp_path),
        tmp_path,
    )
    assert front.subjects[seen:] == ["CN=tokend-svc"]


def test_tls_client_auth_with_another_certificate_is_an_invalid_client(
    provider: Provider, front: TlsFront, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.issue("someone-else", "other")
    SECRETS.add(key.read_text())
    provider.register(
        "mtls-strict",
        token_endpoint_auth_method="tls_client_auth",
        tls_client_auth_subject_dn="CN=tokend-svc",
    )
    result = run_tokend(
        "fetch", "-c", tls_config(tmp_path, front, pki, cert, key, "mtls-strict"), tmp=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "invalid_client (HTTP 401)" in error_line(result.stderr)


# --------------------------------------------------------------------------- bad keys


def test_an_unparseable_key_is_a_one_line_config_error(tmp_path: Path) -> None:
    pem = key_pem(make_key("rsa"))
    broken = pem[: len(pem) // 2] + pem[len(pem) // 2 + 40 :]  # a PEM with a piece cut out
    key_file = tmp_path / "idp.key"
    key_file.write_text(broken)
    key_file.chmod(0o600)
    SECRETS.add(pem, broken, *broken.splitlines()[1:-1])
    path = key_config(
        tmp_path, where='token_url = "https://idp.example.com/token"', client_id="c", key=key_file
    )
    result = run_tokend("check", "-c", path, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(result, "credentials.idp.private_key_file", str(key_file), "not a PEM private key")


def test_a_private_key_readable_by_others_is_refused_naming_the_file_and_its_mode(tmp_path: Path) -> None:
    """As OpenSSH refuses such a key: any local user could sign as the client. Judged on the
    file opened, so a 0600 key reached through a symlink is used, a 0644 one is not."""
    key_file = write_key(tmp_path / "idp.key", make_key("ec"))
    link = tmp_path / "current.key"
    link.symlink_to(key_file)
    path = key_config(tmp_path, where='token_url = "https://idp.example.com/token"', client_id="c", key=link)
    assert run_tokend("check", "-c", path, tmp=tmp_path).returncode == 0
    key_file.chmod(0o644)
    result = run_tokend("check", "-c", path, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(
        result, "credentials.idp.private_key_file", str(link), "readable by others (mode 0644)", "chmod 600"
    )


def test_an_alg_that_does_not_fit_the_key_is_a_one_line_config_error(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "idp.key", make_key("rsa"))
    path = key_config(
        tmp_path,
        where='token_url = "https://idp.example.com/token"',
        client_id="c",
        key=key_file,
        extra='signing_alg = "ES256"\n',
    )
    result = run_tokend("check", "-c", path, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(result, "credentials.idp.signing_alg", "ES256", "RSA key", "private_key_file")


@pytest.mark.parametrize(
    ("family", "curve", "configured", "expected"),
    [
        ("RSA", None, None, "RS256"),
        ("RSA", None, "PS256", "PS256"),
        ("EC", "P-256", None, "ES256"),
        ("EC", "P-384", None, "ES384"),
        ("EC", "P-521", None, "ES512"),
        ("OKP", None, None, "EdDSA"),
    ],
)
def test_the_alg_follows_the_key(
    family: str, curve: str | None, configured: str | None, expected: str
) -> None:
    assert signing_alg(family, curve, configured) == expected


@pytest.mark.parametrize(
    ("family", "curve", "configured"),
    [("RSA", None, "ES256"), ("EC", "P-256", "ES384"), ("EC", "P-384", "RS256"), ("EC", "secp256k1", None)],
)
def test_an_alg_the_key_cannot_sign_with_is_refused(
    family: str, curve: str | None, configured: str | None
) -> None:
    with pytest.raises(KeyMismatch):
        signing_alg(family, curve, configured)


def test_the_assertion_claims_and_header(tmp_path: Path) -> None:
    key = make_key("ec")
    key_file = write_key(tmp_path / "k.pem", key)
    cred = parse(
        '[credentials.a]\ntoken_url = "https://idp.example.com/t"\nclient_id = "c1"\n'
        f'client_auth = "private_key_jwt"\nprivate_key_file = "{key_file}"\nkey_id = "kid-1"\n',
        tmp_path / "t.toml",
        environ={},
    ).credentials["a"]
    signer = signing_key(cred, {})
    one, two = (signer.sign("c1", "https://idp.example.com/t", now=1_000_000) for _ in range(2))
    assert jwt.get_unverified_header(one) == {"alg": "ES256", "kid": "kid-1", "typ": "JWT"}
    claims = jwt.decode(
        one,
        key.public_key(),
        algorithms=["ES256"],
        audience="https://idp.example.com/t",
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "c1"
    assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["iat"] == 1_000_000
    assert claims["jti"] != jwt.decode(two, options={"verify_signature": False})["jti"]  # fresh each time
    from cryptography.hazmat.primitives import serialization

    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signer.fingerprint == hashlib.sha256(spki).hexdigest()  # of the public key: safe to log
    assert "BEGIN" not in repr(signer)
    assert ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_key_settings_go_with_their_method(tmp_path: Path) -> None:
    base = '[credentials.a]\ntoken_url = "https://idp.example.com/t"\nclient_id = "c"\n'
    cases = {
        'client_auth = "private_key_jwt"\n': "credentials.a.private_key_file: is required",
        'client_secret = "s3cret-value"\nkey_id = "k"\n': "credentials.a.key_id: only applies",
        'client_auth = "private_key_jwt"\nprivate_key_file = "k"\nclient_secret_file = "s"\n': (
            "credentials.a.client_secret_file: is not used"
        ),
        'client_auth = "tls_client_auth"\n': "credentials.a.tls_cert_file: is required",
        'client_secret = "s3cret-value"\ntls_key_file = "k"\n': "a.tls_key_file: needs tls_cert_file",
        'client_auth = "private_key_jwt"\nprivate_key_file = "k"\nissuer = "https://i.example"\n': (
            "credentials.a.token_url: conflicts with issuer"
        ),
    }
    for extra, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse(base + extra, tmp_path / "t.toml", environ={})
    cred = parse(
        '[credentials.a]\nissuer = "https://i.example/realm"\nclient_id = "c"\n'
        'client_auth = "private_key_jwt"\nprivate_key_credential = "k"\n',
        tmp_path / "t.toml",
        environ={},
    ).credentials["a"]
    assert (cred.token_url, cred.issuer, cred.client_secret) == (None, "https://i.example/realm", None)


def test_a_certificate_after_the_key_gives_its_thumbprints(tmp_path: Path) -> None:
    """Entra ID finds a certificate credential by x5t / x5t#S256, not by kid."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from .thirdparty.tls_front import cert_pem, make_cert

    key, other = make_key("rsa"), make_key("rsa")
    cert = make_cert(key, "tokend-entra")
    pem = key_pem(key)
    SECRETS.add(pem)
    key_file = tmp_path / "k.pem"
    key_file.write_text(pem + cert_pem(cert))
    key_file.chmod(0o600)
    text = (
        '[credentials.a]\ntoken_url = "https://login.example/t"\nclient_id = "c1"\n'
        f'client_auth = "private_key_jwt"\nprivate_key_file = "{key_file}"\nsigning_alg = "PS256"\n'
    )
    cred = parse(text, tmp_path / "t.toml", environ={}).credentials["a"]
    header = jwt.get_unverified_header(signing_key(cred, {}).sign("c1", "https://login.example/t"))
    der = cert.public_bytes(serialization.Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert header["alg"] == "PS256" and header["x5t#S256"] == thumb and len(header["x5t"]) == 27
    key_file.write_text(pem + cert_pem(make_cert(other, "someone-else")))
    with pytest.raises(ConfigError, match="private_key_file: the certificate after the key is not the key's"):
        signing_key(cred, {})


def test_a_key_from_a_systemd_credential(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    directory.mkdir()
    write_key(directory / "okta-key", make_key("ec384"))
    text = (
        '[credentials.a]\nissuer = "https://i.example"\nclient_id = "c"\n'
        'client_auth = "private_key_jwt"\nprivate_key_credential = "okta-key"\n'
    )
    cred = parse(text, tmp_path / "t.toml", environ={}).credentials["a"]
    assert signing_key(cred, {"CREDENTIALS_DIRECTORY": str(directory)}).alg == "ES384"
    with pytest.raises(ConfigError, match=r"private_key_credential: \$CREDENTIALS_DIRECTORY is not set"):
        signing_key(cred, {})


# --------------------------------------------------------------------------- certificate-bound tokens


def test_the_certificate_presented_is_the_one_checked_though_the_files_change_after(
    idp: TokenEndpoint, pki: Pki, tmp_path: Path
) -> None:
    """ssl loads a client certificate only by path: tokend hands it the bytes it checked
    (an in-memory file), so files swapped between the check and the handshake change
    nothing about who the request says it is."""
    import requests

    from tokend.io.assertion import tls_identity

    front = TlsFront(idp.server.port, pki)
    try:
        (cert_a, key_a), (cert_c, key_c) = pki.issue("svc-a", f"{tmp_path.name}-a"), pki.issue("svc-c", "c")
        SECRETS.add(key_a.read_text(), key_c.read_text())
        cert_file, key_file = tmp_path / "svc.crt", tmp_path / "svc.key"
        cert_file.write_bytes(cert_a.read_bytes())
        key_file.write_bytes(key_a.read_bytes())
        key_file.chmod(0o600)
        url = f"https://127.0.0.1:{front.port}/connect/token"
        extra = f'tls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\n'
        text = credential_toml(url, tmp_path, extra=extra)
        tls = tls_identity(parse(text, tmp_path / "t.toml", environ={}).credentials["api"])
        cert_file.write_bytes(cert_c.read_bytes())  # swapped after the check
        key_file.write_bytes(key_c.read_bytes())
        with tls.requests_cert() as cert:
            assert isinstance(cert, str) and cert.startswith("/proc/self/fd/")
            answer = requests.post(
                url, data={"grant_type": "client_credentials"}, cert=cert, verify=str(pki.ca_file), timeout=10
            )
        assert answer.status_code == 200 and front.subjects == ["CN=svc-a"]
    finally:
        front.close()


def test_each_client_certificate_gets_its_own_token_and_a_replaced_one_a_new_one(
    idp: TokenEndpoint, pki: Pki, tmp_path: Path
) -> None:
    """Certificate-bound tokens (RFC 8705 §3): two credentials for one client and endpoint
    with different certificates must not share a cached token, and a certificate replaced
    on disk must not be served the token bound to the old one."""
    front = TlsFront(idp.server.port, pki)
    try:
        files = {}
        for name, cn in (("a", "svc-a"), ("b", "svc-b"), ("c", "svc-c")):
            cert, key = pki.issue(cn, f"{tmp_path.name}-{name}")
            SECRETS.add(key.read_text())
            files[name] = (cert, key)
        blocks = []
        for name in ("a", "b"):
            cert, key = files[name]
            (tmp_path / f"{name}.crt").write_bytes(cert.read_bytes())
            extra = (
                f'ca_bundle = "{pki.ca_file}"\n'
                f'tls_cert_file = "{tmp_path}/{name}.crt"\ntls_key_file = "{tmp_path}/{name}.key"\n'
            )
            (tmp_path / f"{name}.key").write_bytes(key.read_bytes())
            (tmp_path / f"{name}.key").chmod(0o600)
            blocks.append(
                credential_toml(f"https://127.0.0.1:{front.port}/connect/token", tmp_path, name, extra)
            )
        config = write_config(tmp_path, *blocks)

        def sunk() -> dict[str, str]:
            return {name: (tmp_path / "out" / f"{name}.token").read_text().strip() for name in ("a", "b")}

        assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
        first = sunk()
        assert first["a"] != first["b"]
        assert sorted(front.subjects) == ["CN=svc-a", "CN=svc-b"]

        # a's certificate (and key) replaced in place: a new token for a, b's kept.
        cert, key = files["c"]
        (tmp_path / "a.key").write_bytes(key.read_bytes())
        (tmp_path / "a.crt").write_bytes(cert.read_bytes())
        assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
        second = sunk()
        assert second["b"] == first["b"] and second["a"] not in first.values()
        assert sorted(front.subjects) == ["CN=svc-a", "CN=svc-b", "CN=svc-c"]
    finally:
        front.close()


def test_an_rsa_key_under_2048_bits_is_a_one_line_config_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    key_file = write_key(tmp_path / "idp.key", weak)
    path = key_config(
        tmp_path, where='token_url = "https://idp.example.com/token"', client_id="c", key=key_file
    )
    result = run_tokend("check", "-c", path, tmp=tmp_path)
    assert result.returncode == 78
    assert_one_line_error(
        result, "credentials.idp.private_key_file", str(key_file), "RSA key of 1024 bits", "2048 bits or more"
    )
