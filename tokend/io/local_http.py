"""tokend's local HTTP servers: one asyncio loop in a thread of its own, serving aiohttp
applications (the token endpoint, the proxies) on the sockets it binds.

Imported only when the config has ``[endpoint]`` or a proxy (``tokend[proxy]``): a daemon
without them loads no aiohttp. A unix socket is bound, given its owner, group and mode,
and only then listened on: until ``listen()`` no one can connect, so there is no moment
at which it is open to more than the config says. Its directory is judged as a sink's is
(StrictModes), and only a stale socket is ever replaced at its path.

A listener may instead be a socket systemd passes (``listen = "systemd:NAME"``): it is
taken from :class:`~tokend.io.socket_activation.Activation`, judged there, and served as
it is (its mode and group are systemd's; tokend never removes its path).

The limits are aiohttp's own where it has them (header line, field and count sizes; the
keep-alive timer, which aiohttp starts when a connection is made and restarts only after a
response, so a request head not complete by then is cut however slowly it trickles in: a
slow-loris holds one connection slot for at most that long and costs no thread) and ours
where it has none: connections per listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from tokend.config.schema import Listen
from tokend.io.files import socket_directory_problem
from tokend.io.socket_activation import Activation, ActivationError, adopt

log = logging.getLogger("tokend.http")

MAX_CONNECTIONS = 256  # per listener; more are answered 503 and closed
MAX_PEER_CONNECTIONS = 64  # per caller's uid on a unix socket: one local user cannot take all 256
IDLE_TIMEOUT = 15.0  # an idle keep-alive connection, or a request head not in by then, is closed
MAX_LINE = 8190  # bytes in the request line or one header line
MAX_FIELD = 8190
MAX_HEADERS = 64
STOP_GRACE = 2.0
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Site:
    """One listener and the application it serves. ``make_app`` is given the address
    actually listened on: the config's, or what a socket systemd passed is bound to (the
    TCP guards compare ``Host`` with it)."""

    label: str  # for logs: "endpoint", "proxy api[0]"
    listen: Listen
    make_app: Callable[[Listen], web.Application]
    socket_mode: int = 0o660
    socket_owner: str | int | None = None
    socket_group: str | int | None = None


class BindError(Exception):
    """A listener that cannot be opened; one line, naming its address."""


def _id(value: str | int | None, *, group: bool) -> int:
    if value is None:
        return -1
    if isinstance(value, int):
        return value
    try:
        return grp.getgrnam(value).gr_gid if group else pwd.getpwnam(value).pw_uid
    except KeyError:
        raise BindError(f"no {'group' if group else 'user'} named {value!r}") from None


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody listens on (a previous tokend's); refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"{path} exists and is not a socket; tokend only replaces a stale socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # no one answers: stale
        return
    finally:
        probe.close()
    if st.st_uid != os.geteuid():
        raise BindError(
            f"{path} is a live socket of uid {st.st_uid}, not tokend's: another user holds its name"
        )
    raise BindError(f"{path} is in use by another process")


def bind_unix(path: Path, mode: int, owner: str | int | None, group: str | int | None) -> socket.socket:
    """A unix socket at ``path``, its owner, group and mode set, not yet listening."""
    reason = socket_directory_problem(path.parent)
    if reason is not None:
        raise BindError(f"{path}: {reason}")
    uid, gid = _id(owner, group=False), _id(group, group=True)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode, follow_symlinks=False)  # noqa: PTH101 (before listen, no symlink followed)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Busy(asyncio.Protocol):
    """A connection over the limit: one 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(BUSY)
        transport.close()


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), or None."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        return int(struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1])
    except OSError:
        return None


