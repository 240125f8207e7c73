"""The platform's JWT as the client assertion (``client_assertion_file``,
:mod:`tokend.io.platform_token`): against Authlib trusting a "platform" key
(tests/thirdparty/authlib_federation.py), the file rotated the way kubelet rotates a
projected service-account token, under a running ``tokend run``."""

from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tokend.core.timestamps import rfc3339

from .support.endpoint import SECRETS
from .support.platform import kubelet_write, platform_key
from .support.processes import Start, assert_one_line_error, run_tokend, started_server, stop_server, wait_for
from .support.sinks import read_token

pytest.importorskip("authlib")

CLIENT_ID = "system:serviceaccount:payments:api"  # what kubelet's tokens say, iss = sub for Authlib
AUDIENCE = "api://AzureADTokenExchange"  # Entra ID's audience for federated credentials


@dataclass
class Platform:
    """The IdP, the key it trusts, and its log of every token request."""

    url: str
    key: rsa.RSAPrivateKey
    log: Path

    def requests(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def mint(
        self, *, lifetime: float = 3600, audience: str = AUDIENCE, key: rsa.RSAPrivateKey | None = None
    ) -> tuple[str, str]:
        """A projected service-account token: a new jti each time. Returns (jwt, jti)."""
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "aud": audience,
            "iat": now,
            "nbf": now - 1,
            "exp": int(now + lifetime),
            "jti": jti,
        }
        token = jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "platform"})
        SECRETS.add(token, token.split(".")[2])  # no form of it in what tokend prints
        return token, jti


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("federation")
    key, public = platform_key(tmp)
    log = tmp / "requests.jsonl"
    command = [sys.executable, "-m", "tests.thirdparty.authlib_federation", str(log), str(public)]
    proc, port = started_server([*command, CLIENT_ID, AUDIENCE, "3600"])
    yield Platform(f"http://127.0.0.1:{port}/oauth/token", key, log)
    stop_server(proc)


@pytest.fixture
def fresh_log(platform: Platform) -> Platform:
    platform.log.unlink(missing_ok=True)
    return platform


def changed(sink: Path, before: str | None) -> bool:
    return read_token(sink) != before


def config(tmp: Path, platform: Platform, *, extra: str = "") -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.wi]\n'
        f'token_url = "{platform.url}"\nclient_id = "{CLIENT_ID}"\n'
        f'client_assertion_file = "{tmp}/tokens/token"\nscope = "read"\n{extra}\n'
        f'[[credentials.wi.sink]]\npath = "{tmp}/out/wi.token"\n'
    )
    return path


