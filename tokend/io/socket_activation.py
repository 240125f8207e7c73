"""The sockets systemd passes (socket activation: ``LISTEN_FDS``, ``LISTEN_PID``,
``LISTEN_FDNAMES``), taken once and judged before any is served.

A ``tokend.socket`` unit can own the endpoint's and the proxies' sockets, so that their
mode, owner and group are systemd's (``SocketMode=``, ``SocketUser=``, ``SocketGroup=``) and
tokend needs no chown. A listener says ``listen = "systemd:NAME"`` and gets the socket whose
``FileDescriptorName=`` is NAME (every one of them, when a unit listens on several
addresses under one name).

Nothing about a passed descriptor is trusted: the variables are for this process only when
``LISTEN_PID`` is its pid (an inherited environment meant for a parent is ignored, and its
descriptors left alone); each descriptor must be a socket (fstat), a listening stream
socket of a family tokend serves (``SO_ACCEPTCONN``, ``SO_TYPE``, ``SO_DOMAIN``), a unix
socket bound to a path (an abstract or unnamed one has no file mode: anyone in the network
namespace could connect), and a TCP socket on loopback unless the listener says
``allow_remote = true``, as for an address in the config. What the socket is bound to
(``getsockname``) becomes the listener's address, so the TCP guards compare ``Host`` with
it and the unix rules (SO_PEERCRED) apply to a unix one. Descriptors no listener takes are
closed, and the variables leave the environment, as ``sd_listen_fds(1)`` does, so no child
sees them.

Standard library only: a daemon without local servers still closes what it was passed
without importing aiohttp.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from tokend.config.schema import Listen
from tokend.config.urls import is_loopback_host

log = logging.getLogger("tokend.http")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
MAX_LISTEN_FDS = 256  # more than any tokend.socket passes; a larger LISTEN_FDS is refused
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
FAMILIES = {socket.AF_UNIX: "unix", socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


class ActivationError(Exception):
    """A passed socket tokend will not serve on; one line, naming it."""


class Activation:
    """The descriptors systemd passed this process, by ``FileDescriptorName=``; each is
    taken by at most one listener, and :meth:`close_rest` closes the others."""

    def __init__(self, fds: list[tuple[str, int]]) -> None:
        self._fds = list(fds)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Activation:
        """What ``environ`` says systemd passed, if it was passed to this very process;
        the variables are then removed from the process environment."""
        if "LISTEN_FDS" not in environ and "LISTEN_PID" not in environ:
            return cls([])
        fds = listen_fds(environ, os.getpid())
        for name in VARIABLES:
            os.environ.pop(name, None)
        for _, fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)  # no hook, no child process gets one
        return cls(fds)

    def names(self) -> list[str]:
        return [name for name, _ in self._fds]

    def take(self, name: str) -> list[int]:
        """Every descriptor passed under ``name`` (none: an empty list), now the caller's."""
        taken = [fd for fd_name, fd in self._fds if fd_name == name]
        self._fds = [(fd_name, fd) for fd_name, fd in self._fds if fd_name != name]
        return taken

    def close_rest(self) -> list[str]:
        """Close every descriptor no listener took (one a unit passes for nothing must not
        stay open in tokend); returns their names, for the log."""
        closed = []
        for name, fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
            closed.append(name)
        self._fds = []
        if closed:
            log.info(
                "closed %d socket(s) systemd passed that no listener names: %s",
                len(closed),
                ", ".join(closed),
            )
        return closed


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[str, int]]:
    """``sd_listen_fds_with_names``: (name, fd) pairs, fds from 3; none unless ``LISTEN_PID``
    is ``pid``. Names missing or miscounted are "unknown", as systemd's own library says."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        if "LISTEN_FDS" in environ:
            log.info(
                "LISTEN_FDS is set for another process (LISTEN_PID is not %d); not taking its sockets", pid
            )
        return []
    raw = environ.get("LISTEN_FDS", "").strip()
    if not raw.isdigit() or not 0 < int(raw) <= MAX_LISTEN_FDS:
        if raw != "0":
            log.warning(
                "LISTEN_FDS=%r is not a number of sockets from 1 to %d; taking none", raw[:20], MAX_LISTEN_FDS
            )
        return []
    count = int(raw)
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count:
        names = ["unknown"] * count
    return [(names[i], LISTEN_FDS_START + i) for i in range(count)]


def adopt(fd: int, listen: Listen) -> tuple[socket.socket, Listen]:
    """The passed descriptor ``fd`` as a listening socket for ``listen`` (``systemd:NAME``),
    and the address it is bound to (a unix path, or a host and port), or
    :class:`ActivationError`. The descriptor is closed when it is refused."""
    try:
        return _judge(fd, listen)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _judge(fd: int, listen: Listen) -> tuple[socket.socket, Listen]:
    where = f"fd {fd}"
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ActivationError(f"{where}: not an open descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ActivationError(f"{where}: not a socket")
    probe = socket.socket(fileno=os.dup(fd))  # to ask the kernel; the fd itself stays as it is
    try:
        family = probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        address = probe.getsockname()
    except OSError as exc:
        raise ActivationError(f"{where}: cannot be asked what it is ({exc.strerror})") from None
    finally:
        probe.close()
    if family not in FAMILIES:
        raise ActivationError(f"{where}: a socket of family {family}, not unix, IPv4 or IPv6")
    if kind != socket.SOCK_STREAM:
        raise ActivationError(f"{where}: not a stream socket (ListenStream=, not ListenDatagram=)")
    if not listening:
        raise ActivationError(f"{where}: not listening")
    if family == socket.AF_UNIX:
        if not isinstance(address, str) or not address.startswith("/"):
            raise ActivationError(
                f"{where}: a unix socket with no path (abstract or unnamed): no file mode keeps "
                "anyone from connecting"
            )
        found = Listen(path=Path(address), fd_name=listen.fd_name)
    else:
        host, port = address[0], int(address[1])
        if not listen.allow_remote and not is_loopback_host(host):
            raise ActivationError(
                f"{where}: listens on {host}, not a loopback address; whoever reaches it could "
                "use the tokens: set allow_remote = true to mean it"
            )
        found = Listen(host=host, port=port, fd_name=listen.fd_name, allow_remote=listen.allow_remote)
    sock = socket.socket(family, socket.SOCK_STREAM, fileno=fd)
    return sock, found
