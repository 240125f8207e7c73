"""The OAuth2 token request as data: build it, judge the answer, choose what to try next.

Pure functions only, no IO: :mod:`tokend.io.token_client` sends what :func:`build_request`
builds and hands the answer to :func:`parse_token_response` or :func:`classify_failure`.
Every failure becomes a :class:`TokenRequestError` that says whether a retry can help,
carries the server's OAuth ``error`` / ``error_description`` and never the client secret.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus, urlencode

from tokend import __version__
from tokend.core.tokens import Token, unsafe_reason, valid_token_type

if TYPE_CHECKING:  # annotations only: the protocol needs no part of config at run time
    from tokend.config.schema import AuthStyle, ClientAuth, CredentialConfig, RequestFormat, WireFormat

MAX_BODY_BYTES = 1024 * 1024
MAX_EXPIRES_IN = 366 * 86400

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
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; RFC 7523 wants it short, the issue at most 5 minutes


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
    client_secret: str | None,
    style: Style,
    refresh_token: str | None = None,
    token_url: str | None = None,
    client_assertion: str | None = None,
) -> TokenRequest:
    """The request for ``style``: ``token_url`` is the discovered endpoint when the
    credential names an issuer; ``client_assertion`` the signed JWT of private_key_jwt."""
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
    if style.auth == "private_key_jwt":
        if client_assertion is None:
            raise ValueError("private_key_jwt needs a client assertion")
        # RFC 7523 §2.2; client_id too (RFC 7521 §4.2 allows it, Entra ID wants it).
        params += [
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", client_assertion),
        ]
    elif style.auth == "tls_client_auth":
        params.append(("client_id", client_id))  # RFC 8705 §2: the certificate does the rest
    elif client_secret is None:
        raise ValueError(f"{style.auth} auth needs a client secret")
    elif style.auth == "basic":
        headers["Authorization"] = basic_credentials(client_id, client_secret)
    else:
        params += [("client_id", client_id), ("client_secret", client_secret)]
    if style.wire == "json":
        headers["Content-Type"] = "application/json"
        body = json.dumps(json_params(params)).encode("utf-8")
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(params).encode("ascii")  # a repeated name is sent repeated
    url = token_url or cred.token_url
    if url is None:
        raise ValueError("no token endpoint: discover it from the issuer first")
    return TokenRequest(url, headers, body)


def json_params(params: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    """A JSON body: a name given more than once becomes an array (RFC 8707 ``resource``)."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in grouped.items()}


def secret_forms(secrets: Iterable[str], request: TokenRequest | None = None) -> tuple[str, ...]:
    """Every form in which a secret of ours may come back in a server's error text:
    plain, URL-encoded both ways, JSON-escaped, HTML-escaped (an error page echoing the
    request), base64 (alone, and the whole Basic value). Longest first, so a form that
    contains another is replaced whole."""
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
                html.escape(secret),
                html.escape(secret, quote=False),
                html.escape(quote_plus(secret, safe="")),
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


def scrub(text: str, secrets: Iterable[str], limit: int = 300) -> str:
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
) -> Token:
    """Validate a 2xx token response. A malformed one is an error no retry will fix.
    ``assume_token_type`` (the credential's ``token_type``) replaces whatever type the
    server named, for servers known to mislabel their tokens."""

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
    if assume_token_type is not None:
        token_type = assume_token_type
    elif token_type.lower() == "bearer":
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


# --------------------------------------------------------------------------- pure: what to try next


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


# --------------------------------------------------------------------------- pure: key-based client auth


class KeyMismatch(ValueError):
    """A signing algorithm that the key cannot sign with (the message names neither key nor content)."""


# The family each algorithm needs, and for EC the curve: ES256 is P-256 only (RFC 7518 §3.4).
_ALG_FAMILY: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_DEFAULT_ALG: Mapping[tuple[str, str | None], str] = {
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
}


def signing_alg(family: str, curve: str | None, configured: str | None) -> str:
    """The JWS algorithm for a key of ``family`` ("RSA", "EC", "OKP") and ``curve``
    (P-256, P-384, P-521 for EC): the configured one if the key can sign with it, else
    the key's natural one (RS256, ES256/ES384/ES512 by curve, EdDSA). Raises KeyMismatch."""
    if configured is not None:
        want_family, want_curve = _ALG_FAMILY.get(configured, ("?", None))
        if want_family != family or (want_curve is not None and want_curve != curve):
            key = f"an {family} key" if family in ("RSA", "EC") else f"a {family} key"
            if curve is not None:
                key += f" on {curve}"
            raise KeyMismatch(f"signing_alg {configured} cannot be used with {key}")
        return configured
    if family == "RSA":
        return "RS256"
    if family == "OKP":
        return "EdDSA"
    alg = _DEFAULT_ALG.get((family, curve))
    if alg is None:
        raise KeyMismatch(f"no JWS algorithm signs with a {family} key on {curve or 'this curve'}")
    return alg


def assertion_claims(client_id: str, audience: str, *, now: float, jti: str) -> dict[str, object]:
    """RFC 7523 §3 claims of a client assertion: issued by and about the client, for the
    token endpoint (or the audience the IdP asks for), once (``jti``), briefly."""
    issued = int(now)
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }


