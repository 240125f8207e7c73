"""What to try next when a token request fails: the body formats and the places for the
client's credentials in the order ``auto`` tries them, the next :class:`Style` after a
failure, and the one error (the most telling headline) for a request that failed in every
style it was tried in. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokend.core.token_request import Style, basic_encoding_changes
from tokend.core.token_response import TokenRequestError

if TYPE_CHECKING:  # annotations only: the fallback needs no part of config at run time
    from tokend.config.schema import AuthStyle, ClientAuth, CredentialConfig, RequestFormat, WireFormat

# What a server says when it did not accept the client's authentication. A bare 401 or
# 403 (no OAuth error code) counts too: glewlwyd answers a bad secret with a bare 403.
AUTH_ERRORS = frozenset({"invalid_client"})
AUTH_STATUS = frozenset({401, 403})
# Errors about the request's shape, which another body format may cure: the weakest
# headline when several attempts failed.
FORMAT_ERRORS = frozenset({"invalid_request", "unsupported_grant_type"})


def wire_order(request_format: RequestFormat, learned: WireFormat | None) -> tuple[WireFormat, ...]:
    """Which body formats to try, in order. ``auto`` starts with what worked last time."""
    if request_format != "auto":
        return (request_format,)
    if learned == "json":
        return ("json", "form")
    return ("form", "json")


def auth_order(client_auth: ClientAuth, learned: AuthStyle | None) -> tuple[AuthStyle, ...]:
    """Where to put the client's credentials, in order. ``auto`` tries Basic first, as
    RFC 6749 §2.3.1 says servers must support, unless the body worked last time (Go's
    golang.org/x/oauth2 AuthStyleAutoDetect: interop is learned from servers)."""
    if client_auth != "auto":
        return (client_auth,)
    if learned == "body":
        return ("body", "basic")
    return ("basic", "body")


def is_auth_failure(error: TokenRequestError) -> bool:
    """The server did not accept the client's authentication (not: the request's shape)."""
    if error.retryable or error.status is None:
        return False
    if error.error in AUTH_ERRORS:
        return True
    return error.error is None and error.status in AUTH_STATUS


def next_style(
    style: Style,
    error: TokenRequestError,
    auths: Sequence[AuthStyle],
    wires: Sequence[WireFormat],
    tried: Sequence[Style],
) -> Style | None:
    """What to try after ``style`` failed with ``error``, or None to give up.

    Only a 4xx that another style may cure leads anywhere: an authentication failure to
    the other place for the credentials (never to another body format: a wrong secret
    stays wrong in JSON), any other 4xx to the other body format. Each style once.
    """
    if error.retryable or error.status is None or not 400 <= error.status < 500:
        return None
    if is_auth_failure(error):
        options = [Style(auth, style.wire) for auth in auths if auth != style.auth]
    else:
        options = [Style(style.auth, wire) for wire in wires if wire != style.wire]
    return next((option for option in options if option not in tried), None)


def telling(error: TokenRequestError) -> int:
    """How much an error says about what is wrong, to pick a headline among attempts: an
    authentication failure beats another OAuth error, which beats a complaint about the
    body's shape (which the other attempt's format may have caused)."""
    if is_auth_failure(error):
        return 3
    if error.error is not None and error.error not in FORMAT_ERRORS:
        return 2
    return 1


def final_error(failed: Sequence[tuple[Style, TokenRequestError]], *, hint: str = "") -> TokenRequestError:
    """One error for a request that failed in every style it was tried in.

    Only the last attempt can be retryable (a retryable failure ends the tries), and then
    the whole request is: another try later may work. Otherwise the most telling error is
    the headline, with what the other styles got after it.
    """
    if failed[-1][1].retryable:
        head_style, head = failed[-1]
    else:  # the first of the most telling
        head_style, head = max(failed, key=lambda attempt: telling(attempt[1]))
    message = str(head)
    if hint and is_auth_failure(head) and head_style.auth == "basic":
        message += hint
    others = [f"{style}: {error}" for style, error in failed if error is not head]
    if others:
        message += f" (tried {head_style}; also {'; '.join(others)})"
    if len(failed) == 1 and message == str(head):
        return head
    return TokenRequestError(
        message,
        retryable=head.retryable,
        status=head.status,
        error=head.error,
        description=head.description,
        retry_after=head.retry_after,
    )


def basic_hint(cred: CredentialConfig, client_id: str, client_secret: str | None) -> str:
    """For plain ``basic`` only: a server that does not decode Basic credentials refuses
    an id or secret that the RFC's encoding changed. Say so, rather than "wrong secret"."""
    if (
        cred.client_auth != "basic"
        or client_secret is None
        or not basic_encoding_changes(client_id, client_secret)
    ):
        return ""
    return (
        "; the client id or secret holds characters that Basic auth must percent-encode "
        '(RFC 6749 §2.3.1), and some servers do not decode them: try client_auth = "body" '
        'or "auto"'
    )
