"""A real redis-server on 127.0.0.1, on a free port, without persistence: started, stopped
and started again on the same port (an outage), for fleet mode's tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import redis

from .processes import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, tmp: Path, password: str | None = None, extra: tuple[str, ...] = ()) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.tmp = tmp
        self.port = free_port()
        self.password = password
        self.extra = extra  # more redis-server options (the benchmark's --maxclients)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += ["--dir", str(self.tmp), "--logfile", str(self.log)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 10, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            self.client().ping()
        except Exception:
            return False
        return True

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """The same port again, empty (no persistence): what a Redis restart looks like."""
        self.stop()
        self.start()
