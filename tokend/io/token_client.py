"""Send token requests: the thin IO edge around :mod:`tokend.core.token_request`.

One :class:`TokenClient` (one ``requests.Session``) per worker thread. The protocol builds
each request and judges each answer; :mod:`tokend.io.http` bounds each exchange by the
credential's ``timeout``; this module sends, reads at most 1 MiB, and turns every transport
failure into a :class:`~tokend.core.token_response.TokenRequestError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import requests

from tokend.config import CredentialConfig, shown_url
from tokend.core import policy
from tokend.core.assertion import PlatformAssertion, assertion_expired, expires_before
from tokend.core.dpop import error_code, nonce_request
from tokend.core.scrub import scrub, secret_forms
from tokend.core.styles import auth_order, basic_hint, final_error, next_style, wire_order
from tokend.core.timestamps import rfc3339
from tokend.core.token_request import ExchangeTokens, Style, TokenRequest, build_request
from tokend.core.token_response import (
    MAX_BODY_BYTES,
    TokenRequestError,
    classify_failure,
    parse_token_response,
)
from tokend.core.tokens import Token
from tokend.io.http import DeadlineExceeded, NoNetrc, deadline_session

if TYPE_CHECKING:
    from tokend.core.discovery import Discovered
    from tokend.io.assertion import SigningKey, TlsIdentity
    from tokend.io.dpop import DpopKey

log = logging.getLogger("tokend.oauth")

# The OAuth errors that refuse the client itself (RFC 6749 §5.2), whatever the grant.
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
NO_PROXY = ("http", "https", "all")  # named as None for plain http: no proxy at all


@dataclass(frozen=True)
class KeyAuth:
    """What a request authenticates with besides a secret, read at request time: the key
    that signs client assertions, the client certificate."""

    signer: SigningKey | None = None
    tls: TlsIdentity | None = None
    platform: PlatformAssertion | None = None  # client_assertion_file's JWT, as read now
    platform_file: Path | None = None  # where it was read from, for errors and warnings
    dpop: DpopKey | None = None  # the key DPoP proofs are signed with (RFC 9449)
    exchange: ExchangeTokens | None = None  # token exchange's subject (and actor) token, read now
    exchange_jwts: tuple[tuple[Path, PlatformAssertion], ...] = ()  # those that are JWTs, by file
    grant_file: tuple[Path, PlatformAssertion] | None = None  # jwt_bearer's assertion_file, read now


def key_auth(cred: CredentialConfig, environ: Mapping[str, str] | None = None) -> KeyAuth:
    """Read the credential's keys and certificate now (a rotated file is used at once).
    Raises ConfigError; imports nothing for a credential without them."""
    keys = _key_auth(cred, environ)
    if cred.grant_type == "token_exchange":
        from tokend.io.platform_token import read_exchange_tokens

        exchange, jwts = read_exchange_tokens(cred, environ)
        keys = dataclasses.replace(keys, exchange=exchange, exchange_jwts=jwts)
    if cred.assertion is not None:
        import os

        from tokend.io.platform_token import read_jwt_file

        grant = read_jwt_file(cred, cred.assertion, os.environ if environ is None else environ)
        keys = dataclasses.replace(keys, grant_file=grant, exchange_jwts=(*keys.exchange_jwts, grant))
    if cred.dpop_key is None:
        return keys
    from tokend.io.dpop import credential_key

    return dataclasses.replace(keys, dpop=credential_key(cred))


def _key_auth(cred: CredentialConfig, environ: Mapping[str, str] | None) -> KeyAuth:
    platform, platform_file = None, None
    if cred.client_assertion is not None:
        from tokend.io.platform_token import read_platform_assertion

        platform_file, platform = read_platform_assertion(cred, environ)
    if cred.private_key is None and cred.tls_cert_file is None:
        return KeyAuth(platform=platform, platform_file=platform_file)
    from tokend.io.assertion import signing_key, tls_identity

    signer = signing_key(cred, environ) if cred.private_key is not None else None
    tls = tls_identity(cred) if cred.tls_cert_file is not None else None
    return KeyAuth(signer, tls, platform, platform_file)


def unexpired_platform_assertion(keys: KeyAuth, now: float) -> None:
    """Refuse to send the platform's JWT (a client assertion, a token exchange's subject or
    actor token) past its ``exp``: the IdP would refuse it, and the request would cost a
    round trip and a log line at the IdP. Not retryable by waiting: the retry comes when
    the file changes (it is watched), or at the cap."""
    judged = [("client assertion", keys.platform_file, keys.platform)] if keys.platform else []
    judged += [("token", path, jwt) for path, jwt in keys.exchange_jwts]
    for what, path, jwt in judged:
        if jwt is None or not assertion_expired(jwt, now):
            continue
        exp = jwt.exp or 0
        raise TokenRequestError(
            f"{path}: the {what} expired at {rfc3339(exp)} (exp {exp}); "
            "not sent: waiting for the platform to write a fresh one",
            retryable=False,
        )


@dataclass(frozen=True)
class TokenResponse:
    token: Token
    style: Style  # what worked, remembered for client_auth / request_format = "auto"


class TokenClient:
    """Sends token requests. Not thread-safe: use one per worker thread.

    ``clock`` is the wall clock that tokens and ``Retry-After`` dates are read by (tests
    pass a fake one); the timeout is measured by the monotonic clock regardless.
    """

    def __init__(
        self, session: requests.Session | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.session = deadline_session(session)
        self.clock = clock

    def close(self) -> None:
        self.session.close()

    def obtain(
        self,
        cred: CredentialConfig,
        *,
        client_id: str,
        client_secret: str | None,
        refresh_token: str | None = None,
        learned: Style | None = None,
        state_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TokenResponse:
        """A new token: by the refresh grant when there is a refresh token, else by client
        credentials. A refresh token the server refuses is dropped and client credentials
        are used at once; a retryable failure is raised, to be retried later.

        The private key and client certificate are read now (ConfigError if they cannot
        be); a credential with an ``issuer`` finds its token endpoint by discovery, its
        metadata kept in ``state_dir``, and fetched again if the endpoint answers 404."""
        keys = key_auth(cred, environ)
        unexpired_platform_assertion(keys, self.clock())
        answer = self._obtain_from(cred, client_id, client_secret, refresh_token, learned, keys, state_dir)
        if keys.platform is not None:
            token = answer.token
            planned = policy.refresh_due_at(
                token, refresh_at=cred.refresh_at, min_ttl_margin=cred.min_ttl_margin
            )
            if expires_before(keys.platform, planned):
                log.warning(
                    "%s: the client assertion in %s expires at %s, before the next refresh at %s; "
                    "the platform must have written a fresh one by then",
                    cred.name,
                    keys.platform_file,
                    rfc3339(keys.platform.exp or 0),
                    rfc3339(planned),
                )
        return answer

    def _obtain_from(
        self,
        cred: CredentialConfig,
        client_id: str,
        client_secret: str | None,
        refresh_token: str | None,
        learned: Style | None,
        keys: KeyAuth,
        state_dir: Path | None,
    ) -> TokenResponse:
        """:meth:`obtain` at the configured endpoint, or the discovered one (again on a 404)."""
        if cred.issuer is None:
            return self._obtain(cred, client_id, client_secret, refresh_token, learned, keys, None)
        found, fetched = self.discover(cred, state_dir, tls=keys.tls)
        if keys.dpop is not None and found.dpop_algs is not None:
            # RFC 9449 §5.1: the key's algorithm must be one the server takes (ConfigError).
            from tokend.io.dpop import credential_key

            keys = dataclasses.replace(keys, dpop=credential_key(cred, found.dpop_algs))
        endpoint = found.endpoint(mtls=keys.tls is not None)
        try:
            return self._obtain(cred, client_id, client_secret, refresh_token, learned, keys, endpoint)
        except TokenRequestError as exc:
            if exc.status != 404 or fetched:
                raise
            found, _ = self.discover(cred, state_dir, refresh=True, tls=keys.tls)
            moved = found.endpoint(mtls=keys.tls is not None)
            if moved == endpoint:
                raise
            log.info(
                "%s: %s answered 404; the issuer's metadata now says %s",
                cred.name,
                shown_url(endpoint),
                shown_url(moved),
            )
            return self._obtain(cred, client_id, client_secret, refresh_token, learned, keys, moved)

    def discover(
        self,
        cred: CredentialConfig,
        state_dir: Path | None,
        *,
        refresh: bool = False,
        tls: TlsIdentity | None = None,
    ) -> tuple[Discovered, bool]:
        """The issuer's metadata (see :mod:`tokend.io.discovery`), and whether it is new.
        ``tls``: the client certificate (see :func:`key_auth`), presented to the issuer
        too: a server that demands one on every connection answers nothing without it."""
        from tokend.io.discovery import discover

        return discover(
            cred, lambda url: self._get(cred, url, tls), state_dir, now=self.clock(), refresh=refresh
        )

    def _obtain(
        self,
        cred: CredentialConfig,
        client_id: str,
        client_secret: str | None,
        refresh_token: str | None,
        learned: Style | None,
        keys: KeyAuth,
        endpoint: str | None,
    ) -> TokenResponse:
        """The refresh grant, then client credentials, at ``endpoint`` (else token_url)."""
        if refresh_token is not None and cred.use_refresh_token:
            try:
                answer = self._request(cred, client_id, client_secret, refresh_token, learned, keys, endpoint)
            except TokenRequestError as exc:
                if exc.retryable:
                    raise
                # invalid_grant is the normal end of a refresh token's life; anything else
                # (a bad client, say) will likely fail the fallback too, and is worth a look.
                level = logging.INFO if exc.error == "invalid_grant" else logging.WARNING
                # A wrong secret is the client refused, not its refresh token: say which.
                refused = (
                    "the client was refused on the refresh grant"
                    if exc.error in CLIENT_ERRORS
                    else "refresh token refused"
                )
                log.log(level, "%s: %s (%s); asking with client credentials", cred.name, refused, exc)
            else:
                if answer.token.refresh_token is None:
                    # RFC 6749 §6: no new refresh token means keep using the old one.
                    kept = dataclasses.replace(answer.token, refresh_token=refresh_token)
                    answer = TokenResponse(kept, answer.style)
                return answer
        return self._request(cred, client_id, client_secret, None, learned, keys, endpoint)

    def _request(
        self,
        cred: CredentialConfig,
        client_id: str,
        client_secret: str | None,
        refresh_token: str | None,
        learned: Style | None,
        keys: KeyAuth,
        endpoint: str | None,
    ) -> TokenResponse:
        """One token request, in as many styles as the settings allow and the answers ask
        for (at most one per style), starting with the one that worked last time."""
        auths = auth_order(cred.client_auth, learned.auth if learned else None)
        wires = wire_order(cred.request_format, learned.wire if learned else None)
        style: Style | None = Style(auths[0], wires[0])
        failed: list[tuple[Style, TokenRequestError]] = []
        while style is not None:
            assertion = None
            if style.auth == "private_key_jwt" and keys.signer is not None:
                audience = cred.assertion_audience or endpoint or cred.token_url or ""
                assertion = keys.signer.sign(client_id, audience, now=self.clock())
            elif style.auth == "private_key_jwt" and keys.platform is not None:
                assertion = keys.platform.value  # the platform signed it; sent as read
            grant = None
            if cred.grant_type == "jwt_bearer" and refresh_token is None:
                grant = self._grant_assertion(cred, client_id, keys, endpoint)
            request = build_request(
                cred,
                client_id=client_id,
                client_secret=client_secret,
                style=style,
                refresh_token=refresh_token,
                token_url=endpoint,
                client_assertion=assertion,
                exchange=keys.exchange,
                grant_assertion=grant,
            )
            exchanged = (
                (keys.exchange.subject_token, keys.exchange.actor_token or "") if keys.exchange else ()
            )
            secrets = secret_forms(
                (client_secret or "", refresh_token or "", assertion or "", grant or "", *exchanged), request
            )
            try:
                return TokenResponse(self._send(cred, request, secrets, keys.tls, keys.dpop), style)
            except TokenRequestError as exc:
                failed.append((style, exc))
                tried = [done for done, _ in failed]
                style = next_style(style, exc, auths, wires, tried)
                if style is not None:
                    log.info("%s: %s refused (%s); trying %s", cred.name, tried[-1], exc, style)
        raise final_error(failed, hint=basic_hint(cred, client_id, client_secret))

    def _grant_assertion(
        self, cred: CredentialConfig, client_id: str, keys: KeyAuth, endpoint: str | None
    ) -> str:
        """The JWT-bearer grant's JWT: the file's, as read, or one signed now with the key."""
        if keys.grant_file is not None:
            return keys.grant_file[1].value
        if keys.signer is None:
            raise TokenRequestError(
                "the JWT-bearer grant has no JWT: no assertion_file, no key", retryable=False
            )
        audience = cred.assertion_audience or endpoint or cred.token_url or ""
        return keys.signer.sign_grant(
            client_id,
            cred.assertion_subject or client_id,
            audience,
            scope=cred.scope_string if cred.assertion_scope_claim else None,
            now=self.clock(),
        )

    def _send(
        self,
        cred: CredentialConfig,
        request: TokenRequest,
        secrets: tuple[str, ...],
        tls: TlsIdentity | None = None,
        dpop: DpopKey | None = None,
    ) -> Token:
        """One exchange, judged: a token, or the error the answer amounts to. With DPoP,
        the request carries a fresh proof with the server's newest nonce, and a server
        that asks for a (new) nonce is asked once more with it (RFC 9449 §8)."""
        for asked_again in (False, True):
            sent = request
            if dpop is not None:
                from tokend.io.dpop import NONCES

                proof = dpop.proof("POST", request.url, nonce=NONCES.get(request.url), now=self.clock())
                sent = dataclasses.replace(request, headers={**request.headers, "DPoP": proof})
                secrets = (*secrets, proof)
            sent_at = self.clock()  # expires_at counts from here, so it errs early, never late
            status, headers, body = self._exchange(cred, sent, secrets, tls)
            if dpop is not None:
                from tokend.io.dpop import NONCES

                NONCES.note(request.url, headers)  # a server may give the next nonce in any answer
            if 200 <= status < 300:
                return parse_token_response(
                    body,
                    sent_at=sent_at,
                    status=status,
                    default_expires_in=cred.default_expires_in,
                    assume_token_type=cred.token_type,
                    dpop=dpop is not None,
                    dpop_allow_bearer=cred.dpop_allow_bearer,
                )
            if dpop is not None and not asked_again and nonce_request(status, headers, error_code(body)):
                log.info("%s: the token endpoint asked for a DPoP nonce; asking again with it", cred.name)
                continue
            break
        raise classify_failure(status, headers, body, now=self.clock(), secrets=secrets)

    def _http(
        self,
        method: str,
        request: TokenRequest,
        headers: Mapping[str, str],
        timeout: float,
        verify: bool | str,
        cert: str | tuple[str, str] | None,
    ) -> requests.Response:
        # Plain http is allowed only because it stays on this machine (or the operator said
        # so): an $HTTP_PROXY must not carry the secret elsewhere. So for it the session
        # does not trust the environment: requests merges in no proxy it names (ALL_PROXY
        # included), no CA bundle (of no use to http) and no ~/.netrc (NoNetrc refuses it
        # anyway), and it does not scan os.environ three times a request to find out. The
        # session's own proxies, if any, are named as None. (One session per thread.)
        session = self.session
        plain = request.url.lower().startswith("http://")
        trusted = session.trust_env
        session.trust_env = trusted and not plain
        try:
            return session.request(
                method,
                request.url,
                data=request.body or None,
                headers=headers,
                timeout=timeout,  # the whole exchange: see tokend.io.http
                verify=verify,
                cert=cert,
                allow_redirects=False,
                stream=True,
                auth=NoNetrc(),
                proxies=cast("MutableMapping[str, str]", dict.fromkeys((*session.proxies, *NO_PROXY)))
                if plain
                else None,
            )
        finally:
            session.trust_env = trusted

    def _get(self, cred: CredentialConfig, url: str, tls: TlsIdentity | None = None) -> tuple[int, bytes]:
        """GET (discovery's metadata) within ``cred.timeout``: status and body, or raise."""
        status, _, body = self._exchange(
            cred, TokenRequest(url, {"Accept": "application/json"}, b""), (), tls, method="GET"
        )
        return status, body

    def _exchange(
        self,
        cred: CredentialConfig,
        request: TokenRequest,
        secrets: tuple[str, ...],
        tls: TlsIdentity | None = None,
        *,
        method: str = "POST",
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send the request and read the whole answer within ``cred.timeout``, or raise.

        With a client certificate the connection is not kept: TLS authenticates the
        client once per connection, and a certificate rotated on disk must be the one
        the next request presents (read and checked for each request, and handed to ssl
        as those very bytes)."""
        verify: bool | str = str(cred.ca_bundle) if cred.ca_bundle else True
        headers = dict(request.headers)
        if tls is not None:
            headers["Connection"] = "close"
        try:
            with tls.requests_cert() if tls is not None else contextlib.nullcontext(None) as cert:
                response = self._http(method, request, headers, cred.timeout, verify, cert)
        except DeadlineExceeded as exc:
            what = "no complete answer" if exc.received else "no answer"
            raise TokenRequestError(f"{what} within {cred.timeout:g}s", retryable=True) from None
        except requests.exceptions.SSLError as exc:
            what = "TLS failed" if tls is not None else "TLS verification failed"
            raise TokenRequestError(
                f"{what} for {request.url} (set ca_bundle for a private CA"
                f"{'; is the client certificate one the server accepts?' if tls is not None else ''}): "
                f"{scrub(str(exc), secrets, 160)}",
                retryable=False,
            ) from None
        except requests.exceptions.Timeout:
            raise TokenRequestError(f"no answer within {cred.timeout:g}s", retryable=True) from None
        except requests.exceptions.ConnectionError as exc:
            raise TokenRequestError(f"cannot connect: {_connection_reason(exc)}", retryable=True) from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise TokenRequestError(
                f"request failed: {scrub(str(exc), secrets, 160)}", retryable=False
            ) from None
        with response:
            body = _read_capped(response, cred.timeout)
        return response.status_code, response.headers, body


def _read_capped(response: requests.Response, timeout: float) -> bytes:
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
            chunks.append(chunk)
    except DeadlineExceeded:
        raise TokenRequestError(
            f"response not complete within {timeout:g}s", retryable=True, status=response.status_code
        ) from None
    except requests.exceptions.RequestException as exc:
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