# --------------------------------------------------------------------------- pure: discovery


DISCOVERY_MAX_AGE = 86400.0  # metadata is fetched again after a day (or on a 404)
# What each client_auth is called in token_endpoint_auth_methods_supported.
AUTH_METHOD_NAMES: Mapping[str, tuple[str, ...]] = {
    "basic": ("client_secret_basic",),
    "body": ("client_secret_post",),
    "auto": ("client_secret_basic", "client_secret_post"),
    "private_key_jwt": ("private_key_jwt",),
    "tls_client_auth": ("tls_client_auth",),
}


@dataclass(frozen=True)
class Discovered:
    """What tokend uses of an authorization server's metadata (RFC 8414 §2)."""

    issuer: str
    token_endpoint: str
    mtls_token_endpoint: str | None = None
    auth_methods: tuple[str, ...] | None = None  # token_endpoint_auth_methods_supported
    signing_algs: tuple[str, ...] | None = None  # token_endpoint_auth_signing_alg_values_supported

    def endpoint(self, *, mtls: bool) -> str:
        """RFC 8705 §5: with a client certificate, the mTLS alias when there is one."""
        return self.mtls_token_endpoint if mtls and self.mtls_token_endpoint else self.token_endpoint

    def to_dict(self) -> dict[str, object]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "mtls_endpoint_aliases": {"token_endpoint": self.mtls_token_endpoint}
            if self.mtls_token_endpoint
            else {},
            "token_endpoint_auth_methods_supported": self.auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": self.signing_algs,
        }


class BadMetadata(ValueError):
    """Metadata that cannot be used: not for this issuer, or without a token endpoint."""


def well_known_urls(issuer: str) -> tuple[str, ...]:
    """Where the metadata may be, in order: OpenID Connect Discovery's (appended to the
    issuer), RFC 8414's (inserted between host and path), and the appended RFC 8414 form
    that some servers use for an issuer with a path."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = issuer.rstrip("/")
    urls = [
        f"{base}/.well-known/openid-configuration",
        urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", "")),
        f"{base}/.well-known/oauth-authorization-server",
    ]
    return tuple(dict.fromkeys(urls))


MAX_METADATA_NAMES = 32  # of a list in the metadata: more is a server to distrust, not to print
MAX_METADATA_NAME = 64


def _strings(value: object) -> tuple[str, ...] | None:
    """A metadata list of names (auth methods, algorithms): only the names that are
    printable ASCII words, at most 32 of them. They end up on a terminal (``check
    --online``) and in logs, and a name with an escape sequence in it is no name."""
    if not isinstance(value, list):
        return None
    names = (
        v
        for v in value
        if isinstance(v, str) and 0 < len(v) <= MAX_METADATA_NAME and all("!" <= c <= "~" for c in v)
    )
    return tuple(itertools.islice(names, MAX_METADATA_NAMES))


def parse_metadata(data: object, issuer: str) -> Discovered:
    """Judge a metadata document for ``issuer``. The issuer in it must be the configured
    one *exactly* (RFC 8414 §3.3, OIDC Discovery §4.3): metadata served for another
    issuer (a mix-up, a hostile host) must never give tokend a token endpoint."""
    if not isinstance(data, dict):
        raise BadMetadata("the metadata is not a JSON object")
    found = data.get("issuer")
    if found != issuer:
        shown = repr(found)[:120] if isinstance(found, str) else "none"
        raise BadMetadata(f"the metadata is for issuer {shown}, not {issuer!r}")
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BadMetadata("the metadata names no token_endpoint")
    aliases = data.get("mtls_endpoint_aliases")
    mtls = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
    return Discovered(
        issuer=issuer,
        token_endpoint=endpoint,
        mtls_token_endpoint=mtls if isinstance(mtls, str) and mtls else None,
        auth_methods=_strings(data.get("token_endpoint_auth_methods_supported")),
        signing_algs=_strings(data.get("token_endpoint_auth_signing_alg_values_supported")),
    )


def metadata_is_stale(fetched_at: float, now: float) -> bool:
    """Fetched more than a day ago (or in the future: a clock that was wrong)."""
    return not fetched_at <= now < fetched_at + DISCOVERY_MAX_AGE


def discovery_warnings(found: Discovered, client_auth: str, alg: str | None = None) -> list[str]:
    """What the metadata says this credential's settings will not get: worth a warning,
    not a refusal (the list is optional and servers accept more than they advertise)."""
    warnings = []
    names = AUTH_METHOD_NAMES.get(client_auth, (client_auth,))
    if found.auth_methods is not None and not any(name in found.auth_methods for name in names):
        supported = ", ".join(found.auth_methods) or "none"
        warnings.append(
            f'client_auth = "{client_auth}" ({" or ".join(names)}) is not in the issuer\'s '
            f"token_endpoint_auth_methods_supported ({supported})"
        )
    if alg is not None and found.signing_algs is not None and alg not in found.signing_algs:
        warnings.append(
            f"signing alg {alg} is not in the issuer's token_endpoint_auth_signing_alg_values_supported "
            f"({', '.join(found.signing_algs) or 'none'})"
        )
    return warnings
