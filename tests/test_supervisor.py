"""tokend/daemon/supervisor.py: its decisions as pure functions, and ``tokend exec
--on-rotate`` as real processes: tokend, a real child (a Python script that records every
token it starts with and every signal it receives) and a real token endpoint issuing 3 s
tokens."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokend.core.results import Attempt, Result
from tokend.core.tokens import Token
from tokend.daemon.supervisor import (
    Supervision,
    exit_code,
    parse_on_rotate,
    parse_signal,
    parse_stop_timeout,
    rotated,
)

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint, answer
from .support.processes import clean_env, run_tokend, wait_for

# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("returncode", "code"), [(0, 0), (7, 7), (-9, 137), (-15, 143), (-2, 130)])
def test_the_exit_code_is_the_childs_or_128_plus_its_signal(returncode: int, code: int) -> None:
    assert exit_code(returncode) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HUP", signal.SIGHUP),
        ("sigusr1", signal.SIGUSR1),
        (" SIGTERM ", signal.SIGTERM),
        ("15", signal.SIGTERM),
    ],
)
def test_signal_names_with_or_without_sig_and_ascii_numbers(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text, "--stop-signal") is expected


@pytest.mark.parametrize("text", ["SIGFOO", "", "H-P", "\u0661\u0665", "SIG\u0660", "99999", "0", "SIGHUP;"])
def test_unknown_signal_names_and_unicode_digits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"--stop-signal .* is not a signal name"):
        parse_signal(text, "--stop-signal")


def test_on_rotate_none_restart_or_a_catchable_signal() -> None:
    assert parse_on_rotate("none") is None
    assert parse_on_rotate("Restart") == Supervision(None)
    assert parse_on_rotate("usr1") == Supervision(signal.SIGUSR1)
    with pytest.raises(ValueError, match="cannot be caught"):
        parse_on_rotate("KILL")


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0), ("3600", 3600)]
)
def test_stop_timeouts(text: str, seconds: float) -> None:
    assert parse_stop_timeout(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"), [("2h", "over an hour"), ("\u0661\u0660s", "not a duration"), ("soon", "not a duration")]
)
def test_stop_timeouts_over_an_hour_or_not_durations_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_stop_timeout(text)


def token(value: str, now: float, lifetime: float = 3.0) -> Token:
    return Token(value, expires_at=now + lifetime, obtained_at=now)


def test_a_rotation_is_a_new_valid_token_and_in_signal_mode_one_every_sink_holds() -> None:
    now = 1_900_000_000.0
    old, new = token("old-token", now), token("new-token", now)
    assert rotated(Attempt("api", new, fetched=True), old.fingerprint, restart=True, now=now)
    assert not rotated(Attempt("api", old), old.fingerprint, restart=True, now=now)  # the same one
    failed = Attempt("api", old, Result.RETRYABLE_ERROR, request_failed=True, error="HTTP 500")
    assert not rotated(failed, old.fingerprint, restart=True, now=now)  # the child keeps running
    assert not rotated(Attempt("api", None, Result.RETRYABLE_ERROR), old.fingerprint, restart=True, now=now)
    half_written = Attempt("api", new, Result.RETRYABLE_ERROR, fetched=True, sink_errors=("disk full",))
    assert rotated(half_written, old.fingerprint, restart=True, now=now)  # the environment has it
    assert not rotated(half_written, old.fingerprint, restart=False, now=now)  # a sink has not
    assert not rotated(Attempt("api", new), old.fingerprint, restart=True, now=now + 5)  # expired


# --------------------------------------------------------------------------- real processes

# The child: records each start (pid, token, whether a secret variable reached it), and on
# SIGUSR1 the token it reads from the sink then. SIGTERM: records it and exits 0.
CHILD = r"""
import os, signal, sys
record, sink, mode = sys.argv[1:4]
def note(*words):
    with open(record, "a") as f:
        f.write(" ".join(map(str, words)) + "\n")
def on_usr1(signum, frame):
    with open(sink) as f:
        note("signal", os.getpid(), f.read().strip())
def on_term(signum, frame):
    note("term", os.getpid())
    sys.exit(0)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
note("start", os.getpid(), os.environ["API_ACCESS_TOKEN"], "API_CLIENT_SECRET" in os.environ)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode.startswith("exit"):
    sys.exit(int(mode[4:]))
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
while True:
    signal.pause()
