"""The local token endpoint and the health endpoints, as an aiohttp application.

``GET /v1/token/NAME`` answers from the daemon's memory (:class:`~tokend.core.local_access.Board`):
no identity-provider request per call, and never an expired token (503 with
``Retry-After`` while there is none valid). On a unix socket the caller is known by the
kernel (SO_PEERCRED, and SO_PEERGROUPS for its supplementary groups) and judged by
:func:`~tokend.core.local_access.may_read`; over TCP the guards of
:func:`~tokend.core.local_access.tcp_refusal` apply, and only a credential that says
``endpoint_tcp = true`` is served. An unknown credential and a forbidden one get the same
404, so the endpoint is no oracle of which credentials exist.
``/livez``, ``/readyz`` and ``/readyz/NAME`` hold no token.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from tokend.config.schema import Listen
from tokend.core.health import HEALTH_PATHS, health_answer, visible_readiness
from tokend.core.local_access import (
    FORMATS,
    Board,
    Peer,
    error_body,
    loggable_path,
    may_read,
    may_read_over_tcp,
    retry_after,
    tcp_refusal,
    token_answer,
)

access_log = logging.getLogger("tokend.access")

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13
NOT_FOUND = error_body("not_found", "no such credential, or not one this caller may read")
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_of(request: web.Request) -> Peer | None:
    """The caller on a unix socket, from the kernel; None if it cannot be told."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    gids = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)  # 256 groups: CPython's most
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        pass  # an older kernel: the primary group only
    return Peer(pid, uid, frozenset(gids))


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=body, content_type="application/json", headers={**NO_STORE, **(headers or {})}
    )


def tcp_guard(
    listen: Listen, *, need_flag: Callable[[str], bool]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The TCP guards as a middleware (none on a unix socket: the kernel knows the caller)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if listen.path is None:
            refusal = tcp_refusal(
                request.headers, listen.host, listen.port, need_flag=need_flag(request.path)
            )
            if refusal is not None:
                return json_response(403, error_body("forbidden", refusal))
        return await handler(request)

    return guard


def endpoint_app(board: Board, listen: Listen, *, log_requests: bool = False) -> web.Application:
    """The token endpoint and health on one listener."""
    own_uid = os.geteuid()
    app = web.Application(middlewares=[tcp_guard(listen, need_flag=lambda path: path.startswith("/v1/"))])

    async def token(request: web.Request) -> web.Response:
        started = time.monotonic()
        name = request.match_info["name"]
        response, fingerprint = answer(request, name)
        if log_requests:
            access_log.info(
                "%s %s %d %.1fms token %s",
                request.method,
                loggable_path(request.raw_path),  # as it came: a decoded path could forge a line
                response.status,
                (time.monotonic() - started) * 1000,
                fingerprint or "none",
            )
        return response

    def answer(request: web.Request, name: str) -> tuple[web.Response, str | None]:
        fmt = request.query.get("format", "json")
        access = board.access(name)
        if listen.path is not None:
            peer = peer_of(request)
            if peer is None or not may_read(access, peer, own_uid):
                return json_response(404, NOT_FOUND), None
        elif not may_read_over_tcp(access):  # not endpoint_tcp: as if it did not exist
            return json_response(404, NOT_FOUND), None
        if fmt not in FORMATS:
            return json_response(
                400, error_body("invalid_request", f"format must be one of {', '.join(FORMATS)}")
            ), None
        current = board.token(name)
        now = time.time()
        if current is None:
            status = board.credential_status(name)
            wait = retry_after(status.next_refresh if status else None, now)
            body = error_body("temporarily_unavailable", f"no valid token for {name} yet; tokend is trying")
            return json_response(503, body, {"Retry-After": str(wait)}), None
        content_type, body = token_answer(current, now, fmt)
        return web.Response(body=body, content_type=content_type, headers=NO_STORE), current.fingerprint

    add_health(app, board, listen)
    app.router.add_get("/v1/token/{name}", token)
    return app


def add_health(app: web.Application, board: Board, listen: Listen | None = None) -> None:
    """The health paths; on a unix socket each caller sees only the credentials it may read
    (the same rule as the token's, so /readyz/NAME is no oracle for names and errors)."""
    own_uid = os.geteuid()

    async def health(request: web.Request) -> web.Response:
        state = board.health()
        if listen is not None and listen.path is not None:
            peer = peer_of(request)
            state = visible_readiness(
                state, lambda name: peer is not None and may_read(board.access(name), peer, own_uid)
            )
        status, body = health_answer(state, request.path)
        return json_response(status, body)

    for path in HEALTH_PATHS:
        app.router.add_get(path, health)
