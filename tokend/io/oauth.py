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
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, quote_plus, urlencode

import requests
import urllib3

from tokend import __version__
from tokend.config import AuthStyle, ClientAuth, CredentialConfig, RequestFormat, WireFormat
from tokend.core.tokens import Token, unsafe_reason, valid_token_type

log = logging.getLogger("tokend.oauth")

MAX_BODY_BYTES = 1024 * 1024
MAX_EXPIRES_IN = 366 * 86400
GrantType = Literal["client_credentials", "refresh_token"]

# RFC 6749 §5.2 codes that a retry will not fix; the rest of the 4xx family is treated alike.
FATAL_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_request",
        "invalid_grant",
        "access_denied",
        "invalid_target",
    }
)
# Codes some servers send with a 4xx that mean "later", not "never".
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "slow_down", "server_error"})
RETRYABLE_STATUS = frozenset({408, 425, 429})
# What a server says when it did not accept the client's authentication. A bare 401 or
# 403 (no OAuth error code) counts too: glewlwyd answers a bad secret with a bare 403.
AUTH_ERRORS = frozenset({"invalid_client"})
AUTH_STATUS = frozenset({401, 403})
# Errors about the request's shape, which another body format may cure: the weakest
# headline when several attempts failed.
FORMAT_ERRORS = frozenset({"invalid_request", "unsupported_grant_type"})
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


@dataclass(frozen=True)
class TokenRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Style:
    """How one request presents itself: where the client authenticates, how the body is
    encoded. ``auto`` settings try more than one and remember what worked."""

    auth: AuthStyle
    wire: WireFormat

    def __str__(self) -> str:
        return f"{self.auth} auth, {self.wire} body"


