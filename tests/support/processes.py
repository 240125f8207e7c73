"""tokend as real processes: the command, a daemon, their environment and their output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from .endpoint import SECRETS

REPO = Path(__file__).resolve().parents[2]  # tests/support/processes.py -> the checkout


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment tokend sees: no inherited config, state or journald hints."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "TOKEND_",
                "STATE_DIRECTORY",
                "CONFIGURATION_DIRECTORY",
                "CREDENTIALS_DIRECTORY",
                "JOURNAL_STREAM",
                "XDG_",
            )
        )
    }
    env["HOME"] = str(tmp / "home")
    env.update(extra)
    return env


# Root reads every file whatever its mode; without these capabilities it reads like anyone.
WITHOUT_DAC_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def as_plain_user() -> list[str]:
    """A command prefix under which file permissions apply to us, or skip the test."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return WITHOUT_DAC_OVERRIDE


def run_tokend(
    *args: str | Path,
    tmp: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tokend", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env=dict(env) if env is not None else clean_env(tmp),
    )
    command = str(args[0]) if args else ""
    SECRETS.output(f"tokend {command} stderr", result.stderr)
    if command not in ("token", "exec"):  # the two whose stdout is the token's own place
        SECRETS.output(f"tokend {command} stdout", result.stdout)
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until ``predicate`` holds: waits for an observable event, never a fixed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class DaemonProcess:
    """A real ``tokend run`` in a subprocess, its stderr kept in a file."""

    def __init__(
        self,
        config: Path,
        tmp: Path,
        env: Mapping[str, str] | None = None,
        prefix: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),  # kept open in the child, at their numbers (socket activation)
    ) -> None:
        self.tmp = tmp
        self.log_path = tmp / f"tokend-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "tokend", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=dict(env) if env is not None else clean_env(tmp),
            pass_fds=pass_fds,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            SECRETS.output("tokend run log", self.log)
            for status in self.tmp.glob("**/status.json"):  # what `tokend status` shows
                SECRETS.output(str(status), status.read_text())


Start = Callable[..., "DaemonProcess"]
"""The ``daemons`` fixture: start(config, tmp, env=None, prefix=None) -> DaemonProcess."""


def distinct_tokens(sink: Path, count: int, timeout: float, what: str) -> set[str]:
    """Wait until ``sink`` has held ``count`` different tokens (a rotating daemon's proof),
    and return them; each read is parsed as the sink's readers parse it."""
    from .sinks import read_token

    seen: set[str] = set()

    def enough() -> bool:
        token = read_token(sink)
        if token is not None:
            seen.add(token)
        return len(seen) >= count

    wait_for(enough, timeout, what)
    return seen


def started_server(command: list[str], errors: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """A test server that prints ``PORT <n>`` once it listens (the third-party servers of
    tests/thirdparty do): the process and its port. A server that dies or says nothing in
    30 s fails the test with its stderr (kept in ``errors`` if given)."""
    import threading

    err = open(errors, "wb") if errors is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=REPO, text=True)
    finally:
        if errors is not None:
            err.close()  # type: ignore[union-attr]
    assert proc.stdout is not None
    timer = threading.Timer(30, proc.kill)  # a server that never says: its stdout ends
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("PORT "):
                return proc, int(line.split()[1])
    finally:
        timer.cancel()
    proc.kill()
    said = errors.read_text(errors="replace") if errors is not None else ""
    raise AssertionError(f"{' '.join(command[:3])} did not start: {said}")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