class _PerPeer(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted against its caller's uid: over the
    cap, one 503 and closed before aiohttp sees it (so it holds no slot of the listener's)."""

    def __init__(self, inner: asyncio.Protocol, counts: dict[int, int], limit: int) -> None:
        self.inner, self.counts, self.limit = inner, counts, limit
        self.uid: int | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        uid = peer_uid(transport)
        if uid is not None and self.counts.get(uid, 0) >= self.limit:
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY)
            transport.close()
            self.refused = True  # aiohttp never saw it: nothing of it to tell
            return
        if uid is not None:
            self.uid = uid
            self.counts[uid] = self.counts.get(uid, 0) + 1
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        if self.uid is not None:
            left = self.counts.get(self.uid, 1) - 1
            if left:
                self.counts[self.uid] = left
            else:
                self.counts.pop(self.uid, None)
            self.uid = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _OneLine(logging.Filter):
    """aiohttp's own errors (a client gone mid-request, a malformed request) as one line
    without a traceback: bad input is never a traceback in tokend's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {type(record.exc_info[1]).__name__}"
            record.args = ()
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


SERVER_LOG = logging.getLogger("tokend.http.server")
SERVER_LOG.addFilter(_OneLine())


def describe(listen: Listen) -> str:
    """An address for the log: a socket systemd passed says what it is bound to too."""
    if listen.fd_name is not None and (listen.path is not None or listen.host):
        bound = f"unix:{listen.path}" if listen.path is not None else str(replace(listen, fd_name=None))
        return f"systemd:{listen.fd_name} ({bound})"
    return str(listen)


class Changes:
    """Wakes coroutines on the loop when a credential's token may have changed; ``notify``
    may be called from any thread (the board's listener)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: dict[str, asyncio.Event] = {}

    def notify(self, name: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self._set, name)

    def _set(self, name: str) -> None:
        event = self.events.pop(name, None)
        if event is not None:
            event.set()

    async def wait(self, name: str, timeout: float) -> bool:
        """Until the next word about ``name``, at most ``timeout`` seconds; False: none came."""
        event = self.events.setdefault(name, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancel
                await event.wait()
        except TimeoutError:
            return False
        return True


class LocalHttp:
    """The loop's thread and its listeners; :meth:`start` opens them, :meth:`stop` ends it all."""

    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT, peer_limit: int = MAX_PEER_CONNECTIONS) -> None:
        # idle_timeout: a keyword for tests, which cut a slow client in a fraction of a second.
        self.idle_timeout = idle_timeout
        self.peer_limit = peer_limit
        self.loop = asyncio.new_event_loop()
        self.changes = Changes(self.loop)
        self.thread = threading.Thread(target=self._run, name="local-http", daemon=True)
        self.runners: list[web.AppRunner] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.unix_paths: list[Path] = []
        self.errors: list[str] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, sites: list[Site], activation: Activation | None = None) -> list[str]:
        """Open every site; a site that cannot be opened is logged and left out (the
        tokens matter more: sinks and the other sites go on). Sockets systemd passed that
        no site names are closed. Returns the errors."""
        self.thread.start()
        activation = activation or Activation([])
        for site in sites:
            try:
                bound = self._bind(site, activation)
            except (BindError, ActivationError, OSError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._error(f"{site.label}: cannot listen on {site.listen}: {text}")
                continue
            for sock, listen in bound:
                try:
                    self.call(self._serve(site, sock, listen))
                except Exception as exc:
                    sock.close()
                    self._error(f"{site.label}: cannot serve on {listen}: {type(exc).__name__}")
                    continue
                log.info("%s listening on %s", site.label, describe(listen))
        activation.close_rest()
        return self.errors

    def _error(self, error: str) -> None:
        log.error("%s", error)
        self.errors.append(error)

    def _bind(self, site: Site, activation: Activation) -> list[tuple[socket.socket, Listen]]:
        """The site's sockets and the address each listens on: one bound here, or every
        one systemd passed under the site's name, each judged (refused ones are errors)."""
        listen = site.listen
        if listen.fd_name is not None:
            fds = activation.take(listen.fd_name)
            if not fds:
                passed = ", ".join(activation.names()) or "none"
                raise BindError(
                    f"systemd passed no socket named {listen.fd_name!r} "
                    f"(FileDescriptorName=; passed and not taken: {passed})"
                )
            bound = []
            for fd in fds:
                try:
                    bound.append(adopt(fd, listen))
                except ActivationError as exc:
                    self._error(f"{site.label}: cannot listen on {listen}: {exc}")
            return bound
        if listen.path is not None:
            sock = bind_unix(listen.path, site.socket_mode, site.socket_owner, site.socket_group)
            self.unix_paths.append(listen.path)  # tokend's own: removed when it stops
            return [(sock, listen)]
        return [(bind_tcp(listen.host, listen.port), listen)]

    async def _serve(self, site: Site, sock: socket.socket, listen: Listen) -> None:
        runner = web.AppRunner(
            site.make_app(listen),
            handle_signals=False,
            access_log=None,
            logger=SERVER_LOG,
            shutdown_timeout=STOP_GRACE,
            # A caller who disconnects cancels its handler: a proxied request waiting on a
            # silent upstream lets go of its upstream connection at once.
            handler_cancellation=True,
            keepalive_timeout=self.idle_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None

        per_peer: dict[int, int] = {}  # this listener's open connections by the caller's uid
        unix = sock.family == socket.AF_UNIX

        def factory() -> asyncio.BaseProtocol:
            if len(handlers.connections) >= MAX_CONNECTIONS:
                return _Busy()
            if unix:
                return _PerPeer(handlers(), per_peer, self.peer_limit)
            return handlers()

        sock.setblocking(False)
        server = await self.loop.create_server(factory, sock=sock, backlog=128)
        self.runners.append(runner)
        self.servers.append(server)

    async def _shutdown(self) -> None:
        for server in self.servers:
            server.close()
        for runner in self.runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    def stop(self) -> None:
        """Close the listeners, let requests in flight end (briefly), stop the loop,
        and remove the unix sockets tokend made."""
        if self.thread.is_alive():
            try:
                self.call(self._shutdown(), timeout=STOP_GRACE + 1)
            except Exception as exc:
                log.debug("local servers did not stop cleanly: %s", type(exc).__name__)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_GRACE)
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
