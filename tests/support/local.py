"""In-process local servers for the endpoint's and the proxy's tests: a real LocalHttp on
real sockets with a board that holds one fixed token (the daemon's board is tested on its
own: tests/test_token_board.py), and a raw upstream that can be silent, read uploads or
push a download, counting the connections it has open."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tokend.config.schema import Listen
from tokend.core.health import CredentialStatus, readiness
from tokend.core.local_access import Access
from tokend.core.tokens import Token

from .resource import free_port


class FixedBoard:
    """A :class:`tokend.core.local_access.Board` with one token per credential, valid an hour."""

    def __init__(self, tokens: dict[str, str] | None = None, access: dict[str, Access] | None = None) -> None:
        now = time.time()
        self.tokens = {
            name: Token(value, now + 3600, now) for name, value in (tokens or {"api": "tok-fixed"}).items()
        }
        self.accesses = access if access is not None else {name: Access(tcp=True) for name in self.tokens}

    def token(self, name: str) -> Token | None:
        return self.tokens.get(name)

    def credential_status(self, name: str) -> CredentialStatus | None:
        return None

    def access(self, name: str) -> Access | None:
        return self.accesses.get(name)

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.time()
        statuses = {
            name: CredentialStatus(name, expires_at=token.expires_at, last_success=now)
            for name, token in self.tokens.items()
        }
        return readiness(statuses, now)

    def refresh(self, name: str, stale: str) -> None:
        pass

    def pending(self, name: str) -> bool:
        return False

    def subscribe(self, notify: Callable[[str], None]) -> None:
        pass


class RawUpstream:
    """``/ok`` answers at once (keep-alive); ``/silent`` never answers; ``/stall`` sends its
    head and 64 KiB of a large body, then nothing; ``/big`` pushes 256 MiB as fast as it is
    taken; ``/upload`` reads its body and answers when all of it came. Each connection is
    held until the other side closes it; ``open`` counts them, ``paths`` what came."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open = 0
        self.paths: list[str] = []
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
        try:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                with self.lock:
                    self.paths.append(path)
                    self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if path.startswith("/upload"):
                    while len(buffer) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    buffer = buffer[length:]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif path.startswith("/silent"):
                    self._until_closed(conn)
                    return
                elif path.startswith("/stall"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n" + b"x" * 65536)
                    self._until_closed(conn)
                    return
                elif path.startswith("/big"):
                    size = 256 * 1024 * 1024
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    chunk = b"x" * 65536
                    for _ in range(size // len(chunk)):
                        conn.sendall(chunk)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    @staticmethod
    def _until_closed(conn: socket.socket) -> None:
        conn.settimeout(120)
        while conn.recv(65536):
            pass

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@contextmanager
def local_proxy(upstream: str, board: FixedBoard | None = None, **options: Any) -> Iterator[str]:
    """A proxy for credential ``api`` on a TCP port, in this process; yields its base URL."""
    from tokend.io.local_http import LocalHttp, Site
    from tokend.io.proxy import Proxy

    local = LocalHttp(idle_timeout=options.pop("idle_timeout", 15.0))
    held = board or FixedBoard()
    listen = Listen(host="127.0.0.1", port=free_port())

    def make(bound: Listen) -> Any:
        return Proxy(held, local.changes, "api", upstream, bound, **options).app()

    errors = local.start([Site("proxy api[0]", listen, make)])
    assert errors == []
    try:
        yield f"http://127.0.0.1:{listen.port}"
    finally:
        local.stop()


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """A bounded poll of a real event: True as soon as it holds, False at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
