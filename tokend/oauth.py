"""Talk to an RFC 6749 token endpoint: build the request, send it, judge the answer.

Building the request and judging the response are pure functions; :class:`TokenClient` is
the thin IO edge around them (one ``requests.Session`` per worker). Every failure becomes a
:class:`TokenRequestError` that says whether a retry can help, carries the server's OAuth
``error`` / ``error_description`` and never the client secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode

import requests
import urllib3

from tokend import __version__
from tokend.config import CredentialConfig, RequestFormat, WireFormat
from tokend.token import Token, unsafe_reason, valid_token_type

log = logging.getLogger("tokend.oauth")

MAX_BODY_BYTES = 1024 * 1024
MAX_EXPIRES_IN = 366 * 86400
GrantType = Literal["client_credentials", "refresh_token"]

# RFC 6749 §5.2 codes that a retry will not fix; the rest of the 4xx family is treated alike.
FATAL_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_scope", "unsupported_grant_type",
     "invalid_request", "invalid_grant", "access_denied", "invalid_target"}
)
# Codes some servers send with a 4xx that mean "later", not "never".
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "slow_down", "server_error"})
RETRYABLE_STATUS = frozenset({408, 425, 429})


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


@dataclass(frozen=True)
class TokenRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


# --------------------------------------------------------------------------- pure: the request


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret *before* base64 (requests' auth does not)."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def build_request(
    cred: CredentialConfig,
    *,
    client_id: str,
    client_secret: str,
    wire: WireFormat,
    refresh_token: str | None = None,
) -> TokenRequest:
    params: dict[str, str] = {}
    if refresh_token is not None:
        params["grant_type"] = "refresh_token"
        params["refresh_token"] = refresh_token
    else:
        params["grant_type"] = "client_credentials"
        if cred.scope_string:
            params["scope"] = cred.scope_string
        params.update(cred.extra_params)
    headers = {
        "Accept": "application/json",
        "User-Agent": f"tokend/{__version__}",
        "Cache-Control": "no-store",
    }
    if cred.client_auth == "basic":
        headers["Authorization"] = basic_credentials(client_id, client_secret)
    else:
        params["client_id"] = client_id
        params["client_secret"] = client_secret
    if wire == "json":
        headers["Content-Type"] = "application/json"
        body = json.dumps(params).encode("utf-8")
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(params).encode("ascii")
    return TokenRequest(cred.token_url, headers, body)


# --------------------------------------------------------------------------- pure: the answer


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only for the HTTP-date form; off every ordinary request's path

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _scrub(text: str, secrets: Iterable[str], limit: int = 300) -> str:
    """Server text fit for a log line: one line, bounded, and no secret of ours in it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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
    error = _scrub(error_value, secrets, limit=60) if isinstance(error_value, str) else None
    description = _scrub(desc_value, secrets) if isinstance(desc_value, str) else None

    if 300 <= status < 400:
        location = _scrub(headers.get("Location", "?"), secrets, limit=200)
        return TokenRequestError(
            f"HTTP {status}: the token endpoint redirects to {location}; set token_url to "
            "the final address (tokend does not resend a secret to a redirect)",
            retryable=False, status=status,
        )
    retryable = status >= 500 or status in RETRYABLE_STATUS or error in RETRYABLE_ERRORS
    label = error or _status_label(status)
    message = f"{label} (HTTP {status})"
    if description:
        message += f": {description}"
    elif not error and body and not data:
        message += ": " + _scrub(body[:200].decode("utf-8", "replace"), secrets, limit=120)
    return TokenRequestError(
        message, retryable=retryable, status=status, error=error,
        description=description, retry_after=retry_after,
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
) -> Token:
    """Validate a 2xx token response. A malformed one is an error no retry will fix."""

    def malformed(what: str) -> TokenRequestError:
        return TokenRequestError(f"malformed token response (HTTP {status}): {what}",
                                 retryable=False, status=status)

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
    if token_type.lower() == "bearer":
        token_type = "Bearer"

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
    return Token(
        access_token=access,
        expires_at=sent_at + expires_in,
        obtained_at=sent_at,
        token_type=token_type,
        scope=scope,
        refresh_token=refresh,
    )


