"""A small identity provider on 127.0.0.1 for ``tokend demo`` and for tests.

It speaks both dialects tokend must handle, EventBookings' JSON body with the client in it
and RFC 6749's form body with HTTP Basic, issues refresh tokens and rotates them. Stdlib
only, so the demo runs on a machine with nothing but Python.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tokend.devtools.token_requests import basic_credentials, decode_body

TOKEN_PATH = "/connect/token"


@dataclass
class IdpEvent:
    """One answered request: what a demo prints and a test counts."""

    at: float
    client_id: str | None
    grant_type: str | None
    wire: str  # "json" or "form"
    status: int
    access_token: str | None = field(default=None, repr=False)


class IdentityProvider:
    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        lifetime: int = 15,
        host: str = "127.0.0.1",
        port: int = 0,
        on_event: Callable[[IdpEvent], None] | None = None,
        stamp_expiry: bool = False,
    ) -> None:
        self.clients = dict(clients)
        self.lifetime = lifetime
        # Tokens that carry their own expiry (ms): a reader can judge one without asking us.
        self.stamp_expiry = stamp_expiry
        self.on_event = on_event
        self.events: list[IdpEvent] = []
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> client id
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{TOKEN_PATH}"

    def start(self) -> IdentityProvider:
        self._thread = threading.Thread(target=self._server.serve_forever, name="idp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- the protocol

    def answer(self, authorization: str, params: Mapping[str, str] | None) -> tuple[int, dict[str, Any]]:
        """Decide the response to one token request: (status, JSON body)."""
        if params is None:
            return 400, {"error": "invalid_request", "error_description": "unreadable body"}
        client_id, secret = _client_credentials(authorization, params)
        grant = params.get("grant_type")
        if client_id is None or not secrets.compare_digest(
            self.clients.get(client_id, "\0no-such-client"), secret or ""
        ):
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        if grant == "refresh_token":
            with self._lock:
                owner = self._refresh_tokens.pop(params.get("refresh_token", ""), None)
            if owner != client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
        elif grant != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        refresh = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[refresh] = client_id
        prefix = f"demo-{int((time.time() + self.lifetime) * 1000)}-" if self.stamp_expiry else "demo-"
        issued = {
            "access_token": prefix + secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": refresh,
            "scope": params.get("scope") or "api",
        }
        return 200, issued

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "tokend-demo-idp"

            def do_POST(self) -> None:
                if self.path.split("?")[0] != TOKEN_PATH:
                    self._reply(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                wire, params = decode_body(self.headers.get("Content-Type", ""), body)
                authorization = self.headers.get("Authorization", "")
                status, payload = idp.answer(authorization, params)
                self._reply(status, payload)
                known = params or {}
                event = IdpEvent(
                    time.time(),
                    _client_credentials(authorization, known)[0],
                    known.get("grant_type"),
                    wire,
                    status,
                    payload.get("access_token"),
                )
                with idp._lock:
                    idp.events.append(event)
                if idp.on_event is not None:
                    idp.on_event(event)

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints events itself, with fingerprints only

        return Handler


def _client_credentials(authorization: str, params: Mapping[str, str]) -> tuple[str | None, str | None]:
    basic = basic_credentials(authorization)
    if basic is not None:
        return basic
    if authorization.startswith("Basic "):
        return None, None
    return params.get("client_id"), params.get("client_secret")


def main(argv: list[str] | None = None) -> int:
    """``python -m tokend.devtools.idp``: the demo's identity provider on its own, for
    trying a config, ``tokend exec`` or fleet mode against short-lived tokens. One line per
    request, with the token's fingerprint only."""
    import argparse
    import signal

    from tokend.core.tokens import fingerprint
    from tokend.devtools.arguments import whole_number

    parser = argparse.ArgumentParser(prog="python -m tokend.devtools.idp", description=main.__doc__)
    parser.add_argument(
        "--port", type=whole_number(0, 65535), default=0, help="on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--lifetime", type=whole_number(1, 86400), default=15, help="seconds a token lives (default: 15)"
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID=SECRET",
        help="a client it knows (repeatable; default: demo=demo-secret)",
    )
    args = parser.parse_args(argv)
    if any("=" not in c or c.startswith("=") or c.endswith("=") for c in args.client):
        parser.error("--client wants ID=SECRET")
    clients = dict(c.split("=", 1) for c in args.client) or {"demo": "demo-secret"}

    def show(event: IdpEvent) -> None:
        token = fingerprint(event.access_token) if event.access_token else "-"
        who = event.client_id if event.client_id in clients else "(unknown client)"
        grant = (
            event.grant_type
            if event.grant_type in ("client_credentials", "refresh_token")
            else "(other grant)"
        )
        print(
            f"{time.strftime('%H:%M:%S')} {event.status} {who} {grant} {token}",
            flush=True,
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        provider = IdentityProvider(clients, lifetime=args.lifetime, port=args.port, on_event=show)
    except OSError as exc:  # the port is taken, most likely
        parser.exit(
            1, f"python -m tokend.devtools.idp: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n"
        )
    with provider as idp:
        print(
            f"token endpoint {idp.url}, {args.lifetime}-second tokens, clients: {', '.join(clients)}",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
