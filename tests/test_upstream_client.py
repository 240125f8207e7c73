"""io/upstream_client: the proxy's pool of connections to its upstream, against servers on
loopback that answer byte for byte what each test scripts: a connection is reused only
after a whole answer the upstream lets it keep; HEAD, interim (1xx) and until-close
answers end where HTTP says; a reused connection the upstream closed costs a retry only
for a request safe to send twice; a cut, malformed or oversize answer and a header that
would split the request are an UpstreamError; a large answer is read ahead only so far;
and no bytes an upstream can send make it raise anything else."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from yarl import URL

from tokend.io.upstream_client import BUFFERED, MAX_HEAD, UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its body (by Content-Length or chunked), as an upstream reads it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {line.partition(":")[0].lower(): line.partition(":")[2].strip() for line in lines[1:] if line}
    if "content-length" in fields:
        return head, await reader.readexactly(int(fields["content-length"]))
    body = b""
    if fields.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    return head, body


class Upstream:
    """A server on 127.0.0.1 whose every connection runs ``handler`` (with its index)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index, self.connections = self.connections, self.connections + 1
            try:
                await self.handler(reader, writer, index)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> URL:
        assert self.server is not None
        return URL(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    def pool(self, *, limit: int = 4, read_timeout: float = 5.0) -> UpstreamPool:
        return UpstreamPool(
            self.url,
            ssl_context=None,
            limit=limit,
            keepalive=30.0,
            connect_timeout=5.0,
            read_timeout=read_timeout,
        )


def answering(*answers: bytes) -> Handler:
    """A keep-alive upstream: each request on a connection gets the next answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()  # then waits for the client to close

    return handler


async def get(pool: UpstreamPool, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    response = await pool.request(method, "/r", [("Accept", "*/*")], body)
    content = await response.read(1 << 20)
    response.release()
    return response.status, content


def test_a_whole_answer_leaves_its_connection_for_the_next_request() -> None:
    async def scenario() -> None:
        async with Upstream(answering(OK, OK, OK)) as upstream:
            pool = upstream.pool()
            assert [await get(pool) for _ in range(3)] == [(200, b"hello")] * 3
            assert upstream.connections == 1
            await pool.close()

    asyncio.run(scenario())


def test_the_request_head_names_the_upstream_and_frames_the_body() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await reader.read()

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            assert await get(pool, "POST", b"a=1") == (200, b"hello")
            await pool.close()
            head, body = seen[0]
            assert head.startswith(b"POST /r HTTP/1.1\r\nHost: 127.0.0.1:")
            assert b"\r\nContent-Length: 3\r\n" in head and b"\r\nAccept: */*\r\n" in head
            assert body == b"a=1"

    asyncio.run(scenario())


def test_a_head_answer_ends_at_its_head_and_its_connection_is_not_reused() -> None:
    # A HEAD's Content-Length is the GET's, with no body: an answer read to that length
    # would hang, and one taken as a body would poison the connection.
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
            await answering(head_answer if index == 0 else OK)(reader, writer, index)

        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            assert await get(pool, "HEAD") == (200, b"")
            assert await get(pool) == (200, b"hello")
            assert upstream.connections == 2
            await pool.close()

    asyncio.run(scenario())


def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"

    async def scenario() -> None:
        async with Upstream(answering(early + OK, OK)) as upstream:
            pool = upstream.pool()
            response = await pool.request("GET", "/", [], None)
            assert (response.status, response.headers.get("Link")) == (200, None)
            assert await response.read(100) == b"hello"
            response.release()
            assert await get(pool) == (200, b"hello")
            assert upstream.connections == 1
            await pool.close()

    asyncio.run(scenario())


def test_an_answer_without_a_length_ends_with_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000)
        await writer.drain()

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            assert await get(pool) == (200, b"x" * 100_000)
            assert await get(pool) == (200, b"x" * 100_000)
            assert upstream.connections == 2
            await pool.close()

    asyncio.run(scenario())


def test_an_answer_cut_short_is_an_error_not_a_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await writer.drain()

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            response = await pool.request("GET", "/", [], None)
            with pytest.raises(UpstreamError, match="cut"):
                await response.read(1000)
            response.close()
            await pool.close()

    asyncio.run(scenario())


def test_a_streamed_upload_of_unknown_length_goes_chunked() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        head, body = await read_request(reader)
        assert b"Transfer-Encoding: chunked" in head
        received.append(body)
        digest = hashlib.sha256(body).hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(digest), digest))
        await reader.read()

    async def parts() -> AsyncIterator[bytes]:
        for i in range(64):
            yield bytes([i]) * 65536

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            response = await pool.request("PUT", "/up", [], parts())
            digest = await response.read(100)
            response.release()
            expected = b"".join(bytes([i]) * 65536 for i in range(64))
            assert received == [expected] and digest == hashlib.sha256(expected).hexdigest().encode()
            await pool.close()

    asyncio.run(scenario())


def closing_after_the_first() -> Handler:
    """Answers one request, then reads the next and closes without a word: the keep-alive
    race, made certain."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        writer.transport.abort()

    return handler


def test_a_get_on_a_connection_the_upstream_dropped_is_sent_again_on_a_new_one() -> None:
    async def scenario() -> None:
        async with Upstream(closing_after_the_first()) as upstream:
            pool = upstream.pool()
            assert await get(pool) == (200, b"hello")
            assert await get(pool) == (200, b"hello")  # the second connection's first answer
            assert upstream.connections == 2
            await pool.close()

    asyncio.run(scenario())


def test_a_post_on_a_connection_the_upstream_dropped_is_not_sent_twice() -> None:
    async def scenario() -> None:
        async with Upstream(closing_after_the_first()) as upstream:
            pool = upstream.pool()
            assert await get(pool) == (200, b"hello")
            with pytest.raises(UpstreamError, match="closed"):
                await get(pool, "POST", b"charge=1")
            assert upstream.connections == 1
            await pool.close()

    asyncio.run(scenario())


def test_bytes_after_the_answer_spoil_the_connection() -> None:
    async def scenario() -> None:
        async with Upstream(
            answering(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", OK)
        ) as upstream:
            pool = upstream.pool()
            assert await get(pool) == (200, b"hello")
            await asyncio.sleep(0)  # the trailing bytes arrive with the answer, in one read
            assert await get(pool) == (200, b"hello")
            assert upstream.connections == 2
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "not HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n", "too large"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "too large"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "switched",
        ),
    ],
    ids=["not-http", "two-lengths", "huge-header", "many-headers", "upgrade"],
)
def test_an_answer_that_is_not_a_sound_http_answer_is_an_error(answer: bytes, reason: str) -> None:
    async def scenario() -> None:
        async with Upstream(answering(answer)) as upstream:
            pool = upstream.pool()
            with pytest.raises(UpstreamError, match=reason):
                await get(pool)
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a", [("X-A", "1\r\nX-Injected: 1")]),
        ("/a", [("X-A\r\nB", "1")]),
        ("/a b", []),
        ("/a", [("X:Y", "1")]),
    ],
    ids=["value", "name", "target", "colon"],
)
def test_a_request_that_would_split_its_head_is_refused_before_a_byte_is_sent(
    target: str, headers: list[tuple[str, str]]
) -> None:
    async def scenario() -> None:
        async with Upstream(answering(OK)) as upstream:
            pool = upstream.pool()
            with pytest.raises(UpstreamError, match="split"):
                await pool.request("GET", target, headers, None)
            assert upstream.connections == 0
            await pool.close()

    asyncio.run(scenario())


