"""The injecting reverse proxy of one ``[[credentials.NAME.proxy]]``, as an aiohttp application.

Each request goes to the upstream with its path and query as they came, hop-by-hop headers
and the caller's own ``Authorization`` dropped, and ``Authorization: Bearer <token>`` added
(:func:`~tokend.core.local_access.forwarded_headers`). Bodies stream both ways in chunks,
with backpressure: memory stays bounded whatever their size. One pooled client session per
proxy keeps upstream connections alive; it never follows a redirect (a token is never sent
where the config did not say), never takes a proxy from the environment, and verifies TLS
(the credential's ``ca_bundle`` for a private CA). The client is
:mod:`tokend.io.upstream_client` (llhttp on asyncio protocols), the server aiohttp's.

It is a reverse proxy only: an absolute-form target (``GET http://x/``), ``CONNECT``, an
asterisk, and over TCP a ``Host`` other than the listen address or a forwarded request are
refused, so it is never an open proxy. An upstream's 401 that says the token is invalid
asks the daemon for a new one (coalesced by the board) and replays the request once if it
had no body or a small one held in memory; otherwise the 401 passes. An upstream that
cannot be reached is a 502 with a JSON error that holds no token.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from tokend.config import ConfigError, CredentialConfig
from tokend.config.schema import Listen
from tokend.core.dpop import nonce_request
from tokend.core.local_access import (
    VIA,
    Board,
    error_body,
    forwarded_headers,
    invalid_token,
    loggable_path,
    proxy_refusal,
    response_headers,
    retry_after,
    tcp_refusal,
)
from tokend.core.tokens import Token, authorization_scheme
from tokend.io.dpop import NONCES, DpopKey, credential_key
from tokend.io.local_http import Changes
from tokend.io.upstream_client import CertificateError, UpstreamError, UpstreamPool, UpstreamResponse

access_log = logging.getLogger("tokend.access")
log = logging.getLogger("tokend.proxy")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REPLAY_LIMIT = 64 * 1024  # a body up to this is held in memory, so a refused token's request can be replayed
CHUNK = 64 * 1024
POOL = 100  # upstream connections kept per proxy
CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30.0  # an idle upstream connection is kept this long (nginx closes its own after 75 s)
READ_TIMEOUT = 300.0  # an upstream silent this long mid-answer is given up on
REFRESH_WAIT = 15.0  # how long a refused request waits for the new token
# A caller's body that stalls this long (no byte of an upload comes, or a download's bytes
# are not taken) is cut and its upstream request aborted: a stalled caller never holds one
# of the POOL upstream connections for longer.
BODY_IDLE_TIMEOUT = 30.0


class BodyStalled(Exception):
    """The caller's side of a body went quiet for longer than the body idle timeout."""


def json_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(error, description),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


class RequestMetrics(Protocol):
    """Where the proxy counts its requests (:class:`tokend.io.metrics.Metrics`)."""

    def proxy_request(self, credential: str, status: int, upstream_seconds: float | None) -> None: ...


