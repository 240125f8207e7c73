"""The token client, as a real token endpoint on 127.0.0.1 sees it and answers it.

What tokend.core decides of a request is tested without a server (tests/test_token_request.py,
test_token_response.py, test_styles.py and test_scrub.py); here, that the client sends it so
and judges what really arrives, within its timeout."""

from __future__ import annotations

import base64
import email.utils
import html
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import pytest
from werkzeug import Response

from tokend.config import CredentialConfig
from tokend.core.token_request import Style
from tokend.core.token_response import TokenRequestError
from tokend.io.token_client import TokenClient

from .support.endpoint import Seen, TokenEndpoint
from .support.protocol import (
    CLIENT_ID,
    FATAL,
    MALFORMED,
    MALFORMED_IDS,
    NOT_SECONDS,
    RETRYABLE,
    SECRET,
    cred,
    secret_forms_of,
)
from .test_http import RawServer, silent, trickle


def obtain(client: TokenClient, c: CredentialConfig, **kw: Any) -> Any:
    return client.obtain(c, client_id=CLIENT_ID, client_secret=SECRET, **kw)


@pytest.fixture
def client() -> Any:
    c = TokenClient()
    yield c
    c.close()


# --------------------------------------------------------------------------- what is sent


def test_form_with_basic_auth_as_rfc_6749_says(idp: TokenEndpoint, client: TokenClient) -> None:
    c = cred(idp.url, scope=("read", "write"), extra_params=(("audience", "https://api"),))
    answer = obtain(client, c)
    (seen,) = idp.seen
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.basic_auth == (CLIENT_ID, SECRET)
    assert seen.params == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api",
    }
    assert answer.token.access_token == "tok-1" and answer.style == Style("basic", "form")


def test_json_with_body_auth_as_eventbookings_wants(idp: TokenEndpoint, client: TokenClient) -> None:
    obtain(client, cred(idp.url, request_format="json", client_auth="body"))
    (seen,) = idp.seen
    assert seen.content_type == "application/json"
    assert "Authorization" not in seen.headers
    assert json.loads(seen.raw) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }


def test_form_with_body_auth(idp: TokenEndpoint, client: TokenClient) -> None:
    obtain(client, cred(idp.url, client_auth="body"))
    (seen,) = idp.seen
    assert seen.params == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    assert "Authorization" not in seen.headers


def test_netrc_never_replaces_our_authorization(
    idp: TokenEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: TokenClient
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password nope\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    obtain(client, cred(idp.url, client_auth="body"))
    obtain(client, cred(idp.url))
    assert "Authorization" not in idp.seen[0].headers
    assert idp.seen[1].basic_auth == (CLIENT_ID, SECRET)


def test_auto_falls_back_once_and_remembers(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(400, {"error": "invalid_request", "error_description": "body must be JSON"})
    c = cred(idp.url, request_format="auto")
    first = obtain(client, c)
    assert [s.content_type for s in idp.seen] == ["application/x-www-form-urlencoded", "application/json"]
    assert first.style.wire == "json"
    obtain(client, c, learned=first.style)
    assert idp.seen[2].content_type == "application/json"
    assert len(idp.seen) == 3


def test_auto_format_does_not_fall_back_after_an_authentication_failure(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    """A wrong secret stays wrong in JSON: one request, and invalid_client is the headline."""
    idp.then(401, {"error": "invalid_client"})
    idp.then(400, {"error": "unsupported_grant_type"})  # what a JSON attempt would have got
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url, request_format="auto", client_auth="body"))
    assert str(info.value).startswith("invalid_client (HTTP 401)")
    assert not info.value.retryable and len(idp.seen) == 1


def test_when_both_formats_fail_the_auth_failure_is_the_headline(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.then(400, {"error": "invalid_request", "error_description": "only JSON"})
    idp.then(400, {"error": "invalid_client"})
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url, request_format="auto", client_auth="body"))
    message = str(info.value)
    assert message.startswith("invalid_client (HTTP 400)"), message
    assert "invalid_request (HTTP 400): only JSON" in message  # the other attempt, after it
    assert info.value.error == "invalid_client" and not info.value.retryable


def test_a_5xx_on_the_fallback_keeps_the_first_error_and_is_retryable(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.then(400, {"error": "invalid_request", "error_description": "only JSON"})
    idp.then(503, {"error": "temporarily_unavailable"})
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url, request_format="auto"))
    assert info.value.retryable and info.value.status == 503
    assert "only JSON" in str(info.value)


