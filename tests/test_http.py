"""The deadline of tokend.io.http, against raw TCP (and TLS) servers on 127.0.0.1.

``timeout`` bounds a request as a whole, whatever the server does byte by byte, and does
so without a thread per request.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tokend.io.http import DeadlineExceeded, deadline_session

SLACK = 0.5  # how late a cut-off may come, on a loaded CI machine
KEEP_ALIVE = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"access_token":"a"}'
)
OK_RESPONSE = KEEP_ALIVE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")  # RawServer closes
Behave = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """A TCP server on 127.0.0.1 that does exactly what ``behave`` does with each client,
    one client at a time, after reading its request (TLS first, given a ``context``)."""

    def __init__(self, behave: Behave, context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.behave = behave
        self.context = context
        self.requests: list[bytes] = []
        self.threads_seen: list[int] = []  # threading.active_count() while a client waits
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}/token"

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                if self.context is not None:
                    conn = self.context.wrap_socket(conn, server_side=True)
                with conn:
                    self.requests.append(read_request(conn))
                    self.note_threads()
                    conn.settimeout(None)
                    self.behave(conn, self)
            except OSError:
                pass

    def note_threads(self) -> None:
        """Count the threads while the client waits for us: the request's own and ours."""
        self.threads_seen.append(threading.active_count())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    """One whole request (TLS may bring the body in a record of its own): a server that
    closes with some of it unread sends a reset, which may lose its answer on the way."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length[1]):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def trickle(head: bytes, drip: bytes) -> Behave:
    def behave(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(head)
        while not server.stop.wait(0.2):  # a byte every 0.2 s: each recv() is well within timeout
            server.note_threads()
            conn.sendall(drip)

    return behave


def silent(conn: socket.socket, server: RawServer) -> None:
    """Reads the request, never answers, keeps the connection open."""
    while not server.stop.wait(0.1):
        server.note_threads()


def in_pieces(*pieces: bytes, pause: float) -> Behave:
    def behave(conn: socket.socket, server: RawServer) -> None:
        for piece in pieces:
            conn.sendall(piece)
            server.stop.wait(pause)

    return behave


HEADERS_TRICKLE = trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: y\r\n")
BODY_TRICKLE = trickle(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", b" "
)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = deadline_session()
    yield s
    s.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(behave: Behave, context: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(behave, context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def post(session: requests.Session, url: str, timeout: float, **kw: Any) -> requests.Response:
    return session.post(url, data=b"grant_type=x", timeout=timeout, stream=True, allow_redirects=False, **kw)


def read_all(response: requests.Response) -> bytes:
    with response:
        return b"".join(response.iter_content(16384))


def assert_cut_at(started: float, timeout: float) -> None:
    elapsed = time.monotonic() - started
    assert timeout - 0.01 <= elapsed < timeout + SLACK, elapsed


# --------------------------------------------------------------------------- the cut-off


def test_trickled_headers_are_cut_off_at_the_deadline(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    server = serve(HEADERS_TRICKLE)
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        post(session, server.url, 1.0)
    assert_cut_at(started, 1.0)
    assert info.value.received > len(b"HTTP/1.1 200 OK\r\n")  # some headers came, not all
    assert set(server.threads_seen) == {before}  # no timer thread beside the request


def test_a_trickled_body_is_cut_off_at_the_deadline(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    server = serve(BODY_TRICKLE)
    before = threading.active_count()
    started = time.monotonic()
    response = post(session, server.url, 1.0)
    assert response.status_code == 200
    with pytest.raises(DeadlineExceeded):
        read_all(response)
    assert_cut_at(started, 1.0)  # headers and body share one deadline
    assert set(server.threads_seen) == {before}


def test_a_server_that_never_answers_is_cut_off_at_the_deadline(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    server = serve(silent)
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        post(session, server.url, 0.5)
    assert_cut_at(started, 0.5)
    assert info.value.received == 0
    assert set(server.threads_seen) == {before}


def test_a_hanging_connect_is_a_connect_timeout(session: requests.Session) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # the backlog is full now
            started = time.monotonic()
            with pytest.raises(requests.exceptions.ConnectTimeout):
                post(session, f"http://127.0.0.1:{listener.getsockname()[1]}/token", 0.5)
            assert_cut_at(started, 0.5)


def test_no_thread_is_started_per_request(session: requests.Session, serve: Callable[..., RawServer]) -> None:
    server = serve(lambda conn, _: conn.sendall(OK_RESPONSE))
    before = threading.active_count()
    for _ in range(5):
        assert read_all(post(session, server.url, 2.0)) == b'{"access_token":"a"}'
    assert server.threads_seen == [before] * 5  # one sample per request
    assert threading.active_count() == before


# --------------------------------------------------------------------------- what the deadline leaves alone


def test_a_slow_answer_within_the_deadline_arrives_whole(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """Each recv() waits only for what is left, which is plenty: nothing is cut early."""
    head, body = OK_RESPONSE.split(b"\r\n\r\n")
    server = serve(in_pieces(head[:20], head[20:] + b"\r\n\r\n", body[:7], body[7:], pause=0.15))
    response = post(session, server.url, 3.0)
    assert response.status_code == 200 and read_all(response) == b'{"access_token":"a"}'


@pytest.mark.parametrize("slow", [HEADERS_TRICKLE, BODY_TRICKLE], ids=["headers", "body"])
def test_the_same_server_is_asked_afresh_after_a_cut_off(
    session: requests.Session, serve: Callable[..., RawServer], slow: Behave
) -> None:
    """The cut connection is dropped, not handed back to the pool for the next request."""

    def slow_then_fine(conn: socket.socket, server: RawServer) -> None:
        if len(server.requests) == 1:
            slow(conn, server)
        else:
            conn.sendall(OK_RESPONSE)

    server = serve(slow_then_fine)
    with pytest.raises(DeadlineExceeded):
        read_all(post(session, server.url, 0.5))
    assert read_all(post(session, server.url, 2.0)) == b'{"access_token":"a"}'
    assert len(server.requests) == 2


def test_a_reused_connection_gets_a_fresh_deadline(
    session: requests.Session, serve: Callable[..., RawServer]
) -> None:
    """Keep-alive: the second response on one connection has its own whole timeout."""

    def twice(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(KEEP_ALIVE)
        read_request(conn)
        server.stop.wait(0.6)  # longer than what the first request left of its 1 s
        conn.sendall(OK_RESPONSE)

    server = serve(twice)
    stop_waiting = time.monotonic() + 0.5
    assert read_all(post(session, server.url, 1.0)) == b'{"access_token":"a"}'
    time.sleep(max(0.0, stop_waiting - time.monotonic()))
    assert read_all(post(session, server.url, 1.0)) == b'{"access_token":"a"}'
    assert len(server.requests) == 1  # one connection, two requests on it


def test_redirects_are_not_followed(session: requests.Session, serve: Callable[..., RawServer]) -> None:
    server = serve(
        lambda conn, _: conn.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 0\r\n\r\n"
        )
    )
    response = post(session, server.url, 2.0)
    assert response.status_code == 307 and read_all(response) == b""
    assert len(server.requests) == 1


def test_a_proxy_that_trickles_is_cut_off_too(
    session: requests.Session, serve: Callable[..., RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = serve(HEADERS_TRICKLE)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/token"))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        post(session, "http://127.0.0.1:9/token", 1.0)
    assert_cut_at(started, 1.0)
    assert proxy.requests[0].startswith(b"POST http://127.0.0.1:9/token ")


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for 127.0.0.1, and that certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "idp.pem", tmp_path / "idp.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def test_tls_is_verified_against_the_ca_bundle(
    session: requests.Session, serve: Callable[..., RawServer], tls: tuple[ssl.SSLContext, Path]
) -> None:
    context, cert = tls
    server = serve(lambda conn, _: conn.sendall(OK_RESPONSE), context)
    with pytest.raises(requests.exceptions.SSLError):
        post(session, server.url, 2.0)
    assert read_all(post(session, server.url, 2.0, verify=str(cert))) == b'{"access_token":"a"}'


@pytest.mark.parametrize("behave", [HEADERS_TRICKLE, BODY_TRICKLE], ids=["headers", "body"])
def test_a_trickling_tls_server_is_cut_off_at_the_deadline(
    session: requests.Session,
    serve: Callable[..., RawServer],
    tls: tuple[ssl.SSLContext, Path],
    behave: Behave,
) -> None:
    context, cert = tls
    server = serve(behave, context)
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        read_all(post(session, server.url, 1.0, verify=str(cert)))
    assert_cut_at(started, 1.0)
    assert set(server.threads_seen) == {before}