class Proxy:
    """One proxy: its credential, its upstream and its client session (made on the loop)."""

    def __init__(
        self,
        board: Board,
        changes: Changes,
        credential: str,
        upstream: str,
        listen: Listen,
        *,
        ca_bundle: Path | None = None,
        log_requests: bool = False,
        body_idle_timeout: float = BODY_IDLE_TIMEOUT,
        dpop: CredentialConfig | None = None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        # body_idle_timeout: a keyword for tests, which cut a stalled body in a fraction of a second.
        self.body_idle_timeout = body_idle_timeout
        self.board, self.changes, self.credential = board, changes, credential
        self.upstream = URL(upstream.rstrip("/"))
        self.listen = listen
        self.ca_bundle = ca_bundle
        self.log_requests = log_requests
        self.pool: UpstreamPool | None = None
        # A DPoP credential: each request carries a proof signed by its key (RFC 9449 §7).
        self.dpop_credential = dpop
        self._dpop_key: DpopKey | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=REPLAY_LIMIT, middlewares=[self.guard])
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)  # any path, a decoded newline too
        return app

    async def _open(self, app: web.Application) -> None:
        # Bodies pass as they are (Content-Encoding and all); no proxy is taken from the
        # environment, no redirect is followed, no cookie is kept: one pool serves every
        # caller, and cookies pass through as headers.
        context = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)
        self.pool = UpstreamPool(
            self.upstream,
            ssl_context=context,
            limit=POOL,
            keepalive=KEEPALIVE,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )

    async def _close(self, app: web.Application) -> None:
        if self.pool is not None:
            await self.pool.close()

    # ----------------------------------------------------------------------- a request

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The refusals, before routing has its say (a CONNECT target matches no route)."""
        refused = self.refusal(request)
        if refused is not None:
            if self.metrics is not None:
                self.metrics.proxy_request(self.credential, refused.status, None)
            if self.log_requests:
                access_log.info("%s %s refused %d", self.credential, request.method, refused.status)
            return refused
        return await handler(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        timing: list[float] = []  # the upstream's time to its answer's head, once it answered
        response, token = await self.serve(request, timing)
        if self.metrics is not None:
            self.metrics.proxy_request(self.credential, response.status, timing[-1] if timing else None)
        if self.log_requests:
            access_log.info(
                "%s %s %s %d %.1fms token %s",
                self.credential,
                request.method,
                loggable_path(request.raw_path),  # never the query, never decoded
                response.status,
                (time.monotonic() - started) * 1000,
                token.fingerprint if token else "none",
            )
        return response

    def refusal(self, request: web.Request) -> web.Response | None:
        target = request.raw_path
        if request.method == "TRACE":  # it would echo the injected token to the caller
            return json_error(405, "invalid_request", "TRACE is refused")
        if request.method == "CONNECT" or not target.startswith("/"):
            return json_error(
                400, "invalid_request", "this is a reverse proxy: only origin-form targets (/path)"
            )
        refused = proxy_refusal(target, request.headers.items())
        if refused is not None:
            status, reason = refused
            return json_error(status, "invalid_request" if status == 400 else "loop_detected", reason)
        if self.listen.path is None:
            why = tcp_refusal(request.headers, self.listen.host, self.listen.port, need_flag=False)
            if why is not None:
                return json_error(403, "forbidden", why)
        return None

    async def serve(
        self, request: web.Request, timing: list[float]
    ) -> tuple[web.StreamResponse, Token | None]:
        token = self.board.token(self.credential)
        if token is None:
            return self.no_token(), None
        body: bytes | None = None
        streamed = request.body_exists and (
            request.content_length is None or request.content_length > REPLAY_LIMIT
        )
        if request.body_exists and not streamed:
            try:
                async with asyncio.timeout(self.body_idle_timeout):
                    body = await request.read()
            except TimeoutError:
                return self.stalled(request), None
        for replay in (False, True):
            stalled: list[bool] = []
            try:
                sent = time.monotonic()
                upstream = await self.send(request, token, body, streamed, stalled)
                timing.append(time.monotonic() - sent)
            except ConfigError as exc:  # the DPoP key could not be read: no proof, no request
                log.error("%s: cannot sign a DPoP proof: %s", self.credential, exc)
                return json_error(502, "bad_gateway", "tokend cannot sign a DPoP proof (see its log)"), token
            except (UpstreamError, aiohttp.ClientError, TimeoutError, OSError, BodyStalled) as exc:
                if stalled:  # the caller's upload stalled: the upstream request was aborted
                    return self.stalled(request), token
                return self.unreachable(exc), token
            if self.dpop_credential is not None:
                NONCES.note(str(self.upstream), upstream.headers)
                if not replay and not streamed and nonce_request(upstream.status, upstream.headers):
                    # The resource server wants its nonce in the proof (§9): once more with it.
                    await self.drop(upstream)
                    continue
            if (
                replay
                or streamed
                or not invalid_token(upstream.status, upstream.headers.getall("WWW-Authenticate", []))
            ):
                return await self.relay(request, upstream), token
            # The token was refused: hold this 401 (small), ask for a new token, replay once.
            try:
                held = await upstream.read(REPLAY_LIMIT)
            except (UpstreamError, TimeoutError) as exc:
                upstream.close()
                return self.unreachable(exc), token
            upstream.close() if len(held) >= REPLAY_LIMIT else upstream.release()
            newer = await self.newer_token(token)
            if newer is None:
                return self.whole(upstream, held), token
            token = newer
        raise AssertionError("unreachable")  # pragma: no cover

    async def upload(self, request: web.Request, stalled: list[bool]) -> AsyncIterator[bytes]:
        """The caller's body in chunks, each awaited at most the body idle timeout: a
        stalled upload raises, which aborts the upstream request (and ``stalled`` says so)."""
        while True:
            try:
                async with asyncio.timeout(self.body_idle_timeout):
                    chunk = await request.content.read(CHUNK)
            except TimeoutError:
                stalled.append(True)
                raise BodyStalled from None
            if not chunk:
                return
            yield chunk

    def stalled(self, request: web.Request) -> web.Response:
        """408, and the connection closed: the rest of a stalled body is never read."""
        response = json_error(408, "request_timeout", "the request body stalled; the request was cut")
        response.force_close()
        return response

    async def drop(self, upstream: UpstreamResponse) -> None:
        """An answer not relayed (a nonce request): read it if it is small, so its
        connection can serve again, else close it."""
        try:
            body = await upstream.read(REPLAY_LIMIT)
        except (UpstreamError, TimeoutError):
            body = b"x" * REPLAY_LIMIT
        upstream.close() if len(body) >= REPLAY_LIMIT else upstream.release()

    async def send(
        self, request: web.Request, token: Token, body: bytes | None, streamed: bool, stalled: list[bool]
    ) -> UpstreamResponse:
        assert self.pool is not None
        headers = forwarded_headers(request.headers.items())
        headers.append(("Via", VIA))
        headers.append(("Authorization", f"{authorization_scheme(token.token_type)} {token.access_token}"))
        data: bytes | AsyncIterator[bytes] | None = body
        if streamed:
            data = self.upload(request, stalled)
        target = self.upstream.raw_path.rstrip("/") + request.raw_path
        if self.dpop_credential is not None:
            url = str(self.upstream.with_path("").with_query(None)) + target
            headers = [(name, value) for name, value in headers if name.lower() != "dpop"]
            headers.append(("DPoP", self.proof(request.method, url, token)))
        return await self.pool.request(
            request.method, target, headers, data, request.content_length if streamed else None
        )

    def proof(self, method: str, url: str, token: Token) -> str:
        """A fresh DPoP proof for one upstream request: ``htm``, ``htu`` (no query), ``ath``
        of the token, and the upstream's newest nonce. The key is read once (tokend made it,
        or checked the configured file, when it asked for the token)."""
        if self._dpop_key is None:
            assert self.dpop_credential is not None
            self._dpop_key = credential_key(self.dpop_credential)
        return self._dpop_key.proof(
            method, url, access_token=token.access_token, nonce=NONCES.get(str(self.upstream))
        )

    async def newer_token(self, refused: Token) -> Token | None:
        """Ask the board for a token other than ``refused`` and wait for it (bounded)."""
        self.board.refresh(self.credential, refused.access_token)
        deadline = time.monotonic() + REFRESH_WAIT
        while True:
            current = self.board.token(self.credential)
            if current is not None and current.access_token != refused.access_token:
                return current
            left = deadline - time.monotonic()
            if left <= 0 or not self.board.pending(self.credential):
                return None
            await self.changes.wait(self.credential, left)

    async def relay(self, request: web.Request, upstream: UpstreamResponse) -> web.StreamResponse:
        """The upstream's answer, streamed to the caller; a caller gone mid-stream, or one
        that takes no byte for the body idle timeout, ends it and the upstream connection
        (closed, never back in the pool half-read). A caller who disconnects while the
        upstream is silent cancels this handler (aiohttp's handler cancellation, on in
        :mod:`tokend.io.local_http`): the ``finally`` closes the upstream connection too.
        Timeouts are ``asyncio.timeout``, never ``wait_for``: Python 3.11's ``wait_for``
        swallows a cancellation that lands as its inner await completes, which left a
        handler of a departed caller waiting on a stalled upstream for good."""
        if upstream.complete and request.method != "HEAD" and upstream.status not in (204, 304):
            # (a HEAD's, 204's or 304's Content-Length is not its body's: those stream, as is)
            return self.whole(upstream, upstream.buffered_body())
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in response_headers(upstream.headers.items()):
            out.headers.add(name, value)
        complete = False
        try:
            await out.prepare(request)
            async for chunk in upstream.chunks():
                async with asyncio.timeout(self.body_idle_timeout):
                    await out.write(chunk)
            await out.write_eof()
            complete = True
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the caller left: the upstream connection is closed, not reused
        except (UpstreamError, aiohttp.ClientError, TimeoutError, OSError):
            # The upstream failed mid-answer, or the caller stalled: the caller must not
            # take a cut body as whole.
            if request.transport is not None:
                request.transport.abort()
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()
        return out

    def whole(self, upstream: UpstreamResponse, body: bytes) -> web.Response:
        """An answer whose body is all in hand (a held 401, or most API answers), as one
        ``web.Response``: aiohttp sends its head and body in one write, where a
        StreamResponse sends the head at once and the body after (a send call more per
        request, the largest cost left in ``bench/proxy.py``'s profile)."""
        out = web.Response(status=upstream.status, reason=upstream.reason, body=body)
        for name, value in response_headers(upstream.headers.items()):
            if name.lower() not in ("content-length", "content-type"):
                out.headers.add(name, value)
        if "Content-Type" in upstream.headers:
            out.headers["Content-Type"] = upstream.headers["Content-Type"]
        elif not body:  # aiohttp's default type, for a body that is not there
            del out.headers["Content-Type"]
        return out

    def no_token(self) -> web.Response:
        status = self.board.credential_status(self.credential)
        wait = retry_after(status.next_refresh if status else None, time.time())
        return json_error(
            503,
            "temporarily_unavailable",
            f"no valid token for {self.credential} yet; tokend is trying",
            {"Retry-After": str(wait)},
        )

    def unreachable(self, exc: BaseException) -> web.Response:
        """502, never with the token: the request did not reach the upstream (or an untrusted
        certificate stopped it before the token was sent), and no token is in the body."""
        if isinstance(exc, CertificateError):
            return json_error(
                502,
                "bad_gateway",
                "the upstream's TLS certificate is not trusted "
                "(set the credential's ca_bundle for a private CA)",
            )
        reason = str(exc) if isinstance(exc, UpstreamError) else type(exc).__name__
        return json_error(502, "bad_gateway", f"the upstream could not be reached ({reason})")