"""
SECRET = "supervised-secret-0xC0FFEE"


class Exec:
    """``tokend exec --on-rotate …`` in the background, its output kept in a file."""

    def __init__(self, tmp: Path, config: Path, options: list[str], mode: str = "wait") -> None:
        self.record = tmp / f"child-{time.monotonic_ns()}.log"
        self.record.touch()
        self.log_path = tmp / f"exec-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        sink = tmp / "out" / "api.token"
        tokend = [sys.executable, "-m", "tokend", "exec", "-c", str(config), "api", *options]
        child = [sys.executable, "-S", "-c", CHILD, str(self.record), str(sink), mode]  # -S: quick to listen
        self.proc = subprocess.Popen(
            [*tokend, "--", *child],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=clean_env(tmp, API_CLIENT_SECRET=SECRET),
        )

    def lines(self, kind: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.record.read_text().splitlines() if line.startswith(kind)]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pid in {int(words[0]) for words in self.lines("start")}:  # no child left behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            self._log.close()
            SECRETS.output("tokend exec log", self.log)


@pytest.fixture
def supervised(idp: TokenEndpoint, tmp_path: Path) -> Iterator[Callable[..., Exec]]:
    """Start ``tokend exec`` on 3 s tokens, its secret read from $API_CLIENT_SECRET."""
    SECRETS.add(SECRET)
    idp.expires_in = 3
    block = credential_toml(idp.url, tmp_path).replace(
        f'client_secret_file = "{tmp_path}/api.secret"', 'client_secret_env = "API_CLIENT_SECRET"'
    )
    config = write_config(tmp_path, block)
    started: list[Exec] = []

    def start(*options: str, mode: str = "wait") -> Exec:
        process = Exec(tmp_path, config, list(options), mode)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restart_mode_restarts_the_child_with_each_new_token(supervised: Callable[..., Exec]) -> None:
    tokend = supervised("--on-rotate", "restart", "--stop-timeout", "2s")
    wait_for(lambda: len(tokend.lines("start")) >= 3, 15, "three starts of the child")
    starts = tokend.lines("start")[:3]
    pids, tokens = [s[0] for s in starts], [s[1] for s in starts]
    assert len(set(pids)) == 3 and len(set(tokens)) == 3, starts  # a new child, a new token
    assert [int(t.removeprefix("tok-")) for t in tokens] == sorted(
        int(t.removeprefix("tok-")) for t in tokens
    )
    assert all(s[2] == "False" for s in starts)  # no secret variable in the child's environment
    assert not alive(int(pids[0])) and not alive(int(pids[1]))
    order = tokend.record.read_text().splitlines()
    for old, new in itertools.pairwise(pids):  # asked to stop (if it was listening yet) first
        if f"term {old}" in order:
            assert order.index(f"term {old}") < next(
                i for i, x in enumerate(order) if x.startswith(f"start {new}")
            )
    assert tokend.proc.poll() is None


def test_a_child_that_ignores_the_stop_signal_is_killed_after_the_stop_timeout(
    supervised: Callable[..., Exec],
) -> None:
    tokend = supervised("--on-rotate", "restart", "--stop-timeout", "300ms", mode="stubborn")
    wait_for(lambda: len(tokend.lines("start")) >= 2, 15, "a restart despite SIGTERM being ignored")
    assert "killing it" in tokend.log
    first, second = tokend.lines("start")[:2]
    assert not alive(int(first[0])) and second[1] != first[1]
    # Ctrl-C: passed on, and the child's death by SIGINT is tokend's exit, 128 + 2.
    tokend.proc.send_signal(signal.SIGINT)
    assert tokend.proc.wait(10) == 130


def test_signal_mode_signals_the_child_after_the_sink_holds_the_new_token(
    supervised: Callable[..., Exec],
) -> None:
    tokend = supervised("--on-rotate", "SIGUSR1")
    wait_for(lambda: len(tokend.lines("signal")) >= 2, 15, "two signals to the child")
    (start,) = tokend.lines("start")  # one child, never restarted
    seen = [start[1]] + [words[1] for words in tokend.lines("signal")]
    assert all(words[0] == start[0] for words in tokend.lines("signal"))
    # What the child read in each handler was a token it had not seen: the sink came first.
    assert all(a != b for a, b in itertools.pairwise(seen)), seen


def test_sigterm_to_tokend_reaches_the_child_and_both_exit_promptly(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    idp.expires_in = 3600
    tokend = supervised("--on-rotate", "restart")
    wait_for(lambda: tokend.lines("start"), 10, "the child's start")
    (pid, *_), *_ = tokend.lines("start")
    started = time.monotonic()
    tokend.proc.send_signal(signal.SIGTERM)
    assert tokend.proc.wait(5) == 0  # the child's own exit code (it exits 0 on SIGTERM)
    assert time.monotonic() - started < 3
    assert tokend.lines("term") == [[pid]]
    assert not alive(int(pid))


@pytest.mark.parametrize(("mode", "code"), [("exit7", 7), ("kill", 137)])
def test_the_childs_exit_passes_through(idp: TokenEndpoint, tmp_path: Path, mode: str, code: int) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    record, sink = tmp_path / "child.log", tmp_path / "out" / "api.token"
    result = run_tokend(
        "exec", "-c", config, "api", "--on-rotate", "restart", "--",
        sys.executable, "-c", CHILD, record, sink, mode,
        tmp=tmp_path, timeout=20,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_refresh_leaves_the_child_running_until_the_idp_recovers(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    tokend = supervised("--on-rotate", "restart")
    wait_for(lambda: tokend.lines("start"), 10, "the child's start")
    idp.fault = answer(500, '{"error": "server_error"}')
    asked = len(idp.seen)
    wait_for(lambda: len(idp.seen) >= asked + 2, 15, "two refreshes failing")
    (first,) = tokend.lines("start")  # not restarted
    assert alive(int(first[0])) and tokend.proc.poll() is None
    idp.fault = None
    wait_for(lambda: len(tokend.lines("start")) >= 2, 15, "a restart once the IdP is back")
    second = tokend.lines("start")[1]
    assert second[1] != first[1] and second[0] != first[0]
    assert "refresh retryable_error" in tokend.log
    assert "Traceback" not in tokend.log


def test_a_command_that_cannot_start_is_127_like_a_shell(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend(
        "exec", "-c", config, "api", "--on-rotate", "HUP", "--", str(tmp_path / "no-such-program"),
        tmp=tmp_path, timeout=20,
    )  # fmt: skip
    assert result.returncode == 127, result.stderr
    assert "no-such-program" in result.stderr and "Traceback" not in result.stderr
