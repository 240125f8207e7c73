"""tokend/core/token_response.py: judging what the token endpoint answered (a token, an
error a retry cannot fix, one worth retrying and when), as data: no server, no clock."""

from __future__ import annotations

import email.utils
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tokend.core.limits import MAX_EXPIRES_IN
from tokend.core.token_response import (
    TokenRequestError,
    classify_failure,
    parse_retry_after,
    parse_token_response,
)

from .support.protocol import FATAL, MALFORMED, MALFORMED_IDS, NOT_SECONDS, NOW, RETRYABLE, body_of

# --------------------------------------------------------------------------- failures


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


def test_a_token_exchanges_issued_token_type_is_kept_and_a_bad_one_dropped() -> None:
    """RFC 8693 §2.2.1: what the exchange issued, shown in status; a value that could carry
    an escape sequence to a terminal is dropped, never an error that costs the token."""
    from tokend.core.tokens import Token

    access = "urn:ietf:params:oauth:token-type:access_token"
    body = json.dumps({"access_token": "t" * 20, "expires_in": 60, "issued_token_type": access}).encode()
    token = parse_token_response(body, sent_at=1000.0, default_expires_in=3600)
    assert token.issued_token_type == access
    assert Token.from_dict(token.to_dict()) == token
    bad = json.dumps({"access_token": "t" * 20, "expires_in": 60, "issued_token_type": "x\x1b[2J"}).encode()
    assert parse_token_response(bad, sent_at=1000.0, default_expires_in=3600).issued_token_type is None
    plain = parse_token_response(
        b'{"access_token": "tttttttttttttttttttt", "expires_in": 60}', sent_at=1.0, default_expires_in=60
    )
    assert "issued_token_type" not in plain.to_dict()  # the cache's format, as before
    with pytest.raises(ValueError, match="issued_token_type"):
        Token.from_dict({**token.to_dict(), "issued_token_type": "a b"})