def test_an_upstream_that_is_not_listening_is_an_error() -> None:
    async def scenario() -> None:
        async with Upstream(answering()) as upstream:
            url = upstream.url
        pool = UpstreamPool(url, ssl_context=None, limit=1, keepalive=30, connect_timeout=5, read_timeout=5)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await get(pool)

    asyncio.run(scenario())


def test_a_large_answer_is_read_ahead_only_so_far() -> None:
    size = 32 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * (1 << 20)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool()
            response = await pool.request("GET", "/big", [], None)
            await asyncio.sleep(0.3)  # the upstream writes as fast as it can meanwhile
            ahead = response._connection.buffered
            got, most = 0, ahead
            async for chunk in response.chunks():
                got += len(chunk)
                most = max(most, response._connection.buffered)
            response.release()
            assert got == size
            # Reading pauses past BUFFERED; what one socket read brings on top is the slack.
            assert ahead > 0 and most <= BUFFERED + 512 * 1024
            await pool.close()

    asyncio.run(scenario())


def test_requests_beyond_the_limit_wait_for_a_connection() -> None:
    async def scenario() -> None:
        async with Upstream(answering(OK, OK, OK)) as upstream:
            pool = upstream.pool(limit=1)
            first = await pool.request("GET", "/", [], None)
            second = asyncio.ensure_future(get(pool))
            await asyncio.sleep(0.05)
            assert not second.done()  # the one connection is the first answer's
            assert await first.read(10) == b"hello"
            first.release()
            assert await second == (200, b"hello")
            assert upstream.connections == 1
            await pool.close()

    asyncio.run(scenario())


VALID = [
    OK,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 103 Early Hints\r\n\r\n" + OK,
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:
            out[at:at] = rng.choice(
                [b"\r\n", b"\n", b"\0", b":", b" ", b"0", b"ffffffffffffffff", b"\r\n\r\n"]
            )
        elif kind == 2:
            del out[at : at + rng.randint(1, 8)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def test_whatever_an_upstream_answers_is_an_answer_or_an_upstream_error() -> None:
    """A fuzzer of the upstream's bytes: mutations of sound answers, sent whole or in pieces,
    then the connection closed. Anything but an answer or UpstreamError / TimeoutError
    (a proxy's 502) would be a crash in the middle of a caller's request."""
    rng = random.Random(20261203)
    cases = [mutate(rng, rng.choice(VALID)) for _ in range(300)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        data = cases[index]
        cut = rng.randrange(len(data) + 1)
        writer.write(data[:cut])
        await writer.drain()
        writer.write(data[cut:])
        await writer.drain()

    async def scenario() -> None:
        async with Upstream(handler) as upstream:
            pool = upstream.pool(read_timeout=0.5)
            outcomes = {"answer": 0, "error": 0}
            for _ in cases:
                try:
                    response = await pool.request("GET", "/", [], None)
                    try:
                        await response.read(1 << 20)
                    finally:
                        response.close()
                    outcomes["answer"] += 1
                except (UpstreamError, TimeoutError):
                    outcomes["error"] += 1
            assert outcomes["answer"] > 20 and outcomes["error"] > 20, outcomes
            await pool.close()

    asyncio.run(scenario())
