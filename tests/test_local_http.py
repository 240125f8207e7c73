"""io/local_http: the listeners, on real sockets in this process: a unix socket's mode is
set before anyone can connect, only a stale socket is replaced, the directory is judged as
a sink's; aiohttp's header limits answer an oversize request; the loop stops cleanly."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from aiohttp import web

from tokend.config.schema import Listen
from tokend.io.local_http import BindError, LocalHttp, Site, bind_unix

from .support.resource import free_port


def hello_app() -> web.Application:
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
