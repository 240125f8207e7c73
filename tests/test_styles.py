"""tokend/core/styles.py: which style of request is tried first and which next (the
credentials moved after an auth failure, the format after the rest, each style once, a
key-based method never with another), and which failure is the headline."""

from __future__ import annotations

import pytest

from tokend.config import AuthStyle, WireFormat
from tokend.core.styles import (
    auth_order,
    basic_hint,
    final_error,
    is_auth_failure,
    next_style,
    telling,
    wire_order,
)
from tokend.core.token_request import Style
from tokend.core.token_response import TokenRequestError

from .support.protocol import CLIENT_ID, SECRET, cred

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


def test_a_key_based_method_is_never_tried_with_another() -> None:
    for method in ("private_key_jwt", "tls_client_auth"):
        assert auth_order(method, "basic") == (method,)
        failed = TokenRequestError(
            "invalid_client (HTTP 401)", retryable=False, status=401, error="invalid_client"
        )
        style = Style(method, "form")
        assert next_style(style, failed, (method,), ("form", "json"), [style]) is None
