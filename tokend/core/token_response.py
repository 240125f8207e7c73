"""Judging a token endpoint's answer: a 2xx becomes a :class:`~tokend.core.tokens.Token`
(:func:`parse_token_response`), anything else a :class:`TokenRequestError` that says
whether a retry can help (:func:`classify_failure`), carries the server's OAuth ``error``
/ ``error_description`` and its ``Retry-After``, and never a secret of ours (the server's
text is scrubbed, :mod:`tokend.core.scrub`). Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from tokend.core.dpop import bound_type_ok
from tokend.core.limits import MAX_EXPIRES_IN
from tokend.core.scrub import scrub
from tokend.core.tokens import (
    Token,
    authorization_scheme,
    unsafe_reason,
    valid_issued_token_type,
    valid_token_type,
)

MAX_BODY_BYTES = 1024 * 1024  # of an answer: more is read no further

# Codes some servers send with a 4xx that mean "later", not "never".
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "slow_down", "server_error"})
RETRYABLE_STATUS = frozenset({408, 425, 429})
_ASCII_SECONDS = re.compile(r"[0-9]{1,10}")


class TokenRequestError(Exception):
    """A token request that did not yield a token."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        error: str | None = None,
        description: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():  # "²".isdigit() is true as well, hence the second look
        return float(value) if _ASCII_SECONDS.fullmatch(value) else None
    import email.utils  # only for the HTTP-date form; off every ordinary request's path

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _json_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, or None. Nesting deep enough to exhaust the parser's
    recursion (``[`` a hundred thousand times fits well under the 1 MiB cap) is just
    another body that is not a token response, never a crash."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def classify_failure(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    secrets: Iterable[str] = (),
) -> TokenRequestError:
    """Turn a non-2xx answer into an error that knows whether retrying can help."""
    secrets = tuple(secrets)
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    data = _json_object(body) or {}
    error_value, desc_value = data.get("error"), data.get("error_description")
    error = scrub(error_value, secrets, limit=60) if isinstance(error_value, str) else None
    description = scrub(desc_value, secrets) if isinstance(desc_value, str) else None

    if 300 <= status < 400:
        location = scrub(headers.get("Location", "?"), secrets, limit=200)
        return TokenRequestError(
            f"HTTP {status}: the token endpoint redirects to {location}; set token_url to "
            "the final address (tokend does not resend a secret to a redirect)",
            retryable=False,
            status=status,
        )
    retryable = status >= 500 or status in RETRYABLE_STATUS or error in RETRYABLE_ERRORS
    label = error or _status_label(status)
    message = f"{label} (HTTP {status})"
    if description:
        message += f": {description}"
    elif not error and body and not data:
        message += ": " + scrub(body.decode("utf-8", "replace"), secrets, limit=120)
    return TokenRequestError(
        message,
        retryable=retryable,
        status=status,
        error=error,
        description=description,
        retry_after=retry_after,
    )


def _status_label(status: int) -> str:
    try:
        from http import HTTPStatus

        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def parse_token_response(
    body: bytes,
    *,
    sent_at: float,
    default_expires_in: float,
    status: int = 200,
    assume_token_type: str | None = None,
    dpop: bool = False,
    dpop_allow_bearer: bool = False,
) -> Token:
    """Validate a 2xx token response. A malformed one is an error no retry will fix.
    ``assume_token_type`` (the credential's ``token_type``) replaces whatever type the
    server named, for servers known to mislabel their tokens. ``dpop``: the request carried
    a DPoP proof, so the answer must be a DPoP token (RFC 9449 §5), or Bearer only if
    ``dpop_allow_bearer`` says a downgrade is acceptable."""

    def malformed(what: str) -> TokenRequestError:
        return TokenRequestError(
            f"malformed token response (HTTP {status}): {what}", retryable=False, status=status
        )

    data = _json_object(body)
    if data is None:
        kind = "not JSON" if _looks_like_text(body) else "not a JSON object"
        raise malformed(kind if body.strip() else "empty body")
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise malformed("no access_token")
    reason = unsafe_reason(access)
    if reason:
        raise malformed(f"access_token {reason}")

    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not valid_token_type(token_type):
        raise malformed("token_type is not a single word")
    if dpop:
        if not bound_type_ok(token_type, dpop=True, allow_bearer=dpop_allow_bearer):
            raise malformed(
                f"token_type {token_type!r} to a DPoP request: the server did not bind the token "
                "to the key (a downgrade to a bearer token; dpop_allow_bearer = true accepts it)"
            )
        token_type = "DPoP" if token_type.lower() == "dpop" else "Bearer"
    elif assume_token_type is not None:
        token_type = assume_token_type
    elif authorization_scheme(token_type) == "Bearer":
        token_type = "Bearer"
    else:
        # RFC 6749 §7.1: a client must not use a token whose type it does not understand;
        # copied into a header sink it is refused by every resource server anyway.
        raise malformed(
            f"token_type {token_type!r} is not one tokend understands (Bearer); if this server is "
            'known to mislabel Bearer tokens, set token_type = "Bearer"'
        )

    expires_in = _expires_in(data.get("expires_in"), default_expires_in)
    if expires_in is None:
        raise malformed(f"expires_in must be a positive number of seconds up to {MAX_EXPIRES_IN}")

    refresh = data.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh.strip()):
        refresh = None
    scope = data.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    if not isinstance(scope, str) or not scope:
        scope = None
    issued = data.get("issued_token_type")  # RFC 8693 §2.2.1; a bad one is dropped, not fatal
    return Token(
        access_token=access,
        expires_at=sent_at + expires_in,
        obtained_at=sent_at,
        token_type=token_type,
        scope=scope,
        refresh_token=refresh,
        issued_token_type=issued if isinstance(issued, str) and valid_issued_token_type(issued) else None,
    )


def _looks_like_text(body: bytes) -> bool:
    return not body.lstrip().startswith((b"[", b'"')) and not body.strip().isdigit()


def _expires_in(value: object, default: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, str) and _ASCII_SECONDS.fullmatch(value.strip()):
        value = int(value)  # Azure AD v1 and others send it as a string
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value <= MAX_EXPIRES_IN:
        return None
    return float(value)
