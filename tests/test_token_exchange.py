"""Token exchange (RFC 8693, ``grant_type = "token_exchange"``): a subject token the platform
wrote, exchanged for an access token at an STS (tests/thirdparty/authlib_exchange.py, on
Authlib), by a confidential client and by a public one, with and without an actor token,
the subject file rotated the way kubelet rotates it under a running ``tokend run``."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tokend.config import ConfigError, parse

from .support.endpoint import SECRETS
from .support.platform import kubelet_write, platform_key
from .support.processes import Start, assert_one_line_error, run_tokend, started_server, stop_server, wait_for
from .support.sinks import read_token

pytest.importorskip("authlib")

AUDIENCE = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s"
SECRET = "exchanger-secret-0123456789"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@dataclass
class Sts:
    url: str
    key: rsa.RSAPrivateKey
    log: Path

    def requests(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def mint(self, sub: str, *, lifetime: float = 3600, audience: str = AUDIENCE) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://kubernetes.default.svc",
            "sub": sub,
            "aud": audience,
            "iat": now,
            "exp": int(now + lifetime),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.key, algorithm="RS256")
        SECRETS.add(token, token.split(".")[2])
        return token


@pytest.fixture(scope="module")
def sts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sts]:
    tmp = tmp_path_factory.mktemp("sts")
    key, public = platform_key(tmp)
    log = tmp / "requests.jsonl"
    command = [sys.executable, "-m", "tests.thirdparty.authlib_exchange", str(log), str(public), AUDIENCE]
    proc, port = started_server([*command, "3600"])
    SECRETS.add(SECRET)
    yield Sts(f"http://127.0.0.1:{port}/oauth/token", key, log)
    stop_server(proc)


@pytest.fixture
def sts(sts_server: Sts) -> Sts:
    sts_server.log.unlink(missing_ok=True)
    return sts_server


def config(tmp: Path, sts: Sts, *, public: bool = False, extra: str = "") -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    if public:
        client = 'client_id = "workload"\nclient_auth = "none"\n'
    else:
        (tmp / "client.secret").write_text(SECRET + "\n")
        (tmp / "client.secret").chmod(0o600)
        client = f'client_id = "exchanger"\nclient_secret_file = "{tmp}/client.secret"\n'
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.gcp]\n'
        f'token_url = "{sts.url}"\n{client}grant_type = "token_exchange"\n'
        f'subject_token_file = "{tmp}/tokens/token"\n'
        f'audience = "{AUDIENCE}"\nscope = "read"\n'
        'requested_token_type = "urn:ietf:params:oauth:token-type:access_token"\n'
        f"{extra}\n"
        f'[[credentials.gcp.sink]]\npath = "{tmp}/out/gcp.token"\n'
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("public", [False, True], ids=["confidential-client", "public-client"])
def test_a_subject_token_is_exchanged_for_an_access_token(sts: Sts, tmp_path: Path, public: bool) -> None:
    kubelet_write(tmp_path / "tokens", sts.mint("system:serviceaccount:payments:api"))
    result = run_tokend("fetch", "-c", config(tmp_path, sts, public=public), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_token(tmp_path / "out" / "gcp.token")
    (request,) = sts.requests()
    assert (
        request["status"] == 200
        and request["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    )
    assert request["subject_sub"] == "system:serviceaccount:payments:api"
    assert request["client_id"] == ("workload" if public else "exchanger")
    assert request["audience"] == AUDIENCE
    assert request["requested_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert "actor_sub" not in request


def test_an_actor_token_goes_with_its_type(sts: Sts, tmp_path: Path) -> None:
    kubelet_write(tmp_path / "tokens", sts.mint("system:serviceaccount:payments:api"))
    kubelet_write(tmp_path / "actor", sts.mint("system:serviceaccount:gateway:proxy"))
    extra = f'actor_token_file = "{tmp_path}/actor/token"\n'
    result = run_tokend("fetch", "-c", config(tmp_path, sts, extra=extra), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    (request,) = sts.requests()
    assert request["status"] == 200 and request["actor_sub"] == "system:serviceaccount:gateway:proxy"


def test_each_rotation_of_the_subject_token_is_used_under_a_running_daemon(
    sts: Sts, tmp_path: Path, daemons: Start
) -> None:
    kubelet_write(tmp_path / "tokens", sts.mint("sub-0"))
    daemon = daemons(config(tmp_path, sts), tmp_path)
    wait_for(lambda: read_token(tmp_path / "out" / "gcp.token") is not None, 20, "the first exchange")
    sink = tmp_path / "out" / "gcp.token"
    for i in range(1, 4):
        before = read_token(sink)
        kubelet_write(tmp_path / "tokens", sts.mint(f"sub-{i}"))
        try:
            wait_for(lambda before=before: read_token(sink) != before, 10, f"rotation {i} exchanged")  # type: ignore[misc]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; requests {sts.requests()}; log:\n{daemon.log}") from None
    assert [r["subject_sub"] for r in sts.requests()] == [f"sub-{i}" for i in range(4)]
    issued = "issued as urn:ietf:params:oauth:token-type:access_token"  # RFC 8693 §2.2.1
    shown = run_tokend("status", "-c", tmp_path / "tokend.toml", tmp=tmp_path)
    assert issued in shown.stdout, shown.stdout + shown.stderr
    online = run_tokend("check", "--online", "-c", tmp_path / "tokend.toml", tmp=tmp_path)
    assert online.returncode == 0 and issued in online.stdout, online.stdout + online.stderr
    assert [r["status"] for r in sts.requests()] == [200] * 5  # check --online asked once more
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def test_an_expired_subject_token_is_not_sent_and_a_fresh_one_recovers_at_once(
    sts: Sts, tmp_path: Path, daemons: Start
) -> None:
    kubelet_write(tmp_path / "tokens", sts.mint("old", lifetime=-60))
    daemon = daemons(config(tmp_path, sts), tmp_path)
    wait_for(lambda: "the token expired at" in daemon.log, 15, "the expired subject token refused")
    assert sts.requests() == []  # nothing sent
    assert f"{tmp_path}/tokens/token" in daemon.log
    kubelet_write(tmp_path / "tokens", sts.mint("fresh"))
    started = time.monotonic()
    wait_for(lambda: read_token(tmp_path / "out" / "gcp.token") is not None, 10, "the fresh subject token")
    assert time.monotonic() - started < 5
    assert [r["subject_sub"] for r in sts.requests()] == ["fresh"]
    daemon.stop()


def test_a_subject_token_for_another_audience_is_refused_with_the_servers_headline(
    sts: Sts, tmp_path: Path
) -> None:
    kubelet_write(tmp_path / "tokens", sts.mint("x", audience="https://elsewhere.example"))
    result = run_tokend("fetch", "-c", config(tmp_path, sts), tmp=tmp_path)
    assert result.returncode == 1
    assert "invalid_grant" in result.stderr and "another audience" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_exchange_keys_go_with_their_grant(tmp_path: Path) -> None:
    base = '[credentials.a]\ntoken_url = "https://sts.example/token"\nclient_id = "c"\n'
    cases = {
        'client_secret = "s"\nsubject_token_file = "/t"\n': (
            'credentials.a.subject_token_file: only applies to grant_type = "token_exchange"'
        ),
        'client_secret = "s"\ngrant_type = "token_exchange"\n': (
            "credentials.a.subject_token_file: is required"
        ),
        'client_auth = "none"\n': 'credentials.a.client_auth: "none" only applies to grant_type',
        'client_auth = "none"\ngrant_type = "token_exchange"\nsubject_token_file = "/t"\n'
        'actor_token_type = "urn:x"\n': "credentials.a.actor_token_type: needs actor_token_file",
        'client_secret = "s"\ngrant_type = "token_exchange"\nsubject_token_file = "/t"\n'
        'extra_params = { subject_token = "x" }\n': "subject_token",
    }
    for body, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse(base + body, tmp_path / "t.toml", environ={})
        assert message in str(caught.value), (body, str(caught.value))
    fleet = '[fleet]\nredis_url = "redis://127.0.0.1:6379"\n'
    public = 'client_auth = "none"\ngrant_type = "token_exchange"\nsubject_token_file = "/t"\n'
    with pytest.raises(ConfigError, match=r'client_auth = "none"\); set fleet = false'):
        parse(fleet + base + public, tmp_path / "t.toml", environ={})


def test_a_missing_subject_token_file_is_one_line_naming_it(sts: Sts, tmp_path: Path) -> None:
    result = run_tokend("fetch", "-c", config(tmp_path, sts), tmp=tmp_path)
    assert_one_line_error(result, f"{tmp_path}/tokens/token", "subject_token_file")
    assert sts.requests() == []


# --------------------------------------------------------------------------- the JWT-bearer grant

SERVICE_ACCOUNT = "svc@project.iam.gserviceaccount.com"


def bearer_config(tmp: Path, sts: Sts, source: str, extra: str = "") -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.google]\n'
        f'token_url = "{sts.url}"\nclient_id = "{SERVICE_ACCOUNT}"\ngrant_type = "jwt_bearer"\n'
        f'{source}scope = "read"\n{extra}\n'
        f'[[credentials.google.sink]]\npath = "{tmp}/out/google.token"\n'
    )
    path.chmod(0o600)
    return path


def test_the_jwt_bearer_grant_with_a_jwt_tokend_signs_as_a_service_account(sts: Sts, tmp_path: Path) -> None:
    """Google's way: iss = the service account, aud = the token endpoint, scope as a claim,
    an hour at most (tokend: five minutes), no client authentication."""
    key = tmp_path / "sa.pem"
    key.write_bytes(
        sts.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    extra = 'assertion_scope_claim = true\nassertion_subject = "someone@example.com"\n'
    config = bearer_config(tmp_path, sts, f'private_key_file = "{key}"\n', extra)
    for _ in range(2):  # a fresh JWT each time (a new jti)
        result = run_tokend("fetch", "--force", "-c", config, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
    assert read_token(tmp_path / "out" / "google.token")
    requests_seen = sts.requests()
    assert [r["status"] for r in requests_seen] == [200, 200]
    first = requests_seen[0]
    assert first["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert first["iss"] == SERVICE_ACCOUNT and first["sub"] == "someone@example.com"
    assert first["scope_claim"] == "read" and first["scope"] is None  # a claim, not a parameter
    assert first["client_id"] is None and 0 < int(first["lifetime"]) <= 3600  # type: ignore[call-overload]


def test_the_jwt_bearer_grant_with_a_jwt_from_a_file_and_an_expired_one_not_sent(
    sts: Sts, tmp_path: Path
) -> None:
    def grant_jwt(lifetime: float) -> str:
        now = int(time.time())
        claims = {
            "iss": SERVICE_ACCOUNT,
            "sub": SERVICE_ACCOUNT,
            "aud": sts.url,
            "iat": now,
            "exp": int(now + lifetime),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, sts.key, algorithm="RS256")
        SECRETS.add(token, token.split(".")[2])
        return token

    config = bearer_config(tmp_path, sts, f'assertion_file = "{tmp_path}/grant/token"\n')
    kubelet_write(tmp_path / "grant", grant_jwt(-60))
    expired = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert (
        expired.returncode == 1
        and "expired at" in expired.stderr
        and f"{tmp_path}/grant/token" in expired.stderr
    )
    assert sts.requests() == []
    kubelet_write(tmp_path / "grant", grant_jwt(600))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    (request,) = sts.requests()
    assert request["status"] == 200 and request["iss"] == SERVICE_ACCOUNT and request["scope"] == "read"


def test_the_jwt_bearer_keys_go_with_their_grant(tmp_path: Path) -> None:
    base = '[credentials.a]\ntoken_url = "https://oauth2.example/token"\nclient_id = "c"\n'
    cases = {
        'grant_type = "jwt_bearer"\n': "needs exactly one of assertion_file",
        'grant_type = "jwt_bearer"\nassertion_file = "/a"\nprivate_key_file = "/k"\n': "exactly one",
        'client_secret = "s"\nassertion_file = "/a"\n': 'only applies to grant_type = "jwt_bearer"',
        'grant_type = "jwt_bearer"\nassertion_file = "/a"\nassertion_subject = "u"\n': "a JWT tokend signs",
        'grant_type = "jwt_bearer"\nclient_auth = "private_key_jwt"\nprivate_key_file = "/k"\n': (
            "signs the grant"
        ),
    }
    for body, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse(base + body, tmp_path / "t.toml", environ={})
        assert message in str(caught.value), (body, str(caught.value))
    fleet = '[fleet]\nredis_url = "redis://127.0.0.1:6379"\n'
    from_file = 'grant_type = "jwt_bearer"\nassertion_file = "/a"\n'
    with pytest.raises(ConfigError, match=r"set fleet = false"):
        parse(fleet + base + from_file, tmp_path / "t.toml", environ={})
    key = tmp_path / "k.pem"
    key.write_text("x")
    key.chmod(0o600)
    signed = (
        f'grant_type = "jwt_bearer"\nprivate_key_file = "{key}"\n'  # the key seals, as for private_key_jwt
    )
    assert parse(fleet + base + signed, tmp_path / "t.toml", environ={}).credentials["a"].fleet
