"""The test identity provider: a scriptable token endpoint behind pytest-httpserver, and
the record of every secret it received and token it issued (every test checks that none of
them appears in what tokend printed)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tokend.devtools.token_requests import basic_credentials, decode_body


class Secrets:
    """What must never leave its own place, and what tokend printed, for one test."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.outputs: list[tuple[str, str]] = []

    def add(self, *values: object) -> None:
        self.values.update(v for v in values if isinstance(v, str) and len(v) >= 5)

    def output(self, where: str, text: str) -> None:
        self.outputs.append((where, text))

    def leaks(self) -> list[tuple[str, str]]:
        return [(where, value) for where, text in self.outputs for value in self.values if value in text]


SECRETS = Secrets()


@dataclass
class Seen:
    """One request as the identity provider received it."""

    path: str
    headers: Mapping[str, str]
    content_type: str
    raw: bytes
    params: dict[str, str]
    at: float = 0.0  # when it arrived (time.time())

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return basic_credentials(self.headers.get("Authorization", ""))


@dataclass
class TokenEndpoint:
    """A loopback IdP: answers scripted responses first, then issues ``tok-N`` tokens."""

    server: HTTPServer
    expires_in: int | None = 3600
    refresh_tokens: bool = False
    seen: list[Seen] = field(default_factory=list)
    script: list[Callable[[Seen], Response]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued_at: dict[str, float] = field(default_factory=dict)  # token -> when it was issued
    fault: Callable[[Seen], Response] | None = None  # answers every request while set

    def expires_at(self, token: str) -> float:
        """When ``token`` runs out, by the IdP's own clock and lifetime."""
        assert self.expires_in is not None
        return self.issued_at[token] + self.expires_in

    @property
    def url(self) -> str:
        return self.server.url_for("/connect/token")

    def issued(self, n: int) -> str:
        return f"tok-{n}"

    def then(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Queue one canned answer for the next request."""
        payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        if isinstance(body, dict):
            SECRETS.add(body.get("access_token"), body.get("refresh_token"))

        def answer(_: Seen) -> Response:
            return Response(
                payload, status=status, headers=dict(headers or {}), content_type="application/json"
            )

        self.script.append(answer)

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        ctype = request.headers.get("Content-Type", "")
        params = decode_body(ctype, raw)[1] or {}  # as the demo's identity provider reads it
        seen = Seen(request.path, dict(request.headers), ctype, raw, params, time.time())
        SECRETS.add(
            params.get("client_secret"), params.get("refresh_token"), (seen.basic_auth or ("", ""))[1]
        )
        with self.lock:
            self.seen.append(seen)
            fault = self.fault
            scripted = self.script.pop(0) if self.script and fault is None else None
            n = next(self.counter) if scripted is None and fault is None else 0
            if n:
                self.issued_at[self.issued(n)] = seen.at
        if fault is not None:
            return fault(seen)
        if scripted is not None:
            return scripted(seen)
        body: dict[str, Any] = {"access_token": self.issued(n), "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if self.refresh_tokens:
            body["refresh_token"] = f"refresh-{n}"
        SECRETS.add(body["access_token"], body.get("refresh_token"))
        return Response(json.dumps(body), content_type="application/json")


def answer(
    status: int,
    body: bytes | str = "",
    headers: Mapping[str, str] | None = None,
    ctype: str = "application/json",
) -> Callable[[Seen], Response]:
    """A fixed answer, for ``TokenEndpoint.fault``: ``idp.fault = answer(503)``."""
    return lambda _: Response(body, status=status, headers=dict(headers or {}), content_type=ctype)