def test_basic_percent_encodes_a_space_as_20_not_plus(idp: TokenEndpoint, client: TokenClient) -> None:
    """%20 reads back as a space whether the server form-decodes or URL-decodes (Authlib)."""
    obtain(client, cred(idp.url))
    value = idp.seen[0].headers["Authorization"].removeprefix("Basic ")
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert password == "s3cr%3At%26%2B%3D%20%25" and user == "app%20id%3A%C3%BC"
    assert unquote(password) == unquote_plus(password) == SECRET


def test_client_auth_auto_falls_back_to_the_body_and_remembers(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.then(401, {"error": "invalid_client"})
    c = cred(idp.url, client_auth="auto")
    first = obtain(client, c)
    assert idp.seen[0].basic_auth == (CLIENT_ID, SECRET) and "client_secret" not in idp.seen[0].params
    assert "Authorization" not in idp.seen[1].headers
    assert idp.seen[1].params["client_secret"] == SECRET
    assert first.style == Style("body", "form")
    obtain(client, c, learned=first.style)  # steady state: one request, in the body
    assert len(idp.seen) == 3 and "Authorization" not in idp.seen[2].headers


@pytest.mark.parametrize("status", [401, 403])
def test_client_auth_auto_takes_a_bare_401_or_403_as_an_auth_failure(
    idp: TokenEndpoint, client: TokenClient, status: int
) -> None:
    idp.then(status, raw=b"Forbidden")
    answer = obtain(client, cred(idp.url, client_auth="auto"))
    assert answer.style.auth == "body" and len(idp.seen) == 2


def test_client_auth_auto_does_not_retry_other_errors(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(400, {"error": "invalid_scope"})
    with pytest.raises(TokenRequestError, match="invalid_scope"):
        obtain(client, cred(idp.url, client_auth="auto"))
    assert len(idp.seen) == 1


def test_plain_basic_failing_says_when_the_encoding_changed_the_secret(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.then(401, {"error": "invalid_client"})
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url))
    assert 'client_auth = "body" or "auto"' in str(info.value)
    idp.then(401, {"error": "invalid_client"})
    with pytest.raises(TokenRequestError) as plain:  # nothing to encode: no such hint
        client.obtain(cred(idp.url), client_id="plain", client_secret="plainsecret")
    assert "client_auth" not in str(plain.value)


def test_a_list_in_extra_params_is_sent_repeated_in_a_form_and_as_an_array_in_json(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    params = (("audience", "api"), ("resource", "https://a"), ("resource", "https://b"))
    obtain(client, cred(idp.url, extra_params=params))
    assert parse_qsl(idp.seen[0].raw.decode()).count(("resource", "https://b")) == 1
    assert [v for k, v in parse_qsl(idp.seen[0].raw.decode()) if k == "resource"] == [
        "https://a",
        "https://b",
    ]
    obtain(client, cred(idp.url, extra_params=params, request_format="json"))
    body = json.loads(idp.seen[1].raw)
    assert body["resource"] == ["https://a", "https://b"] and body["audience"] == "api"


def test_refresh_grant_is_used_and_the_old_refresh_token_kept(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    answer = obtain(client, cred(idp.url), refresh_token="rt-old")
    (seen,) = idp.seen
    assert seen.params == {"grant_type": "refresh_token", "refresh_token": "rt-old"}
    assert seen.basic_auth == (CLIENT_ID, SECRET)
    # The server issued no new refresh token: RFC 6749 §6 says keep the old one.
    assert answer.token.refresh_token == "rt-old"


def test_invalid_grant_falls_back_to_client_credentials_at_once(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.refresh_tokens = True
    idp.then(400, {"error": "invalid_grant", "error_description": "refresh token expired"})
    answer = obtain(client, cred(idp.url), refresh_token="rt-old")
    assert [s.params["grant_type"] for s in idp.seen] == ["refresh_token", "client_credentials"]
    assert answer.token.refresh_token == "refresh-1"


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client"])
def test_a_client_refused_on_the_refresh_grant_is_logged_as_the_client_not_the_refresh_token(
    idp: TokenEndpoint, client: TokenClient, caplog: pytest.LogCaptureFixture, error: str
) -> None:
    idp.then(401, {"error": error, "error_description": "bad secret"})
    with caplog.at_level(logging.INFO, logger="tokend.oauth"):
        obtain(client, cred(idp.url, client_auth="basic"), refresh_token="rt-old")
    assert [s.params["grant_type"] for s in idp.seen] == ["refresh_token", "client_credentials"]
    assert f"api: the client was refused on the refresh grant ({error}" in caplog.text
    assert "refresh token refused" not in caplog.text


def test_an_expired_refresh_token_is_logged_as_the_refresh_token_refused(
    idp: TokenEndpoint, client: TokenClient, caplog: pytest.LogCaptureFixture
) -> None:
    idp.then(400, {"error": "invalid_grant", "error_description": "refresh token expired"})
    with caplog.at_level(logging.INFO, logger="tokend.oauth"):
        obtain(client, cred(idp.url), refresh_token="rt-old")
    assert "api: refresh token refused (invalid_grant" in caplog.text


def test_refresh_token_is_not_used_when_disabled(idp: TokenEndpoint, client: TokenClient) -> None:
    obtain(client, cred(idp.url, use_refresh_token=False), refresh_token="rt-old")
    assert idp.seen[0].params["grant_type"] == "client_credentials"


def test_a_retryable_refresh_failure_is_not_hidden_by_a_fallback(
    idp: TokenEndpoint, client: TokenClient
) -> None:
    idp.then(503, None)
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url), refresh_token="rt-old")
    assert info.value.retryable and len(idp.seen) == 1


# --------------------------------------------------------------------------- what comes back


def test_token_fields(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(200, {"access_token": "abc.def", "token_type": "bearer", "expires_in": "120", "scope": "read"})
    before = time.time()
    token = obtain(client, cred(idp.url)).token
    assert token.token_type == "Bearer" and token.scope == "read"
    # expires_at counts from when the request was sent, so it errs early, never late.
    assert before <= token.obtained_at <= time.time()
    assert token.expires_at == pytest.approx(token.obtained_at + 120)


def test_tokens_and_retry_after_dates_are_read_by_the_given_wall_clock(idp: TokenEndpoint) -> None:
    then = 1_000_000_000.0  # 2001: far from the real clock
    client = TokenClient(clock=lambda: then)
    try:
        token = obtain(client, cred(idp.url)).token
        assert token.obtained_at == then and token.expires_at == then + 3600
        idp.then(503, None, {"Retry-After": email.utils.formatdate(then + 30, usegmt=True)})
        with pytest.raises(TokenRequestError) as info:
            obtain(client, cred(idp.url))
        assert info.value.retry_after == 30
    finally:
        client.close()


def test_missing_expires_in_uses_the_default(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.expires_in = None
    token = obtain(client, cred(idp.url, default_expires_in=900)).token
    assert token.lifetime == pytest.approx(900)


@pytest.mark.parametrize(("status", "body", "fragment"), FATAL, ids=[f[2] for f in FATAL])
def test_errors_a_retry_cannot_fix(
    idp: TokenEndpoint, client: TokenClient, status: int, body: Any, fragment: str
) -> None:
    idp.then(status, body)
    with pytest.raises(TokenRequestError, match=re.escape(fragment)) as info:
        obtain(client, cred(idp.url))
    assert not info.value.retryable and info.value.status == status
    if body:
        assert info.value.error == body["error"]


@pytest.mark.parametrize(("status", "body"), RETRYABLE, ids=[str(r[0]) for r in RETRYABLE])
def test_errors_worth_retrying(idp: TokenEndpoint, client: TokenClient, status: int, body: Any) -> None:
    idp.then(status, body)
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url))
    assert info.value.retryable and info.value.status == status


def test_retry_after_in_seconds_and_as_a_date(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(503, None, {"Retry-After": "42"})
    idp.then(429, None, {"Retry-After": email.utils.formatdate(time.time() + 90, usegmt=True)})
    with pytest.raises(TokenRequestError) as first:
        obtain(client, cred(idp.url))
    with pytest.raises(TokenRequestError) as second:
        obtain(client, cred(idp.url))
    assert first.value.retry_after == 42
    assert second.value.retry_after == pytest.approx(90, abs=2)


@pytest.mark.parametrize(("raw", "fragment"), MALFORMED, ids=MALFORMED_IDS)
def test_malformed_success_bodies_are_not_retried(
    idp: TokenEndpoint, client: TokenClient, raw: bytes, fragment: str
) -> None:
    idp.then(200, raw=raw)
    with pytest.raises(TokenRequestError, match=fragment) as info:
        obtain(client, cred(idp.url))
    assert not info.value.retryable


def test_body_over_one_mebibyte_is_refused(idp: TokenEndpoint, client: TokenClient) -> None:
    big = b'{"access_token": "a", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    idp.then(200, raw=big)
    with pytest.raises(TokenRequestError, match="1 MiB"):
        obtain(client, cred(idp.url))


def test_a_body_without_a_length_is_cut_at_one_mebibyte(client: TokenClient) -> None:
    def endless(conn: socket.socket, _: Any) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        conn.sendall(b'{"access_token": "a", "pad": "' + b"x" * (2 * 1024 * 1024))

    server = RawServer(endless)
    try:
        with pytest.raises(TokenRequestError, match="response body is over the 1 MiB cap") as info:
            obtain(client, cred(server.url))
        assert not info.value.retryable and info.value.status == 200
    finally:
        server.close()


def test_redirects_are_not_followed_with_the_secret(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(307, None, {"Location": "https://elsewhere.example/token"})
    with pytest.raises(TokenRequestError, match=r"redirects to https://elsewhere\.example") as info:
        obtain(client, cred(idp.url))
    assert not info.value.retryable and len(idp.seen) == 1


def test_secret_echoed_by_the_server_is_redacted(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(401, {"error": "invalid_client", "error_description": f"secret {SECRET} is wrong"})
    with pytest.raises(TokenRequestError) as info:
        obtain(client, cred(idp.url))
    assert SECRET not in str(info.value) and "[redacted]" in str(info.value)


def test_timeout_is_retryable(idp: TokenEndpoint, client: TokenClient) -> None:
    def slow(_: Seen) -> Response:
        time.sleep(1.5)
        return Response("{}", content_type="application/json")

    idp.script.append(slow)
    started = time.monotonic()
    with pytest.raises(TokenRequestError, match=r"no (complete )?answer within 0\.5s") as info:
        obtain(client, cred(idp.url, timeout=0.5))
    assert info.value.retryable
    assert time.monotonic() - started < 1.4


def test_connection_refused_is_retryable(client: TokenClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TokenRequestError, match="Connection refused") as info:
        obtain(client, cred(f"http://127.0.0.1:{port}/token"))
    assert info.value.retryable


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (b"HTTP/1.1 200 OK\r\n", "no complete answer within 1s"),  # headers trickle
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            "not complete within 1s",
        ),  # body trickles
    ],
    ids=["headers", "body"],
)
def test_a_trickling_server_is_cut_off_at_the_timeout(
    client: TokenClient, head: bytes, fragment: str, idp: TokenEndpoint
) -> None:
    server = RawServer(trickle(head, b"X-Slow: y\r\n" if head.endswith(b"OK\r\n") else b" "))
    try:
        threads = threading.active_count()
        started = time.monotonic()
        with pytest.raises(TokenRequestError, match=fragment) as info:
            obtain(client, cred(server.url, timeout=1.0))
        assert info.value.retryable
        assert time.monotonic() - started < 1.5  # bounded by timeout, not by the server
        assert set(server.threads_seen) == {threads}  # and not by a timer thread per request
    finally:
        server.close()
    # The same client, with its pools, still works for a well-behaved server.
    assert obtain(client, cred(idp.url)).token.access_token == "tok-1"


def test_a_connection_reset_is_retryable(client: TokenClient) -> None:
    import struct

    def reset(conn: socket.socket, _: Any) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = RawServer(reset)  # closing with linger 0 sends RST
    try:
        with pytest.raises(TokenRequestError) as info:
            obtain(client, cred(server.url))
        assert info.value.retryable
    finally:
        server.close()


def test_a_server_that_never_answers_is_a_retryable_timeout(client: TokenClient) -> None:
    server = RawServer(silent)
    try:
        started = time.monotonic()
        with pytest.raises(TokenRequestError, match=r"^no answer within 0\.5s$") as info:
            obtain(client, cred(server.url, timeout=0.5))
        assert info.value.retryable and info.value.status is None
        assert time.monotonic() - started < 1.0
    finally:
        server.close()


def test_a_hanging_connect_is_a_retryable_timeout(client: TokenClient) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # the backlog is full now
            started = time.monotonic()
            with pytest.raises(TokenRequestError, match=r"^no answer within 0\.5s$") as info:
                obtain(client, cred(f"http://127.0.0.1:{listener.getsockname()[1]}/token", timeout=0.5))
            assert info.value.retryable
            assert time.monotonic() - started < 1.0


def test_headers_cut_off_mid_way_are_never_judged_as_the_answer(client: TokenClient) -> None:
    """A status line and a few headers, then nothing: not an empty 200 ("malformed", a
    retry cannot fix it) but no complete answer, which a retry may fix."""
    server = RawServer(trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", b""))
    try:
        with pytest.raises(TokenRequestError) as info:
            obtain(client, cred(server.url, timeout=0.5))
        assert str(info.value) == "no complete answer within 0.5s"
        assert info.value.retryable
    finally:
        server.close()


def echo(style: str, secret: str = "") -> Any:
    """An IdP in debug mode: its error text repeats what it was sent."""

    def answer(seen: Seen) -> Response:
        text = {
            "html": f"<html><p>secret {html.escape(secret)} rejected</p></html>",
            "headers": f"bad client; headers were {seen.headers}",
            "body": f"bad request body: {seen.raw.decode()}",
            "json": json.dumps({"error": "invalid_client", "error_description": f"got {seen.raw.decode()}"}),
            # a long prefix pushes the secret right over the cut at the length limit
            "cut": "x" * 100 + seen.raw.decode() + "y" * 400,
        }[style]
        return Response(text, status=401, content_type="text/plain")

    return answer


@pytest.mark.parametrize("auth", ["basic", "body"])
@pytest.mark.parametrize("style", ["headers", "body", "json", "cut", "html"])
def test_no_form_of_the_secret_survives_an_echoing_server(
    idp: TokenEndpoint, client: TokenClient, auth: str, style: str
) -> None:
    secret = 'p@ss w0rd+/ü"x'
    idp.script.append(echo(style, secret))
    with pytest.raises(TokenRequestError) as info:
        client.obtain(
            cred(idp.url, client_auth=auth, request_format="json" if style == "json" else "form"),
            client_id="app",
            client_secret=secret,
        )
    message = str(info.value)
    basic = idp.seen[0].headers.get("Authorization", "")
    for form in secret_forms_of(secret, basic):
        for size in range(4, len(form) + 1):  # no piece of it either, at the cut or elsewhere
            assert form[:size] not in message, (form[:size], message)


@pytest.mark.parametrize("value", NOT_SECONDS)
def test_an_expires_in_that_is_not_a_number_of_seconds_is_malformed(
    idp: TokenEndpoint, client: TokenClient, value: object
) -> None:
    idp.then(200, raw=json.dumps({"access_token": "tok-x", "expires_in": value}).encode())
    with pytest.raises(TokenRequestError, match="expires_in") as info:
        obtain(client, cred(idp.url))
    assert not info.value.retryable


def test_a_trailing_newline_in_the_access_token_is_refused(idp: TokenEndpoint, client: TokenClient) -> None:
    idp.then(200, {"access_token": "abc\n", "expires_in": 60})
    with pytest.raises(TokenRequestError, match="access_token contains whitespace"):
        obtain(client, cred(idp.url))


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_plain_http_never_goes_through_an_environment_proxy(
    idp: TokenEndpoint, client: TokenClient, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """http:// is allowed only to this machine: no proxy the environment names may see the
    secret (requests merges ALL_PROXY into whatever proxies a call passes)."""
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(8)
        proxy.settimeout(0.2)
        monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        answer = obtain(client, cred(idp.url))
        with pytest.raises(TimeoutError):
            proxy.accept()  # nobody came to the proxy
    assert answer.token.access_token == "tok-1" and len(idp.seen) == 1


# --------------------------------------------------------------------------- private_key_jwt


def test_an_assertion_the_server_echoes_is_scrubbed_and_each_request_signs_anew(
    idp: TokenEndpoint, client: TokenClient, tmp_path: Path
) -> None:
    import dataclasses

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tokend.config import SecretRef

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "k.pem").chmod(0o600)
    c = dataclasses.replace(
        cred(idp.url),
        client_auth="private_key_jwt",
        client_secret=None,
        private_key=SecretRef("private_key_file", "file", str(tmp_path / "k.pem")),
    )

    def echo(seen: Seen) -> Response:
        body = {
            "error": "invalid_client",
            "error_description": f"replayed: {seen.params['client_assertion']}",
        }
        return Response(json.dumps(body), status=401, content_type="application/json")

    idp.fault = echo
    with pytest.raises(TokenRequestError) as info:
        client.obtain(c, client_id="c1", client_secret=None)
    idp.fault = None
    answer = client.obtain(c, client_id="c1", client_secret=None)
    assert answer.token.access_token == "tok-1" and answer.style == Style("private_key_jwt", "form")
    first, second = (seen.params["client_assertion"] for seen in idp.seen)
    assert first not in str(info.value) and "[redacted]" in str(info.value)
    assert info.value.error == "invalid_client"
    claims = [
        jwt.decode(a, key.public_key(), algorithms=["ES256"], audience=idp.url) for a in (first, second)
    ]
    assert claims[0]["jti"] != claims[1]["jti"] and claims[0]["iss"] == claims[0]["sub"] == "c1"
