"""What every figure needs: tokend installed as users get it, timing commands, reading
/proc, a daemon under a notify socket, configs of N credentials, and min/median/max."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

PYTHON = sys.executable  # runs the benchmark, the identity provider and the readers
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
VENV = Path(__file__).resolve().parent / ".venv-bench"
# What `pip install .` builds from: the package data (tokend/data) links to the example, the
# man pages and the units, which are copied as what they point at.
SOURCES = ("pyproject.toml", "README.md", "tokend", "tokend.toml.example", "man", "systemd")


# --------------------------------------------------------------------------- the install


@dataclass(frozen=True)
class Install:
    """tokend from a regular ``pip install`` (not editable) into a venv of its own, made
    from this interpreter: every figure runs tokend, and its Python baseline, from here.

    An editable install loads its finder (a .pth file) at every start of the interpreter,
    which costs the baseline ``python -c pass`` more than it costs tokend, in proportion.
    """

    venv: Path
    source: str  # sha256 of the source tree that was installed

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def tokend(self) -> str:
        return str(self.venv / "bin" / "tokend")  # what a user runs: the console script

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "regular (pip install, not editable), in the benchmark's own venv",
            "venv": str(self.venv),
            "source_sha256": self.source,
            "tokend_module": subprocess.run(
                [self.python, "-c", "import tokend; print(tokend.__file__)"],
                capture_output=True,
                text=True,
                cwd="/",
                check=True,
            ).stdout.strip(),
        }


_installed: list[Install] = []
_lock: list[TextIO] = []


def install(venv: Path = VENV) -> Install:
    """Install the working tree as it is now, unless the venv already holds exactly it.

    The venv is kept between runs (``bench/.venv-bench``, git-ignored) and rebuilt from
    scratch whenever the source or the interpreter changed; one run holds a lock on it, so
    two benchmarks cannot install under each other (nor measure each other).
    """
    if _installed:
        return _installed[0]
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock = open(venv.parent / f"{venv.name}.lock", "a")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"... waiting for another benchmark run to release {venv}", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    _lock.append(lock)
    with snapshot() as source:
        digest = tree_digest(source)
        stamp = venv / ".tokend-source"
        current = stamp.read_text().strip() if stamp.exists() else None
        if current != digest or not (venv / "bin" / "tokend").exists():
            print(f"... pip install . (regular) into {venv}", file=sys.stderr, flush=True)
            shutil.rmtree(venv, ignore_errors=True)
            make_venv(venv, source)
            stamp.write_text(digest + "\n")
    done = Install(venv, digest)
    module = done.describe()["tokend_module"]
    if not module.startswith(str(venv)):  # an editable or stray tokend would be measured instead
        raise RuntimeError(f"the benchmark venv imports tokend from {module}, not from {venv}")
    _installed.append(done)
    return done


@contextlib.contextmanager
def snapshot() -> Iterator[Path]:
    """A copy of what ``pip install .`` reads, so the build writes nothing into the tree
    (and sees one state of it, while others keep editing)."""
    tmp = Path(tempfile.mkdtemp(prefix="tokend-bench-src-"))
    try:
        for name in SOURCES:
            if (ROOT / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(ROOT / name, tmp / name, ignore=ignore)
            else:
                shutil.copy2(ROOT / name, tmp / name)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tree_digest(tree: Path) -> str:
    digest = hashlib.sha256(f"{sys.version}\0{getattr(sys, '_base_executable', PYTHON)}\0".encode())
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(tree)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def make_venv(venv: Path, source: Path) -> None:
    """``python -m venv`` and ``pip install SOURCE``, dependencies and all (from pip's
    cache when it has them). With a pip that can install into another interpreter
    (``--python``, pip 22.3), the venv needs no pip of its own: seconds less per build."""
    try:
        pip_version = tuple(int(p) for p in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pip_version = (0, 0)
    if pip_version >= (22, 3):
        run_quietly([PYTHON, "-m", "venv", "--without-pip", str(venv)])
        pip = [PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python")]
    else:
        run_quietly([PYTHON, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
    # [fleet]: redis-py and cryptography, for the fleet figures; [proxy]: aiohttp, for the
    # endpoint and proxy figures; each imported only when configured.
    run_quietly([*pip, "install", "--quiet", "--disable-pip-version-check", f"{source}[fleet,proxy]"])


def run_quietly(command: Sequence[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])}… exited {result.returncode}:\n{result.stderr[-2000:]}")


def installed() -> Install:
    if not _installed:
        raise RuntimeError("install() first")
    return _installed[0]


def bench_python() -> str:
    """The interpreter of the benchmark's venv: every Python baseline runs on it."""
    return installed().python


def tokend_command() -> list[str]:
    return [installed().tokend]


# --------------------------------------------------------------------------- measuring


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
            [*tokend_command(), "run", "-c", str(config)],
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


def figure(
    name: str,
    unit: str,
    value: Sequence[float],
    *,
    baseline: Sequence[float] | None = None,
    baseline_name: str = "",
    target: str,
    met: bool | None,
    extra: dict[str, Any] | None = None,
    ratio: float | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"figure": name, "unit": unit, "value": summary(value), "target": target}
    if baseline is not None:
        result["baseline"] = {"name": baseline_name, **summary(baseline)}
        base = summary(baseline)["median"]
        if ratio is None and base > 0:
            ratio = summary(value)["median"] / base
        if ratio is not None:
            result["ratio"] = ratio
    result["met"] = met
    if extra:
        result.update(extra)
    return result


# --------------------------------------------------------------------------- the figures
