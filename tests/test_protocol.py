"""The token request as data: what is built (tokend/core/token_request.py), how an answer is
judged (token_response.py), what is scrubbed from it (scrub.py), what is tried next
(styles.py), and the pure parts of key-based auth and discovery (assertion.py, discovery.py).

Pure functions, called with explicit values: no server, no clock.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus

import pytest

from tokend import __version__
from tokend.config import AuthStyle, CredentialConfig, WireFormat, parse
from tokend.core.limits import MAX_EXPIRES_IN
from tokend.core.scrub import scrub, secret_forms
from tokend.core.styles import (
    auth_order,
    basic_hint,
    final_error,
    is_auth_failure,
    next_style,
    telling,
    wire_order,
)
from tokend.core.token_request import (
    Style,
    TokenRequest,
    basic_credentials,
    basic_encoding_changes,
    build_request,
    json_params,
)
from tokend.core.token_response import (
    TokenRequestError,
    classify_failure,
    parse_retry_after,
    parse_token_response,
)

CLIENT_ID = "app id:ü"
SECRET = "s3cr:t&+= %"  # every character RFC 6749 §2.3.1 makes us encode
URL = "https://idp.example/connect/token"
NOW = 1_700_000_000.0
RFC_STYLE = Style("basic", "form")


def cred(url: str = URL, **changes: Any) -> CredentialConfig:
    base = parse(
        f'[credentials.api]\ntoken_url = "{url}"\nclient_id = "x"\nclient_secret = "y"\n',
        Path("/t/tokend.toml"),
        environ={},
    ).credentials["api"]
    return dataclasses.replace(base, **changes)


def build(
    c: CredentialConfig,
    style: Style = RFC_STYLE,
    *,
    client_id: str = CLIENT_ID,
    client_secret: str = SECRET,
    refresh_token: str | None = None,
) -> TokenRequest:
    return build_request(
        c, client_id=client_id, client_secret=client_secret, style=style, refresh_token=refresh_token
    )


def basic_pair(request: TokenRequest) -> tuple[str, str]:
    """What a server that form-decodes Basic credentials reads (as tests/conftest.Seen)."""
    user, _, password = base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
    return unquote_plus(user), unquote_plus(password)


def form(request: TokenRequest) -> dict[str, str]:
    return dict(parse_qsl(request.body.decode("ascii")))


# --------------------------------------------------------------------------- the request


def test_form_with_basic_auth_as_rfc_6749_says() -> None:
    request = build(cred(scope=("read", "write"), extra_params=(("audience", "https://api"),)))
    assert request.url == URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"tokend/{__version__}"
    assert request.headers["Cache-Control"] == "no-store"
    assert basic_pair(request) == (CLIENT_ID, SECRET)
    assert form(request) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api",
    }


def test_json_with_body_auth_as_eventbookings_wants() -> None:
    request = build(cred(), Style("body", "json"))
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert json.loads(request.body) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }


def test_form_with_body_auth() -> None:
    request = build(cred(), Style("body", "form"))
    assert form(request) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    assert "Authorization" not in request.headers


def test_basic_percent_encodes_a_space_as_20_not_plus() -> None:
    """%20 reads back as a space whether the server form-decodes or URL-decodes (Authlib)."""
    value = basic_credentials(CLIENT_ID, SECRET).removeprefix("Basic ")
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert password == "s3cr%3At%26%2B%3D%20%25" and user == "app%20id%3A%C3%BC"
    assert unquote(password) == unquote_plus(password) == SECRET


@pytest.mark.parametrize(
    ("client_id", "client_secret", "changes"),
    [
        ("plain", "plainsecret", False),
        ("a-b_c.d~e", "X9", False),
        (CLIENT_ID, "plain", True),
        ("a", "b c", True),
    ],
)
def test_basic_encoding_changes(client_id: str, client_secret: str, changes: bool) -> None:
    assert basic_encoding_changes(client_id, client_secret) is changes


def test_a_list_in_extra_params_is_sent_repeated_in_a_form_and_as_an_array_in_json() -> None:
    params = (("audience", "api"), ("resource", "https://a"), ("resource", "https://b"))
    sent = parse_qsl(build(cred(extra_params=params)).body.decode())
    assert sent.count(("resource", "https://b")) == 1
    assert [v for k, v in sent if k == "resource"] == ["https://a", "https://b"]
    body = json.loads(build(cred(extra_params=params), Style("basic", "json")).body)
    assert body["resource"] == ["https://a", "https://b"] and body["audience"] == "api"


def test_json_params_makes_a_repeated_name_an_array() -> None:
    assert json_params([("a", "1"), ("b", "2"), ("b", "3")]) == {"a": "1", "b": ["2", "3"]}


def test_the_refresh_grant_sends_the_refresh_token_and_no_scope() -> None:
    c = cred(scope=("read",), extra_params=(("audience", "api"),))
    request = build(c, refresh_token="rt-old")
    assert form(request) == {"grant_type": "refresh_token", "refresh_token": "rt-old"}
    assert basic_pair(request) == (CLIENT_ID, SECRET)


def test_secret_forms_cover_every_encoding_longest_first() -> None:
    request = build(cred())
    forms = secret_forms((SECRET, ""), request)
    for form_ in secret_forms_of(SECRET, request.headers["Authorization"]):
        assert form_ in forms
    assert list(forms) == sorted(forms, key=len, reverse=True)
    assert "" not in forms and secret_forms(("",)) == ()


# --------------------------------------------------------------------------- scrubbing


def test_scrub_makes_one_bounded_line() -> None:
    assert scrub("a\nb\t\x00c   d", ()) == "a b c d"
    assert scrub("x" * 400, (), limit=10) == "x" * 10 + "…"


def test_scrub_redacts_before_the_cut_and_at_it() -> None:
    assert scrub("the secret is hunter22!", ("hunter22",)) == "the secret is [redacted]!"
    # the server cut its own echo short: the first characters of a secret go too
    assert scrub("the secret is hunt", ("hunter22",)) == "the secret is [redacted]"
    # replaced before the cut: the cut may halve the marker, never the secret
    assert scrub("x" * 95 + "hunter22" + "y" * 50, ("hunter22",), limit=100) == "x" * 95 + "[reda…"


def secret_forms_of(secret: str, basic: str) -> list[str]:
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        html.escape(secret),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        basic.removeprefix("Basic ").rstrip("="),
    ]


def echo_text(style: str, request: TokenRequest, secret: str = "") -> str:
    """An IdP in debug mode: its error text repeats what it was sent."""
    raw = request.body.decode()
    return {
        "html": f"<html><p>client secret {html.escape(secret)} is wrong; body {html.escape(raw)}</p></html>",
        "headers": f"bad client; headers were {dict(request.headers)}",
        "body": f"bad request body: {raw}",
        "json": json.dumps({"error": "invalid_client", "error_description": f"got {raw}"}),
        # a long prefix pushes the secret right over the cut at the length limit
        "cut": "x" * 100 + raw + "y" * 400,
    }[style]


@pytest.mark.parametrize("auth", ["basic", "body"])
@pytest.mark.parametrize("style", ["headers", "body", "json", "cut", "html"])
def test_no_form_of_the_secret_survives_an_echo(auth: Any, style: str) -> None:
    secret = 'p@ss w0rd+/ü"x'
    request = build(
        cred(), Style(auth, "json" if style == "json" else "form"), client_id="app", client_secret=secret
    )
    error = classify_failure(
        401, {}, echo_text(style, request, secret).encode(), now=NOW, secrets=secret_forms((secret,), request)
    )
    message = str(error)
    for form_ in secret_forms_of(secret, request.headers.get("Authorization", "")):
        for size in range(4, len(form_) + 1):  # no piece of it either, at the cut or elsewhere
            assert form_[:size] not in message, (form_[:size], message)


# --------------------------------------------------------------------------- failures


FATAL = [
    (401, {"error": "invalid_client", "error_description": "bad secret"}, "invalid_client"),
    (400, {"error": "unauthorized_client"}, "unauthorized_client"),
    (400, {"error": "invalid_scope"}, "invalid_scope"),
    (400, {"error": "unsupported_grant_type"}, "unsupported_grant_type"),
    (403, None, "Forbidden (HTTP 403)"),
    (404, None, "Not Found (HTTP 404)"),
]

RETRYABLE = [
    (500, None),
    (502, None),
    (503, None),
    (504, None),
    (429, None),
    (400, {"error": "temporarily_unavailable"}),
    (408, None),
]


def body_of(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body).encode()


@pytest.mark.parametrize(("status", "body", "fragment"), FATAL, ids=[f[2] for f in FATAL])
def test_errors_a_retry_cannot_fix(status: int, body: Any, fragment: str) -> None:
    error = classify_failure(status, {}, body_of(body), now=NOW)
    assert re.search(re.escape(fragment), str(error))
    assert not error.retryable and error.status == status
    if body:
        assert error.error == body["error"]
        assert error.description == body.get("error_description")


def test_the_readmes_list_of_errors_a_retry_cannot_fix_is_what_the_code_does() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    listed = readme.split("- Errors a retry cannot fix (", 1)[1].split(")", 1)[0]
    codes = re.findall(r"`([a-z_]+)`", listed)
    assert "invalid_request" in codes and "invalid_client" in codes
    for code in codes:
        if code == "token_type":
            continue
        assert not classify_failure(400, {}, body_of({"error": code}), now=NOW).retryable, code


@pytest.mark.parametrize(("status", "body"), RETRYABLE, ids=[str(r[0]) for r in RETRYABLE])
def test_errors_worth_retrying(status: int, body: Any) -> None:
    error = classify_failure(status, {}, body_of(body), now=NOW)
    assert error.retryable and error.status == status


def test_a_text_body_is_quoted_when_there_is_no_oauth_error() -> None:
    error = classify_failure(502, {}, b"<html>Bad gateway</html>", now=NOW)
    assert str(error) == "Bad Gateway (HTTP 502): <html>Bad gateway</html>"


def test_retry_after_in_seconds_and_as_a_date() -> None:
    first = classify_failure(503, {"Retry-After": "42"}, b"", now=NOW)
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    second = classify_failure(429, {"Retry-After": date}, b"", now=NOW)
    assert first.retry_after == 42
    assert second.retry_after == pytest.approx(90, abs=1)


def test_a_redirect_is_an_error_that_names_the_target() -> None:
    error = classify_failure(307, {"Location": "https://elsewhere.example/token"}, b"", now=NOW)
    assert re.search(r"redirects to https://elsewhere\.example", str(error))
    assert not error.retryable and error.status == 307


def test_a_secret_echoed_by_the_server_is_redacted() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": f"secret {SECRET} is wrong"}).encode()
    error = classify_failure(401, {}, body, now=NOW, secrets=secret_forms((SECRET,)))
    assert SECRET not in str(error) and "[redacted]" in str(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait, never negative
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP date
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", ["²", "٣", "1e400", "-5"])
def test_a_unicode_digit_in_retry_after_is_ignored_not_a_crash(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


# --------------------------------------------------------------------------- the token


def parse_token(body: bytes, default_expires_in: float = 3600.0) -> Any:
    return parse_token_response(body, sent_at=NOW, default_expires_in=default_expires_in)


def test_token_fields() -> None:
    token = parse_token(
        b'{"access_token": "abc.def", "token_type": "bearer", "expires_in": "120", "scope": "read"}'
    )
    assert token.access_token == "abc.def" and token.token_type == "Bearer" and token.scope == "read"
    # expires_at counts from when the request was sent, so it errs early, never late.
    assert token.obtained_at == NOW and token.expires_at == NOW + 120
    assert token.refresh_token is None


def test_a_scope_list_is_joined_and_a_blank_refresh_token_dropped() -> None:
    token = parse_token(b'{"access_token": "a", "scope": ["r", "w"], "refresh_token": " "}')
    assert token.scope == "r w" and token.refresh_token is None
    assert parse_token(b'{"access_token": "a", "refresh_token": "rt"}').refresh_token == "rt"


def test_missing_expires_in_uses_the_default() -> None:
    assert parse_token(b'{"access_token": "a"}', default_expires_in=900).lifetime == 900
    assert parse_token(f'{{"access_token": "a", "expires_in": {MAX_EXPIRES_IN}}}'.encode()).lifetime == (
        MAX_EXPIRES_IN
    )


MALFORMED = [
    (b"<html>Bad gateway</html>", "not JSON"),
    (b"", "empty body"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"token_type": "bearer"}', "no access_token"),
    (b'{"access_token": ""}', "no access_token"),
    (b'{"access_token": "a b"}', "whitespace"),
    (b'{"access_token": "a\\nb"}', "whitespace"),
    (b'{"access_token": "a\'b"}', "which no sink format"),
    (b'{"access_token": "a", "expires_in": 0}', "expires_in"),
    (b'{"access_token": "a", "expires_in": -5}', "expires_in"),
    (b'{"access_token": "a", "expires_in": "soon"}', "expires_in"),
    (b'{"access_token": "a", "expires_in": 1000000000000}', "expires_in"),
    (b'{"access_token": "a", "token_type": "two words"}', "token_type"),
    (b'{"access_token": "a", "token_type": "access_token"}', "token_type 'access_token' is not one"),
    (b'{"access_token": "a", "token_type": "mac"}', 'set token_type = "Bearer"'),
]
MALFORMED_IDS = [m[1] + str(i) for i, m in enumerate(MALFORMED)]
NOT_SECONDS: list[object] = ["²", "٣", " 12 3", True, float("nan"), 10**30]


@pytest.mark.parametrize(("raw", "fragment"), MALFORMED, ids=MALFORMED_IDS)
def test_malformed_success_bodies_are_not_retried(raw: bytes, fragment: str) -> None:
    with pytest.raises(TokenRequestError, match=fragment) as info:
        parse_token(raw)
    assert not info.value.retryable
    assert str(info.value).startswith("malformed token response (HTTP 200)")


def test_a_mislabelled_type_is_taken_as_the_configured_one_only_when_asked() -> None:
    """RFC 6749 §7.1: a token of a type the client does not understand is not used; an
    operator who knows the server mislabels Bearer tokens says so with token_type."""
    body = b'{"access_token": "a", "token_type": "access_token"}'
    token = parse_token_response(body, sent_at=NOW, default_expires_in=60, assume_token_type="Bearer")
    assert token.token_type == "Bearer"
    assert parse_token(b'{"access_token": "a", "token_type": "BEARER"}').token_type == "Bearer"
    assert parse_token(b'{"access_token": "a"}').token_type == "Bearer"  # omitted: RFC 6750's


@pytest.mark.parametrize("value", NOT_SECONDS)
def test_an_expires_in_that_is_not_a_number_of_seconds_is_malformed(value: object) -> None:
    with pytest.raises(TokenRequestError, match="expires_in") as info:
        parse_token(json.dumps({"access_token": "tok-x", "expires_in": value}).encode())
    assert not info.value.retryable


def test_a_trailing_newline_in_the_access_token_is_refused() -> None:
    with pytest.raises(TokenRequestError, match="access_token contains whitespace"):
        parse_token(json.dumps({"access_token": "abc\n", "expires_in": 60}).encode())


# --------------------------------------------------------------------------- what to try next


def err(status: int | None, error: str | None = None, *, retryable: bool = False) -> TokenRequestError:
    return TokenRequestError(
        f"{error or 'bare'} (HTTP {status})", retryable=retryable, status=status, error=error
    )


def test_orders_start_with_what_worked() -> None:
    assert wire_order("form", "json") == ("form",) and wire_order("json", None) == ("json",)
    assert wire_order("auto", None) == ("form", "json") == wire_order("auto", "form")
    assert wire_order("auto", "json") == ("json", "form")
    assert auth_order("body", "basic") == ("body",) and auth_order("basic", None) == ("basic",)
    assert auth_order("auto", None) == ("basic", "body") == auth_order("auto", "basic")
    assert auth_order("auto", "body") == ("body", "basic")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (err(401, "invalid_client"), True),
        (err(400, "invalid_client"), True),  # @node-oauth/oauth2-server
        (err(401), True),
        (err(403), True),  # glewlwyd: a bare 403
        (err(401, "invalid_request"), False),
        (err(400), False),
        (err(503, retryable=True), False),
        (err(None), False),
    ],
)
def test_is_auth_failure(error: TokenRequestError, expected: bool) -> None:
    assert is_auth_failure(error) is expected


def test_next_style_moves_the_credentials_after_an_auth_failure_and_the_format_after_the_rest() -> None:
    auths: tuple[AuthStyle, ...] = ("basic", "body")
    wires: tuple[WireFormat, ...] = ("form", "json")
    start = Style("basic", "form")
    assert next_style(start, err(401, "invalid_client"), auths, wires, [start]) == Style("body", "form")
    assert next_style(start, err(400, "invalid_request"), auths, wires, [start]) == Style("basic", "json")
    # a wrong secret stays wrong in JSON: no other format after an auth failure
    assert next_style(start, err(401), ("basic",), wires, [start]) is None
    # nothing after a retryable failure, a 5xx, or a transport error
    assert next_style(start, err(429, retryable=True), auths, wires, [start]) is None
    assert next_style(start, err(500), auths, wires, [start]) is None
    assert next_style(start, err(None), auths, wires, [start]) is None
    # each style once
    back = Style("body", "form")
    assert next_style(back, err(401), auths, wires, [start, back]) is None


def test_telling_ranks_auth_over_oauth_errors_over_format_complaints() -> None:
    assert telling(err(401, "invalid_client")) > telling(err(400, "invalid_scope"))
    assert telling(err(400, "invalid_scope")) > telling(err(400, "invalid_request"))
    assert (
        telling(err(400, "invalid_request"))
        == telling(err(400, "unsupported_grant_type"))
        == telling(err(404))
    )


def test_when_both_formats_fail_the_auth_failure_is_the_headline() -> None:
    form_style, json_style = Style("body", "form"), Style("body", "json")
    first = TokenRequestError(
        "invalid_request (HTTP 400): only JSON", retryable=False, status=400, error="invalid_request"
    )
    second = TokenRequestError(
        "invalid_client (HTTP 400)", retryable=False, status=400, error="invalid_client"
    )
    error = final_error([(form_style, first), (json_style, second)])
    message = str(error)
    assert message.startswith("invalid_client (HTTP 400)"), message
    assert "invalid_request (HTTP 400): only JSON" in message  # the other attempt, after it
    assert f"(tried {json_style}; also {form_style}: " in message
    assert error.error == "invalid_client" and not error.retryable and error.status == 400


def test_a_retryable_last_attempt_is_the_headline_and_keeps_the_first_error() -> None:
    first = err(400, "invalid_request")
    last = TokenRequestError("temporarily_unavailable (HTTP 503)", retryable=True, status=503, retry_after=7)
    error = final_error([(Style("basic", "form"), first), (Style("basic", "json"), last)])
    assert error.retryable and error.status == 503 and error.retry_after == 7
    assert "invalid_request" in str(error)


def test_a_single_failure_is_raised_as_it_is() -> None:
    only = err(400, "invalid_scope")
    assert final_error([(Style("basic", "form"), only)]) is only


def test_the_basic_hint_is_for_plain_basic_when_the_encoding_changed_something() -> None:
    assert 'client_auth = "body" or "auto"' in basic_hint(cred(), CLIENT_ID, SECRET)
    assert basic_hint(cred(), "plain", "plainsecret") == ""
    assert basic_hint(cred(client_auth="auto"), CLIENT_ID, SECRET) == ""
    hint = basic_hint(cred(), CLIENT_ID, SECRET)
    basic_fail = final_error([(Style("basic", "form"), err(401, "invalid_client"))], hint=hint)
    assert str(basic_fail).endswith(hint)
    body_fail = final_error([(Style("body", "form"), err(401, "invalid_client"))], hint=hint)
    assert hint not in str(body_fail)
    other = final_error([(Style("basic", "form"), err(400, "invalid_scope"))], hint=hint)
    assert hint not in str(other)


# --------------------------------------------------------------------------- key-based client auth


ASSERTION = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"


def test_private_key_jwt_sends_the_assertion_and_no_secret() -> None:
    request = build_request(
        cred(client_auth="private_key_jwt", client_secret=None),
        client_id=CLIENT_ID,
        client_secret=None,
        style=Style("private_key_jwt", "form"),
        client_assertion=ASSERTION,
    )
    params = dict(parse_qsl(request.body.decode()))
    assert params == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": ASSERTION,
    }
    assert "Authorization" not in request.headers


def test_tls_client_auth_sends_only_the_client_id_to_the_discovered_endpoint() -> None:
    request = build_request(
        cred(client_auth="tls_client_auth", client_secret=None, token_url=None),
        client_id=CLIENT_ID,
        client_secret=None,
        style=Style("tls_client_auth", "form"),
        token_url="https://mtls.idp.example/token",
    )
    assert dict(parse_qsl(request.body.decode())) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
    }
    assert request.url == "https://mtls.idp.example/token" and "Authorization" not in request.headers


def test_a_key_based_method_is_never_tried_with_another() -> None:
    for method in ("private_key_jwt", "tls_client_auth"):
        assert auth_order(method, "basic") == (method,)
        failed = TokenRequestError(
            "invalid_client (HTTP 401)", retryable=False, status=401, error="invalid_client"
        )
        style = Style(method, "form")
        assert next_style(style, failed, (method,), ("form", "json"), [style]) is None


def test_an_echoed_assertion_is_scrubbed() -> None:
    request = TokenRequest(URL, {}, b"")
    body = json.dumps({"error": "invalid_client", "error_description": f"bad assertion {ASSERTION}"}).encode()
    error = classify_failure(401, {}, body, now=NOW, secrets=secret_forms(("", "", ASSERTION), request))
    assert ASSERTION not in str(error) and "[redacted]" in str(error)


# --------------------------------------------------------------------------- hostile answers


def test_json_nested_too_deep_is_a_malformed_answer_not_a_crash() -> None:
    """200,000 brackets fit well under the 1 MiB cap and exhaust the parser's recursion."""
    deep = b"[" * 200_000
    with pytest.raises(TokenRequestError, match="malformed token response") as raised:
        parse_token_response(deep, sent_at=NOW, default_expires_in=3600)
    assert not raised.value.retryable
    error = classify_failure(400, {}, deep, now=NOW)
    assert error.status == 400 and not error.retryable and error.error is None
    assert classify_failure(503, {}, b'{"a":' * 100_000, now=NOW).retryable


def test_metadata_names_are_printable_ascii_and_bounded() -> None:
    """``check --online`` prints token_endpoint_auth_methods_supported: an entry with a
    terminal escape (or any non-ASCII, control or blank) is dropped, and at most 32 kept."""
    from tokend.core.discovery import MAX_METADATA_NAMES, parse_metadata

    issuer = "https://idp.example"
    listed = [
        "private_key_jwt",
        "\x1b]0;owned\x07",
        "tls\x1b[2J",
        "a b",
        "",
        "\uff50kj",
        7,
        "x" * 65,
        "RS256",
    ]
    found = parse_metadata(
        {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/t",
            "token_endpoint_auth_methods_supported": listed + [f"m{i}" for i in range(100)],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "\x9b31m"],
        },
        issuer,
    )
    assert found.auth_methods is not None and len(found.auth_methods) == MAX_METADATA_NAMES == 32
    assert found.auth_methods[:3] == ("private_key_jwt", "RS256", "m0")
    assert found.signing_algs == ("ES256",)