# --------------------------------------------------------------------------- pure: the request


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: encode id and secret *before* base64 (requests' auth does not).

    Percent-encoding with ``quote(safe="")``, not ``quote_plus``: a space must become
    ``%20``, which servers that form-decode (``+`` is a space) and servers that URL-decode
    (``+`` stays a plus, as Authlib does) both read back as a space.
    """
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def basic_encoding_changes(client_id: str, client_secret: str) -> bool:
    """Whether Basic auth's encoding alters the id or secret: then a server that does not
    decode Basic credentials (several do not) sees something else than was configured."""
    return quote(client_id, safe="") != client_id or quote(client_secret, safe="") != client_secret


def build_request(
    cred: CredentialConfig,
    *,
    client_id: str,
    client_secret: str,
    style: Style,
    refresh_token: str | None = None,
) -> TokenRequest:
    params: list[tuple[str, str]] = []
    if refresh_token is not None:
        params += [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
    else:
        params.append(("grant_type", "client_credentials"))
        if cred.scope_string:
            params.append(("scope", cred.scope_string))
        params += cred.extra_params
    headers = {
        "Accept": "application/json",
        "User-Agent": f"tokend/{__version__}",
        "Cache-Control": "no-store",
    }
    if style.auth == "basic":
        headers["Authorization"] = basic_credentials(client_id, client_secret)
    else:
        params += [("client_id", client_id), ("client_secret", client_secret)]
    if style.wire == "json":
        headers["Content-Type"] = "application/json"
        body = json.dumps(json_params(params)).encode("utf-8")
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(params).encode("ascii")  # a repeated name is sent repeated
    return TokenRequest(cred.token_url, headers, body)


def json_params(params: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    """A JSON body: a name given more than once becomes an array (RFC 8707 ``resource``)."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}


def secret_forms(secrets: Iterable[str], request: TokenRequest | None = None) -> tuple[str, ...]:
    """Every form in which a secret of ours may come back in a server's error text:
    plain, URL-encoded both ways, JSON-escaped, base64 (alone, and the whole Basic value).
    Longest first, so a form that contains another is replaced whole."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update(
            {
                secret,
                quote(secret, safe=""),
                quote_plus(secret, safe=""),
                quote(secret),
                quote_plus(secret),
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                base64.b64encode(secret.encode("utf-8")).decode("ascii").rstrip("="),
            }
        )
    authorization = request.headers.get("Authorization", "") if request is not None else ""
    if authorization.startswith("Basic "):
        forms.add(authorization[len("Basic ") :].rstrip("="))
    return tuple(sorted(forms, key=len, reverse=True))


# --------------------------------------------------------------------------- pure: the answer


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


def _scrub(text: str, secrets: Iterable[str], limit: int = 300) -> str:
    """Server text fit for a log line: one line, bounded, and no secret of ours in it.

    ``secrets`` are the :func:`secret_forms`. They are replaced *before* the text is cut,
    so a cut can never leave half a secret; a text that ends in the first characters of
    one (an echo the server itself cut short) loses that end too.
    """
    forms = tuple(f for f in secrets if f)
    for form in forms:
        text = text.replace(form, "[redacted]")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    cut = len(text) > limit
    text = text[:limit]
    for form in forms:
        for size in range(min(len(form) - 1, len(text)), 3, -1):
            if text.endswith(form[:size]):
                text = text[:-size] + "[redacted]"
                break
    return text + "…" if cut else text


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
            retryable=False,
            status=status,
        )
    retryable = status >= 500 or status in RETRYABLE_STATUS or error in RETRYABLE_ERRORS
    label = error or _status_label(status)
    message = f"{label} (HTTP {status})"
    if description:
        message += f": {description}"
    elif not error and body and not data:
        message += ": " + _scrub(body.decode("utf-8", "replace"), secrets, limit=120)
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
) -> Token:
    """Validate a 2xx token response. A malformed one is an error no retry will fix."""

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
    if isinstance(value, str) and _ASCII_SECONDS.fullmatch(value.strip()):
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
    style: Style  # what worked, remembered for client_auth / request_format = "auto"


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
        learned: Style | None = None,
    ) -> TokenResponse:
        """A new token: by the refresh grant when there is a refresh token, else by client
        credentials. A refresh token the server refuses is dropped and client credentials
        are used at once; a retryable failure is raised, to be retried later."""
        if refresh_token is not None and cred.use_refresh_token:
            try:
                answer = self._request(cred, client_id, client_secret, refresh_token, learned)
            except TokenRequestError as exc:
                if exc.retryable:
                    raise
                # invalid_grant is the normal end of a refresh token's life; anything else
                # (a bad client, say) will likely fail the fallback too, and is worth a look.
                level = logging.INFO if exc.error == "invalid_grant" else logging.WARNING
                log.log(
                    level, "%s: refresh token refused (%s); asking with client credentials", cred.name, exc
                )
            else:
                if answer.token.refresh_token is None:
                    # RFC 6749 §6: no new refresh token means keep using the old one.
                    answer = TokenResponse(_with_refresh(answer.token, refresh_token), answer.style)
                return answer
        return self._request(cred, client_id, client_secret, None, learned)

    def _request(
        self,
        cred: CredentialConfig,
        client_id: str,
        client_secret: str,
        refresh_token: str | None,
        learned: Style | None,
    ) -> TokenResponse:
        """One token request, in as many styles as the settings allow and the answers ask
        for (at most one per style), starting with the one that worked last time."""
        auths = auth_order(cred.client_auth, learned.auth if learned else None)
        wires = wire_order(cred.request_format, learned.wire if learned else None)
        style: Style | None = Style(auths[0], wires[0])
        failed: list[tuple[Style, TokenRequestError]] = []
        while style is not None:
            request = build_request(
                cred,
                client_id=client_id,
                client_secret=client_secret,
                style=style,
                refresh_token=refresh_token,
            )
            secrets = secret_forms((client_secret, refresh_token or ""), request)
            try:
                return TokenResponse(self._send(cred, request, secrets), style)
            except TokenRequestError as exc:
                failed.append((style, exc))
                tried = [done for done, _ in failed]
                style = next_style(style, exc, auths, wires, tried)
                if style is not None:
                    log.info("%s: %s refused (%s); trying %s", cred.name, tried[-1], exc, style)
        raise final_error(failed, hint=basic_hint(cred, client_id, client_secret))

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

    def _exchange(
        self,
        cred: CredentialConfig,
        request: TokenRequest,
        secrets: tuple[str, ...],
        sent_at: float,
        deadline: float,
    ) -> Token:
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
                f"{_scrub(str(exc), secrets, 160)}",
                retryable=False,
            ) from None
        except requests.exceptions.Timeout:
            raise TokenRequestError(f"no answer within {cred.timeout:g}s", retryable=True) from None
        except requests.exceptions.ConnectionError as exc:
            if _cut_off():  # our deadline shut the socket
                raise TokenRequestError(
                    f"no complete answer within {cred.timeout:g}s", retryable=True
                ) from None
            raise TokenRequestError(f"cannot connect: {_connection_reason(exc)}", retryable=True) from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise TokenRequestError(
                f"request failed: {_scrub(str(exc), secrets, 160)}", retryable=False
            ) from None
        with response:
            body = _read_capped(response, deadline, cred.timeout)
        if _cut_off():  # what arrived is the part before our deadline, not an answer
            raise TokenRequestError(f"no complete answer within {cred.timeout:g}s", retryable=True)
        if 200 <= response.status_code < 300:
            return parse_token_response(
                body, sent_at=sent_at, status=response.status_code, default_expires_in=cred.default_expires_in
            )
        raise classify_failure(response.status_code, response.headers, body, now=time.time(), secrets=secrets)


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


def basic_hint(cred: CredentialConfig, client_id: str, client_secret: str) -> str:
    """For plain ``basic`` only: a server that does not decode Basic credentials refuses
    an id or secret that the RFC's encoding changed. Say so, rather than "wrong secret"."""
    if cred.client_auth != "basic" or not basic_encoding_changes(client_id, client_secret):
        return ""
    return (
        "; the client id or secret holds characters that Basic auth must percent-encode "
        '(RFC 6749 §2.3.1), and some servers do not decode them: try client_auth = "body" '
        'or "auto"'
    )


def _read_capped(response: requests.Response, deadline: float, timeout: float) -> bytes:
    """The body, refusing more than 1 MiB or a server that trickles past the timeout."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise TokenRequestError(
            f"response body of {int(length)} bytes is over the 1 MiB cap",
            retryable=False,
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(16384):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise TokenRequestError(
                    "response body is over the 1 MiB cap", retryable=False, status=response.status_code
                )
            if time.monotonic() > deadline:
                raise TokenRequestError(
                    f"response not complete within {timeout:g}s", retryable=True, status=response.status_code
                )
            chunks.append(chunk)
    except requests.exceptions.RequestException as exc:
        if _cut_off():  # our deadline shut the socket mid-body
            raise TokenRequestError(
                f"response not complete within {timeout:g}s", retryable=True, status=response.status_code
            ) from None
        raise TokenRequestError(
            f"response cut short: {type(exc).__name__}", retryable=True, status=response.status_code
        ) from None
    return b"".join(chunks)


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "Connection reset",
        "Temporary failure in name resolution",
        "Network is unreachable",
        "RemoteDisconnected",
    ):
        if marker in text:
            return marker
    return type(exc).__name__


def _with_refresh(token: Token, refresh_token: str) -> Token:
    return Token(
        token.access_token, token.expires_at, token.obtained_at, token.token_type, token.scope, refresh_token
    )
