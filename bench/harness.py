"""What every figure needs: timing commands, reading /proc, a daemon under a notify socket,
configs of N credentials, and min/median/max."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PYTHON = sys.executable
TOKEND = [PYTHON, "-m", "tokend"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "n": len(samples)}


def timed(
    command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        raise RuntimeError(f"{command[:4]}… exited {result.returncode}: {result.stderr[-300:]}")
    return elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns resolution where schedstat exists
    (utime + stime come in 10 ms ticks, too coarse for an idle daemon)."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()


def bench_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKEND_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "STATE_DIRECTORY"))
    }
    env["HOME"] = str(tmp)
    env.update(extra)
    return env


def sink_dir(tmp: Path) -> Path:
    """Where sinks go: tmpfs when there is one, as /run/tokend is in production (the state
    directory stays on disk, like /var/lib/tokend)."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private directory)
    if shm.is_dir() and os.access(shm, os.W_OK):
        out = Path(tempfile.mkdtemp(prefix="tokend-bench-", dir=shm))
        (tmp / "out").symlink_to(out)
        return out
    (tmp / "out").mkdir()
    return tmp / "out"


def credentials_config(
    tmp: Path, url: str, n: int, *, extra: str = "", sink: bool = True, first: int = 0
) -> str:
    """n credentials of one client, told apart by scope (so each has its own cache entry)."""
    secret = tmp / "bench.secret"
    if not secret.exists():
        secret.write_text("bench-secret\n")
    if not (tmp / "out").exists():
        sink_dir(tmp)
    blocks = []
    for i in range(first, first + n):
        block = (
            f'[credentials.c{i}]\ntoken_url = "{url}"\nclient_id = "bench"\n'
            f'client_secret_file = "{secret}"\nscope = "s{i}"\n{extra}\n'
        )
        if sink:
            block += f'[[credentials.c{i}.sink]]\npath = "{tmp}/out/c{i}.token"\n'
        blocks.append(block)
    return "\n".join(blocks)


def write_config(tmp: Path, body: str) -> Path:
    path = tmp / "tokend.toml"
    path.write_text(f'[tokend]\nstate_dir = "{tmp}/state"\nlog_level = "warning"\n\n{body}')
    return path


class Daemon:
    """``tokend run`` with a real NOTIFY_SOCKET, so READY=1 marks 'every sink written'."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.sock_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.started = time.perf_counter()
        self.log = open(tmp / "daemon.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*TOKEND, "run", "-c", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=bench_env(tmp, NOTIFY_SOCKET=str(self.sock_path)),
        )

    def wait_ready(self, timeout: float = 240) -> float:
        """Seconds from process start to READY=1."""
        self.sock.settimeout(timeout)
        while True:
            message = self.sock.recv(65536).decode()
            if "READY=1" in message:
                return time.perf_counter() - self.started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()


def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tokend-bench-"))
    _workdirs.append(path)
    return path


_workdirs: list[Path] = []


def cleanup() -> None:
    """Remove the run's directories, the tmpfs ones behind the out/ links first."""
    import shutil

    for path in _workdirs:
        out = path / "out"
        if out.is_symlink():
            shutil.rmtree(out.resolve(), ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }
