"""The proxy's client: a pool of HTTP/1.1 connections to one upstream origin, on asyncio
protocols, with llhttp (``httptools``, the parser Node.js and uvicorn use) reading answers.

Why not aiohttp's client: in ``bench/proxy.py`` its per-request machinery (tracing hooks,
timers, cookie and redirect logic, URL and header objects built and rebuilt) was most of
the proxy's time, and a proxy needs none of it: the request's head is built once from
headers aiohttp's server already parsed, and the answer is relayed as it comes. Parsing is
llhttp's, never ours; this module frames (Content-Length or chunked uploads), pools, and
bounds (head size, header count, connect and read timeouts, body buffered before reading
pauses).

What the proxy relies on:
- a request's head and a small body go out in one write; a streamed body is written with
  backpressure (the transport's pause/resume), chunked when its length is not known;
- an answer is handed over once its head is in (:class:`UpstreamResponse`); its body is
  buffered up to :data:`BUFFERED` and then reading pauses until the proxy takes it;
- a connection goes back to the pool only if its answer was read whole and llhttp says it
  may be kept alive; an idle one is dropped after ``keepalive`` seconds, and one the
  upstream speaks on unasked is closed;
- a reused connection the upstream had closed (the keep-alive race) costs a retry on a new
  one only for a request that is safe to send twice (as Go's net/http: an idempotent method
  and no streamed body); any other failure is an :class:`UpstreamError`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Iterable

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

MAX_HEAD = 64 * 1024  # bytes in an answer's status line and headers
MAX_HEADERS = 128
BUFFERED = 256 * 1024  # body bytes read ahead of the proxy before the socket is paused
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_FORBIDDEN = ("\r", "\n", "\0")


class UpstreamError(Exception):
    """The upstream could not be reached, or its answer was cut or malformed; ``str`` is a
    short reason for a 502's body (never a header or a token)."""


class CertificateError(UpstreamError):
    """The upstream's TLS certificate is not trusted: nothing was sent."""


class _Closed(UpstreamError):
    """The connection closed before any byte of the answer (on a reused one: the keep-alive race)."""


def request_head(method: str, target: str, authority: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request's head, or ValueError for a name or value that would split it (a CR, LF
    or NUL: aiohttp's server refuses them, and a token or proof never holds one; judged
    here again because a split head is a smuggled request)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        if any(c in name or c in value for c in _FORBIDDEN) or ":" in name or not name:
            raise ValueError("a header that would split the request")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    if any(c in target for c in (" ", *_FORBIDDEN)):
        raise ValueError("a request target that would split the request")
    return "".join(lines).encode("latin-1")


