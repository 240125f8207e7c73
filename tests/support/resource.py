"""A resource server for the proxy's tests: a real HTTP server on 127.0.0.1 that checks
every request's bearer token against the test identity provider (the newest token it
issued, and not expired by its own clock), and can refuse tokens, stream bodies, or stall;
over TLS too (``tls``: a certificate and key, such as tests/thirdparty/tls_front.Pki's)."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .endpoint import TokenEndpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Seen:
    method: str
    path: str  # with the query, as it came
    headers: dict[str, str]
    token: str | None
    ok: bool  # the token was one the IdP issued and not expired when it arrived


@dataclass
class ResourceServer:
    idp: TokenEndpoint
    refused: set[str] = field(default_factory=set)  # tokens answered 401 invalid_token
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    accept_older: bool = True  # any unexpired token the IdP issued (rotation under load)
    tls: tuple[Path, Path] | None = None  # (certificate, key): https, no client certificate asked

    def start(self) -> ResourceServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

            def do_POST(self) -> None:
                owner.handle(self)

            def do_PUT(self) -> None:
                owner.handle(self)

            def do_HEAD(self) -> None:
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            # A client that refuses the certificate fails the handshake in accept(): the
            # server drops that connection and serves on (socketserver takes the OSError).
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def judge(self, token: str | None) -> bool:
        if token is None or token not in self.idp.issued_at:
            return False
        if self.idp.expires_at(token) <= time.time():
            return False
        if self.accept_older:
            return True
        newest = max(self.idp.issued_at, key=lambda t: self.idp.issued_at[t])
        return token == newest

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        ok = self.judge(token)
        with self.lock:
            self.seen.append(Seen(h.command, h.path, dict(h.headers.items()), token, ok))
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        length = int(h.headers.get("Content-Length") or 0)
        digest, received = hashlib.sha256(), 0
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    break
                data = h.rfile.read(size)
                digest.update(data)
                received += len(data)
                h.rfile.readline()
        else:
            while received < length:
                data = h.rfile.read(min(65536, length - received))
                if not data:
                    break
                digest.update(data)
                received += len(data)
        if token in self.refused or not ok:
            self.reply(
                h, 401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
            return
        if parts.path.endswith("/set-cookie"):  # a session cookie for whoever asked
            self.reply(h, 200, {"ok": True}, {"Set-Cookie": "session=for-the-first-caller; Path=/"})
            return
        if parts.path.endswith("/download"):
            size = int(query["size"][0])
            h.send_response(200)
            h.send_header("Content-Length", str(size))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            chunk = b"x" * 65536
            try:
                for sent in range(0, size, len(chunk)):
                    h.wfile.write(chunk[: min(len(chunk), size - sent)])
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self.reply(
            h,
            200,
            {
                "method": h.command,
                "path": h.path,
                "received": received,
                "sha256": digest.hexdigest(),
                "headers": {k.lower(): v for k, v in h.headers.items() if k.lower() != "authorization"},
            },
        )

    def reply(
        self, h: BaseHTTPRequestHandler, status: int, body: object, headers: dict[str, str] | None = None
    ) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)