def test_a_token_with_the_platforms_assertion(fresh_log: Platform, tmp_path: Path) -> None:
    assertion, jti = fresh_log.mint()
    kubelet_write(tmp_path / "tokens", assertion)
    result = run_tokend("fetch", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_token(tmp_path / "out" / "wi.token")
    assert [(r["jti"], r["status"]) for r in fresh_log.requests()] == [(jti, 200)]
    assert (tmp_path / "tokens" / "token").read_text() == assertion  # never deleted, never written
    online = run_tokend("check", "--online", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert online.returncode == 0 and "online: wi: token sha256:" in online.stdout, (
        online.stdout + online.stderr
    )


def test_each_kubelet_rotation_is_sent_at_once_under_a_running_daemon(
    fresh_log: Platform, tmp_path: Path, daemons: Start
) -> None:
    assertion, first = fresh_log.mint()
    kubelet_write(tmp_path / "tokens", assertion)
    daemon = daemons(config(tmp_path, fresh_log), tmp_path)
    sink = tmp_path / "out" / "wi.token"
    wait_for(lambda: read_token(sink), 15, "the first token")
    sent = [first]
    for _ in range(5):
        before = read_token(sink)
        assertion, jti = fresh_log.mint()
        kubelet_write(tmp_path / "tokens", assertion)  # a ..data rename, as kubelet does
        sent.append(jti)
        try:
            wait_for(
                functools.partial(changed, sink, before), 10, "a token asked for with the rotated assertion"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; requests {fresh_log.requests()}; log:\n{daemon.log}") from None
    assert [(r["jti"], r["status"]) for r in fresh_log.requests()] == [(jti, 200) for jti in sent]
    assert "Traceback" not in daemon.log


def test_an_expired_assertion_is_not_sent_and_a_fresh_file_recovers_at_once(
    fresh_log: Platform, tmp_path: Path, daemons: Start
) -> None:
    expired, _ = fresh_log.mint(lifetime=-60)
    kubelet_write(tmp_path / "tokens", expired)
    exp = jwt.decode(expired, options={"verify_signature": False})["exp"]
    daemon = daemons(config(tmp_path, fresh_log), tmp_path)
    wait_for(lambda: "expired at" in daemon.log, 15, "the expired assertion refused")
    line = next(line for line in daemon.log.splitlines() if "expired at" in line)
    assert str(tmp_path / "tokens" / "token") in line and rfc3339(exp) in line and f"exp {exp}" in line
    assert fresh_log.requests() == []  # the identity provider saw nothing
    fresh, jti = fresh_log.mint()
    written = time.monotonic()
    kubelet_write(tmp_path / "tokens", fresh)
    sink = tmp_path / "out" / "wi.token"
    wait_for(lambda: read_token(sink), 5, "a token once the platform wrote a fresh assertion")
    took = time.monotonic() - written
    assert took < 1.0, f"recovered {took:.2f}s after the fresh file"
    assert [(r["jti"], r["status"]) for r in fresh_log.requests()] == [(jti, 200)]


def test_an_assertion_expiring_before_the_next_refresh_is_warned_about(
    fresh_log: Platform, tmp_path: Path
) -> None:
    assertion, _ = fresh_log.mint(lifetime=120)  # the token lives an hour, the assertion 2 minutes
    kubelet_write(tmp_path / "tokens", assertion)
    result = run_tokend("fetch", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "expires at" in result.stderr and "before the next refresh" in result.stderr


def test_an_assertion_for_another_audience_is_refused_with_the_servers_headline(
    fresh_log: Platform, tmp_path: Path
) -> None:
    assertion, _ = fresh_log.mint(audience="https://elsewhere.example")
    kubelet_write(tmp_path / "tokens", assertion)
    result = run_tokend("fetch", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode != 0
    assert "invalid_client" in result.stderr and "aud" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "is empty"),
        ("not-a-jwt-but-a-secret-value\n", "is not a compact JWT"),
        ("eyJhbGciOi.eyJzdWIiOi.sig extra-secret-part\n", "stray characters"),
        ("%%%%.eyJzdWIiOiJ4In0.c2ln\n", "header is not base64url"),
        ("bm90IGpzb24.bm90IGpzb24.c2ln\n", "not JSON"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiJzb29uIn0.c2ln\n", "exp is not a number"),
    ],
)
def test_a_malformed_assertion_file_is_a_one_line_error_that_never_echoes_it(
    fresh_log: Platform, tmp_path: Path, content: str, says: str
) -> None:
    kubelet_write(tmp_path / "tokens", content)
    SECRETS.add(*content.split())
    result = run_tokend("fetch", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(
        result, str(tmp_path / "tokens" / "token"), "credentials.wi.client_assertion_file", says
    )
    assert fresh_log.requests() == []


def test_a_missing_assertion_file_names_the_file(fresh_log: Platform, tmp_path: Path) -> None:
    result = run_tokend("fetch", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result, "no such file", "client_assertion_file")


def test_the_platforms_assertion_is_the_whole_proof(tmp_path: Path) -> None:
    """client_assertion_file implies private_key_jwt's request and goes alone: no secret,
    no key of tokend's own beside it."""
    from tokend.config import ConfigError, parse

    base = (
        '[credentials.a]\ntoken_url = "https://idp.example.com/t"\nclient_id = "c"\n'
        'client_assertion_file = "t"\n'
    )
    cred = parse(base, tmp_path / "t.toml", environ={}).credentials["a"]
    assert (cred.client_auth, cred.client_secret, cred.private_key) == ("private_key_jwt", None, None)
    assert cred.client_assertion is not None and Path(cred.client_assertion.value) == tmp_path / "t"
    assert tmp_path / "t" in cred.files()  # watched: a rotation wakes the credential
    cases = {
        'client_secret = "s3cret-value"\n': "credentials.a.client_secret: is not used",
        'private_key_file = "k"\n': "credentials.a.private_key_file: conflicts with client_assertion_file",
        'key_id = "k"\n': "credentials.a.key_id: conflicts with client_assertion_file",
        'client_assertion_credential = "k"\n': "_credential: conflicts with client_assertion_file",
        'client_auth = "body"\nclient_secret = "s3cret-value"\n': (
            'credentials.a.client_assertion_file: only applies to client_auth = "private_key_jwt"'
        ),
    }
    for extra, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse(base + extra, tmp_path / "t.toml", environ={})
    by_credential = parse(
        base.replace('client_assertion_file = "t"', 'client_assertion_credential = "azure-token"'),
        tmp_path / "t.toml",
        environ={},
    ).credentials["a"]
    assert (
        by_credential.client_assertion is not None and by_credential.client_assertion.source == "credential"
    )


def test_check_reads_the_assertion_file_and_warns_of_an_expired_one(
    fresh_log: Platform, tmp_path: Path
) -> None:
    expired, _ = fresh_log.mint(lifetime=-60)
    kubelet_write(tmp_path / "tokens", expired)
    result = run_tokend("check", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "the client assertion has expired" in result.stderr
        and str(tmp_path / "tokens" / "token") in result.stderr
    )
    kubelet_write(tmp_path / "tokens", "garbage-not-a-jwt")
    SECRETS.add("garbage-not-a-jwt")
    result = run_tokend("check", "-c", config(tmp_path, fresh_log), tmp=tmp_path)
    assert result.returncode == 78 and "is not a compact JWT" in result.stderr
    assert fresh_log.requests() == []