def authority(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


class _Connection(asyncio.Protocol):
    """One connection and the answer it is reading (one at a time: no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.busy = False
        self.spoiled = False
        self._can_write: asyncio.Future[None] | None = None
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        self.head_only = head_only  # a HEAD's answer: complete at its head, the connection not reused
        self.head_size = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.reason = ""
        self.got_bytes = False
        self.head_in = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # no length and not chunked: the body ends with the connection
        self.error: UpstreamError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self._wake: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.complete and self.error is None:
            if self.head_in and self.until_close and exc is None:
                self.complete = True
            elif not self.got_bytes:
                self.error = _Closed("the upstream closed the connection")
            else:
                self.error = UpstreamError("the upstream's answer was cut")
        self._notify()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete or self.error is not None:
            self.abort()  # unasked bytes, or more than the answer held: not a connection to keep
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the upstream switched protocols"))
        except httptools.HttpParserError:
            if self.spoiled:  # a second answer after the whole first: keep the first, drop the connection
                self.abort()
            else:
                self._fail(self.error or UpstreamError("the upstream's answer is not HTTP/1.1"))
        if self.head_only and self.head_in:
            self.complete = True
        if not self.complete and self.buffered > BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._notify()

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self._can_write = loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
        self._can_write = None

    # ------------------------------------------------------------------ llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the answer, in the same read: never a second answer
            self.spoiled = True
            raise httptools.HttpParserError("unasked bytes")  # stops llhttp at once

    def on_status(self, status: bytes) -> None:
        self.head_size += len(status)
        self.reason += status.decode("latin-1")
        self._bound_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        self.raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._bound_head()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.raw_headers, self.reason, self.head_size = [], "", 0
            return  # (a 101 makes llhttp raise HttpParserUpgrade: never an answer)
        self.head_in = True
        names = {name.lower(): value for name, value in self.raw_headers}
        coding = names.get("transfer-encoding", "").rsplit(",", 1)[-1].strip().lower()
        self.until_close = "content-length" not in names and coding != "chunked" and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_in:
            self.complete = True
            # Read now: llhttp forgets the answer's Connection header once it is complete.
            self.keep_alive = self.parser.should_keep_alive()

    def _bound_head(self) -> None:
        if self.head_size > MAX_HEAD or len(self.raw_headers) > MAX_HEADERS:
            self.error = UpstreamError("the upstream's answer head is too large")
            raise httptools.HttpParserError("head too large")  # stops llhttp at once

    # ------------------------------------------------------------------ the pool's side

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.abort()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _changed(self, timeout: float) -> None:
        self._wake = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._wake
        finally:
            self._wake = None

    def begin(self, method: str) -> None:
        self._reset(head_only=method == "HEAD")
        self.busy = True

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise _Closed("the upstream closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._can_write is not None:
            await self._can_write
        if self.closed and not self.head_in:
            raise self.error or _Closed("the upstream closed the connection")

    async def head(self, timeout: float) -> None:
        while not self.head_in:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise _Closed("the upstream closed the connection")
            await self._changed(timeout)

    async def next_chunk(self, timeout: float) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            if self.closed:
                raise UpstreamError("the upstream's answer was cut")
            await self._changed(timeout)
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= BUFFERED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and not self.head_only
            and not self.spoiled
            and not self.chunks
            and self.error is None
            and self.keep_alive
        )

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """An answer whose head is in; its body is read with :meth:`read` or :meth:`chunks`.
    :meth:`release` (the body read whole: the connection may be reused) or :meth:`close`
    must end it; either may be called more than once."""

    def __init__(self, pool: UpstreamPool, connection: _Connection) -> None:
        self._pool, self._connection = pool, connection
        self.status = connection.parser.get_status_code()
        self.reason = connection.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(connection.raw_headers))
        self._done = False

    @property
    def complete(self) -> bool:
        """The whole body is in (buffered), so it can be answered in one write."""
        return self._connection.complete

    def buffered_body(self) -> bytes:
        """All of the body, when :attr:`complete`; the connection is then released."""
        assert self.complete
        body = b"".join(self._connection.chunks)
        self._connection.chunks.clear()
        self._connection.buffered = 0
        self.release()
        return body

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (all of it if it is shorter)."""
        parts, size = [], 0
        while size < limit:
            chunk = await self._connection.next_chunk(self._pool.read_timeout)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._connection.next_chunk(self._pool.read_timeout)
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._pool._give_back(self._connection)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._connection.abort()
            self._pool._give_back(self._connection)


class UpstreamPool:
    """Connections to one origin (``http`` or ``https``): at most ``limit`` at once (more
    requests wait for one), idle ones kept ``keepalive`` seconds."""

    def __init__(
        self,
        url: URL,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        keepalive: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.host = url.host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.authority = authority(url)
        self.ssl = ssl_context if url.scheme == "https" else None
        self.keepalive = keepalive
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request and return its answer once the head is in. ``body`` is the
        whole body, or an iterator of a streamed one (``content_length`` if known, else
        chunked). Raises UpstreamError, TimeoutError, or what a streamed body raised."""
        streamed = body is not None and not isinstance(body, bytes)
        framing: list[tuple[str, str]] = []
        if isinstance(body, bytes):
            if body or method in ("POST", "PUT", "PATCH"):
                framing = [("Content-Length", str(len(body)))]
        elif body is not None:
            framing = (
                [("Content-Length", str(content_length))]
                if content_length is not None
                else [("Transfer-Encoding", "chunked")]
            )
        try:
            head = request_head(method, target, self.authority, [*headers, *framing])
        except ValueError as exc:
            raise UpstreamError(str(exc)) from None
        retry = not streamed and (
            method in IDEMPOTENT or any(n.lower() == "idempotency-key" for n, _ in headers)
        )
        await self._slots.acquire()
        try:
            while True:
                connection, reused = await self._connection()
                connection.begin(method)
                try:
                    if isinstance(body, bytes) or body is None:
                        connection.write(head + (body or b""))
                    else:
                        await self._upload(connection, head, body, chunked=content_length is None)
                    await connection.head(self.read_timeout)
                except _Closed:
                    connection.abort()
                    self._open.discard(connection)
                    if reused and retry:
                        continue  # the keep-alive race: once more, on a new connection
                    raise
                except BaseException:
                    connection.abort()
                    self._open.discard(connection)
                    raise
                return UpstreamResponse(self, connection)
        except BaseException:
            self._slots.release()
            raise

    async def _upload(
        self, connection: _Connection, head: bytes, body: AsyncIterator[bytes], *, chunked: bool
    ) -> None:
        connection.write(head)
        async for chunk in body:
            if connection.head_in:  # answered mid-upload (a 413): the rest is not wanted
                connection.spoiled = True  # the upstream is mid-body: never reused
                return
            if chunk:
                connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive:
                return connection, True
            connection.abort()
            self._open.discard(connection)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except ssl.SSLCertVerificationError:
            raise CertificateError("the upstream's TLS certificate is not trusted") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        self._open.add(connection)
        return connection, False

    def _give_back(self, connection: _Connection) -> None:
        connection.busy = False
        if connection.reusable():
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.abort()
            self._open.discard(connection)
        self._slots.release()

    async def close(self) -> None:
        for connection in list(self._open):
            connection.abort()
        self._open.clear()
        self._idle.clear()