def _looks_like_text(body: bytes) -> bool:
    return not body.lstrip().startswith((b"[", b'"')) and not body.strip().isdigit()


def _expires_in(value: object, default: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # Azure AD v1 and others send it as a string
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value <= MAX_EXPIRES_IN:
        return None
    return float(value)


# --------------------------------------------------------------------------- IO: the client


# --------------------------------------------------------------------------- IO: deadlines

# requests' read timeout applies to each recv(), so a server that trickles its answer a
# byte at a time can hold a worker for ever. Each request therefore gets a deadline: when
# it passes, a timer shuts the connection's socket down and the blocked read returns.
_deadline = threading.local()


class _Cutoff:
    """Shuts a socket down when called, and remembers that it did: a response cut off
    mid-headers looks like a complete, empty one to http.client, and must not be judged
    as the server's answer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _arm(sock: socket.socket | None) -> None:
    at: float | None = getattr(_deadline, "at", None)
    if at is None or sock is None:
        return
    cutoff = _Cutoff(sock)
    timer = threading.Timer(max(0.0, at - time.monotonic()), cutoff)
    timer.daemon = True
    timer.start()
    _deadline.timer, _deadline.cutoff = timer, cutoff


def _cut_off() -> bool:
    cutoff: _Cutoff | None = getattr(_deadline, "cutoff", None)
    return cutoff is not None and cutoff.fired


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self.sock)
        return super().getresponse(*args, **kwargs)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self.sock)
        return super().getresponse(*args, **kwargs)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _NoNetrc(requests.auth.AuthBase):
    """Stops requests from replacing our Authorization header with ~/.netrc credentials."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


@dataclass(frozen=True)
class TokenResponse:
    token: Token
    wire: WireFormat  # the request format that worked, for request_format = "auto"


class TokenClient:
    """Sends token requests. Not thread-safe: use one per worker thread."""

    def __init__(self, session: requests.Session | None = None) -> None:
        self.session = session or requests.Session()
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def obtain(
        self,
        cred: CredentialConfig,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str | None = None,
        learned_wire: WireFormat | None = None,
    ) -> TokenResponse:
        """A new token: by the refresh grant when there is a refresh token, else by client
        credentials. A refresh token the server refuses is dropped and client credentials
        are used at once; a retryable failure is raised, to be retried later."""
        if refresh_token is not None and cred.use_refresh_token:
            try:
                answer = self._request(cred, client_id, client_secret, refresh_token, learned_wire)
            except TokenRequestError as exc:
                if exc.retryable:
                    raise
                # invalid_grant is the normal end of a refresh token's life; anything else
                # (a bad client, say) will likely fail the fallback too, and is worth a look.
                level = logging.INFO if exc.error == "invalid_grant" else logging.WARNING
                log.log(level, "%s: refresh token refused (%s); asking with client credentials",
                        cred.name, exc)
            else:
                if answer.token.refresh_token is None:
                    # RFC 6749 §6: no new refresh token means keep using the old one.
                    answer = TokenResponse(_with_refresh(answer.token, refresh_token), answer.wire)
                return answer
        return self._request(cred, client_id, client_secret, None, learned_wire)

    def _request(
        self,
        cred: CredentialConfig,
        client_id: str,
        client_secret: str,
        refresh_token: str | None,
        learned_wire: WireFormat | None,
    ) -> TokenResponse:
        wires = wire_order(cred.request_format, learned_wire)
        secrets = (client_secret, refresh_token or "")
        first_error: TokenRequestError | None = None
        for wire in wires:
            request = build_request(cred, client_id=client_id, client_secret=client_secret,
                                    wire=wire, refresh_token=refresh_token)
            try:
                return TokenResponse(self._send(cred, request, secrets), wire)
            except TokenRequestError as exc:
                if exc.retryable or exc.status is None or not 400 <= exc.status < 500:
                    raise
                if first_error is not None:
                    raise TokenRequestError(
                        f"{exc} (also tried as {wires[0]}: {first_error})",
                        retryable=False, status=exc.status, error=exc.error,
                        description=exc.description,
                    ) from None
                first_error = exc
                if len(wires) > 1:
                    log.info("%s: %s body refused (%s); trying %s", cred.name, wire, exc, wires[1])
        assert first_error is not None
        raise first_error

    def _send(self, cred: CredentialConfig, request: TokenRequest, secrets: tuple[str, ...]) -> Token:
        sent_at = time.time()
        deadline = time.monotonic() + cred.timeout
        _deadline.at, _deadline.timer, _deadline.cutoff = deadline, None, None
        try:
            return self._exchange(cred, request, secrets, sent_at, deadline)
        finally:
            timer = _deadline.timer
            if timer is not None:
                timer.cancel()
            _deadline.at = _deadline.timer = _deadline.cutoff = None

    def _exchange(self, cred: CredentialConfig, request: TokenRequest, secrets: tuple[str, ...],
                  sent_at: float, deadline: float) -> Token:
        verify: bool | str = str(cred.ca_bundle) if cred.ca_bundle else True
        try:
            response = self.session.post(
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=(cred.timeout, cred.timeout),
                verify=verify,
                allow_redirects=False,
                stream=True,
                auth=_NoNetrc(),
            )
        except requests.exceptions.SSLError as exc:
            raise TokenRequestError(
                f"TLS verification failed for {request.url} (set ca_bundle for a private CA): "
                f"{_scrub(str(exc), secrets, 160)}", retryable=False) from None
        except requests.exceptions.Timeout:
            raise TokenRequestError(f"no answer within {cred.timeout:g}s", retryable=True) from None
        except requests.exceptions.ConnectionError as exc:
            if _cut_off():  # our deadline shut the socket
                raise TokenRequestError(f"no complete answer within {cred.timeout:g}s",
                                        retryable=True) from None
            raise TokenRequestError(f"cannot connect: {_connection_reason(exc)}",
                                    retryable=True) from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise TokenRequestError(f"request failed: {_scrub(str(exc), secrets, 160)}",
                                    retryable=False) from None
        with response:
            body = _read_capped(response, deadline, cred.timeout)
        if _cut_off():  # what arrived is the part before our deadline, not an answer
            raise TokenRequestError(f"no complete answer within {cred.timeout:g}s",
                                    retryable=True)
        if 200 <= response.status_code < 300:
            return parse_token_response(body, sent_at=sent_at, status=response.status_code,
                                        default_expires_in=cred.default_expires_in)
        raise classify_failure(response.status_code, response.headers, body,
                               now=time.time(), secrets=secrets)


def wire_order(request_format: RequestFormat, learned: WireFormat | None) -> tuple[WireFormat, ...]:
    """Which body formats to try, in order. ``auto`` starts with what worked last time."""
    if request_format != "auto":
        return (request_format,)
    if learned == "json":
        return ("json", "form")
    return ("form", "json")


def _read_capped(response: requests.Response, deadline: float, timeout: float) -> bytes:
    """The body, refusing more than 1 MiB or a server that trickles past the timeout."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise TokenRequestError(f"response body of {int(length)} bytes is over the 1 MiB cap",
                                retryable=False, status=response.status_code)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(16384):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise TokenRequestError("response body is over the 1 MiB cap",
                                        retryable=False, status=response.status_code)
            if time.monotonic() > deadline:
                raise TokenRequestError(f"response not complete within {timeout:g}s",
                                        retryable=True, status=response.status_code)
            chunks.append(chunk)
    except requests.exceptions.RequestException as exc:
        if _cut_off():  # our deadline shut the socket mid-body
            raise TokenRequestError(f"response not complete within {timeout:g}s",
                                    retryable=True, status=response.status_code) from None
        raise TokenRequestError(f"response cut short: {type(exc).__name__}",
                                retryable=True, status=response.status_code) from None
    return b"".join(chunks)


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host",
                   "Connection reset", "Temporary failure in name resolution",
                   "Network is unreachable", "RemoteDisconnected"):
        if marker in text:
            return marker
    return type(exc).__name__


def _with_refresh(token: Token, refresh_token: str) -> Token:
    return Token(token.access_token, token.expires_at, token.obtained_at, token.token_type,
                 token.scope, refresh_token)
