"""io/local_http: the listeners, on real sockets in this process: a unix socket's mode is
set before anyone can connect, only a stale socket is replaced, the directory is judged as
a sink's; aiohttp's header limits answer an oversize request; the loop stops cleanly."""

from __future__ import annotations

import os
import select
import socket
import stat
import time
from pathlib import Path

import pytest
from aiohttp import web

from tokend.config.schema import Listen
from tokend.io.local_http import IDLE_TIMEOUT, BindError, LocalHttp, Site, bind_unix

from .support.resource import free_port


def hello_app(listen: Listen | None = None) -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    return app


def request(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(raw)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and (b"hello" in data or b"Content-Length: 0" in data or len(data) > 100):
            break
    return data


def test_a_unix_socket_has_its_mode_before_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = bind_unix(path, 0o640, None, None)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640  # bound, moded ...
        probe = socket.socket(socket.AF_UNIX)
        with pytest.raises(ConnectionRefusedError):  # ... and no one can connect yet
            probe.connect(str(path))
        probe.close()
    finally:
        sock.close()


def test_only_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody listens
    bind_unix(path, 0o600, None, None).close()
    live = socket.socket(socket.AF_UNIX)
    path.unlink()
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(BindError, match="in use by another process"):
            bind_unix(path, 0o600, None, None)
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(BindError, match="is not a socket"):
        bind_unix(path, 0o600, None, None)
    assert path.read_text() == "not a socket"


def test_a_socket_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BindError, match="directory path is not safe"):
        bind_unix(shared / "s.sock", 0o600, None, None)
    assert not (shared / "s.sock").exists()


def test_sites_serve_refuse_oversize_heads_and_stop(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    port = free_port()
    local = LocalHttp()
    errors = local.start(
        [
            Site("unix", Listen(path=path), hello_app, 0o600),
            Site("tcp", Listen(host="127.0.0.1", port=port), hello_app),
            Site("taken", Listen(host="127.0.0.1", port=port), hello_app),
        ]
    )
    try:
        assert len(errors) == 1 and "taken: cannot listen on 127.0.0.1:" in errors[0]
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(path))
            assert b"hello" in request(conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            answer = request(conn, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
            assert answer.split(b" ", 2)[1] in (b"400", b"431")
    finally:
        local.stop()
    assert not local.thread.is_alive()
    assert not path.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_slow_loris_is_cut_at_the_header_timeout_and_others_are_served_meanwhile() -> None:
    """Twenty clients open a connection and trickle a request head a byte every 50 ms,
    never finishing it (the trickle is the clients' pace, not a wait for the server). Each
    is closed, with no answer, once the header-read timeout has passed since it connected
    (however busy it kept the line), and a normal client is served at once all along."""
    assert IDLE_TIMEOUT == 15.0  # README: "15 s for a request head to arrive"
    timeout = 0.5
    port = free_port()
    local = LocalHttp(idle_timeout=timeout)
    assert local.start([Site("tcp", Listen(host="127.0.0.1", port=port), hello_app)]) == []
    slow: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    served: list[float] = []
    try:
        for _ in range(20):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow[conn] = time.monotonic()
        deadline = time.monotonic() + timeout + 5  # the bound: cut well within it
        while len(closed) < len(slow) and time.monotonic() < deadline:
            for conn in slow.keys() - closed.keys():
                readable, _, _ = select.select([conn], [], [], 0)
                gone = False
                if readable:
                    try:
                        data = conn.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", data[:80]  # closed, never answered
                    gone = True
                else:
                    try:
                        conn.send(b"a")
                    except (BrokenPipeError, ConnectionResetError):
                        gone = True
                if gone:
                    closed[conn] = time.monotonic()
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
                assert b"hello" in request(other, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            served.append(time.monotonic() - started)
            time.sleep(0.05)  # the loris' pace: a byte per connection every 50 ms
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open"
        held = [closed[conn] - slow[conn] for conn in slow]
        assert min(held) >= timeout * 0.9, held  # not before the timeout ...
        assert max(held) < timeout + 3, held  # ... and soon after it
        assert len(served) >= 5 and max(served) < timeout, served  # never queued behind them
    finally:
        for conn in slow:
            conn.close()
        local.stop()


def test_too_many_headers_are_refused() -> None:
    port = free_port()
    local = LocalHttp()
    local.start([Site("tcp", Listen(host="127.0.0.1", port=port), hello_app)])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(65))
            answer = request(conn, head + b"\r\n")
            assert answer.split(b" ", 2)[1] == b"400" and b"hello" not in answer
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # 63 and Host: fine
            head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(63))
            assert b"hello" in request(conn, head + b"\r\n")
    finally:
        local.stop()


def test_one_local_user_cannot_take_every_connection_of_a_unix_socket(tmp_path: Path) -> None:
    """Connections to a unix socket are counted by the caller's uid (SO_PEERCRED): past the
    per-peer cap a caller's next connection is answered 503 and closed, and each one it
    closes gives its slot back."""
    path = tmp_path / "s.sock"
    local = LocalHttp(peer_limit=3)
    assert local.start([Site("unix", Listen(path=path), hello_app, 0o600)]) == []
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(path))
            held.append(conn)
        assert b"hello" in request(held[0], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.socket(socket.AF_UNIX) as extra:
            extra.connect(str(path))
            extra.settimeout(5)
            assert extra.recv(1024).startswith(b"HTTP/1.1 503")
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # a bounded poll: the server sees the close on its loop
            with socket.socket(socket.AF_UNIX) as again:
                again.connect(str(path))
                again.settimeout(5)
                answer = request(again, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if b"hello" in answer or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert b"hello" in answer
    finally:
        for conn in held:
            conn.close()
        local.stop()


def test_a_sticky_world_writable_socket_directory_is_refused(tmp_path: Path) -> None:
    """In a directory like /tmp another user could bind the socket's name first."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pytest.raises(BindError, match="writable by others"):
        bind_unix(sticky / "s.sock", 0o600, None, None)
    assert not (sticky / "s.sock").exists()
    with pytest.raises(BindError, match="writable by others"):
        bind_unix(Path("/tmp/tokend-test.sock"), 0o600, None, None)
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o1770)
    with pytest.raises(BindError, match="writable by its group"):
        bind_unix(group / "s.sock", 0o600, None, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a socket as another uid")
def test_a_live_socket_of_another_user_is_named_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    os.chown(path, 65534, 65534)
    try:
        with pytest.raises(BindError, match="live socket of uid 65534, not tokend's"):
            bind_unix(path, 0o600, None, None)
    finally:
        live.close()
    assert path.exists()
