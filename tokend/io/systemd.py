"""sd_notify(3) without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``.

A no-op when not started by systemd with ``Type=notify``, so the daemon calls it freely.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address if address.startswith(("/", "\0")) else None
        self.watchdog_interval = watchdog_interval(environ)

    def notify(self, *lines: str) -> bool:
        """Send ``READY=1``, ``STATUS=…`` and the like; False if it could not be sent."""
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait: a supervisor that stops reading would otherwise freeze the
                # main loop once its queue is full. A dropped STATUS= is replaced by the next.
                sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError:
            return False
        return True


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when not asked."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
