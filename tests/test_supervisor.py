"""tokend/daemon/supervisor.py (its options, daemon/exec_options.py; its process edges,
io/child_process.py): its decisions as pure functions, and ``tokend exec
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
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokend.core.results import Attempt, Result
from tokend.core.tokens import Token
from tokend.daemon.exec_options import Supervision, parse_on_rotate, parse_signal, parse_stop_timeout
from tokend.daemon.supervisor import exit_code, rotated
from tokend.io.child_process import Process, orphaned

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


def test_a_group_is_orphaned_unless_a_member_has_a_parent_in_another_group_of_its_session() -> None:
    shell, tokend, child = Process(1, 1, 1), Process(100, 200, 100), Process(200, 300, 100)
    table = {100: Process(1, 100, 100), 200: tokend, 300: child}
    assert not orphaned(200, 100, table)  # the shell (100), its parent: a job it controls
    assert not orphaned(300, 100, table)  # tokend is the program's parent, in its session
    assert orphaned(200, 100, {1: shell, 200: Process(1, 200, 200), 300: child})  # leader
    script = {100: Process(1, 100, 100), 150: Process(100, 200, 100), 200: Process(150, 200, 100)}
    assert not orphaned(200, 100, script)  # sh -c: its parent shares its group; that one's does not
    assert orphaned(200, 100, {200: tokend})  # a parent /proc does not show: another namespace


# --------------------------------------------------------------------------- real processes

# The child: records each start (pid, token, whether a secret variable reached it), and on
# SIGUSR1 the token it reads from the sink then. SIGTERM: records it and exits 0.
CHILD = r"""
import os, signal, sys, time
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
if mode == "late":  # a program slow to start: its handler comes late
    note("start", os.getpid(), os.environ["API_ACCESS_TOKEN"], "API_CLIENT_SECRET" in os.environ)
    time.sleep(1.2)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
if mode != "late":
    note("start", os.getpid(), os.environ["API_ACCESS_TOKEN"], "API_CLIENT_SECRET" in os.environ)
if mode == "master":  # gunicorn-like: a worker that leaves SIGHUP at its default (death)
    worker = os.fork()
    if worker == 0:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        note("worker", os.getpid())
        while True:
            signal.pause()
    signal.signal(signal.SIGHUP, lambda signum, frame: note("hup", os.getpid()))
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

    def __init__(
        self,
        tmp: Path,
        config: Path,
        options: list[str],
        mode: str = "wait",
        command: list[str] | None = None,
        prefix: list[str] | None = None,
        terminal: int | None = None,
        output_to_terminal: bool = False,
    ) -> None:
        self.record = tmp / f"child-{time.monotonic_ns()}.log"
        self.record.touch()
        self.log_path = tmp / f"exec-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        sink = tmp / "out" / "api.token"
        tokend = [sys.executable, "-m", "tokend", "exec", "-c", str(config), "api", *options]
        child = [sys.executable, "-S", "-c", CHILD, str(self.record), str(sink), mode]  # -S: quick to listen
        if command is not None:
            child = [*command, str(self.record)]
        self.proc = subprocess.Popen(  # tokend, or what starts it (prefix)
            [*(prefix or []), *tokend, "--", *child],
            stdin=terminal,
            stdout=terminal if output_to_terminal else self._log,
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
            for pid in {int(words[0]) for words in self.lines("grand") + self.lines("worker")}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
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

    def start(
        *options: str,
        mode: str = "wait",
        command: list[str] | None = None,
        prefix: list[str] | None = None,
        terminal: int | None = None,
        output_to_terminal: bool = False,
    ) -> Exec:
        process = Exec(tmp_path, config, list(options), mode, command, prefix, terminal, output_to_terminal)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def alive(pid: int) -> bool:
    """Running: a zombie (ended, waiting for whichever init adopted it to reap it) is not."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def state(pid: int) -> str:
    """The kernel's word for the process: R, S, T (stopped), Z; "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return ""


def zombies_of(parent: int) -> int:
    """How many ended children of ``parent`` wait for it to reap them."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended and reaped while we looked
        count += fields[0] == "Z" and fields[1] == str(parent)
    return count


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
    # Ctrl-C: passed on, and the child's death by SIGINT is tokend's own (a shell says 130).
    tokend.proc.send_signal(signal.SIGINT)
    assert tokend.proc.wait(10) == -signal.SIGINT


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


@pytest.mark.parametrize(("mode", "code"), [("exit7", 7), ("kill", -signal.SIGKILL)])
def test_the_childs_exit_passes_through(idp: TokenEndpoint, tmp_path: Path, mode: str, code: int) -> None:
    """An exit code is tokend's exit code; a death by signal N is tokend's death by N (as a
    plain exec would give: systemd counts SIGTERM clean, exit 143 a failure)."""
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


def test_a_child_killed_by_sigterm_makes_tokend_die_of_sigterm(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    result = run_tokend(
        "exec", "-c", config, "api", "--on-rotate", "restart", "--", sys.executable, "-S", "-c", suicide,
        tmp=tmp_path, timeout=20,
    )  # fmt: skip
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr


# The program a wrapper script starts: records its pid and whether an earlier one (the one
# a restart replaced) is still running; a SIGTERM is recorded and ignored (a slow stop).
GRANDCHILD = r"""
import os, signal, sys
record = sys.argv[1]
def note(*words):
    with open(record, "a") as f:
        f.write(" ".join(map(str, words)) + "\n")
with open(record) as f:
    earlier = [int(line.split()[1]) for line in f if line.startswith("grand ")]
for pid in earlier:
    try:
        os.kill(pid, 0)
        note("overlap", pid, os.getpid())
    except ProcessLookupError:
        pass
note("grand", os.getpid(), os.environ["API_ACCESS_TOKEN"])
signal.signal(signal.SIGTERM, lambda signum, frame: note("term", os.getpid()))
while True:
    signal.pause()
"""


def test_a_restart_waits_for_the_childs_own_children_and_kills_them_at_the_stop_timeout(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    """``sh -c 'prog & wait'``: the shell exits on SIGTERM at once, its program does not.
    The next child starts only when the old group is empty (SIGKILL at the stop timeout),
    and tokend leaves nothing behind when it exits."""
    idp.expires_in = 2
    wrapper = ["sh", "-c", 'trap "exit 0" TERM; "$0" -S -c "$1" "$2" & wait', sys.executable, GRANDCHILD]
    tokend = supervised("--on-rotate", "restart", "--stop-timeout", "500ms", command=wrapper)
    wait_for(lambda: len(tokend.lines("grand")) >= 2, 20, "a restart of the wrapped program")
    assert not tokend.lines("overlap"), tokend.record.read_text()  # never two at once
    grand = [int(words[0]) for words in tokend.lines("grand")]
    assert not alive(grand[0])
    assert "killing it" in tokend.log  # the stop timeout applied to the grandchild
    tokend.proc.send_signal(signal.SIGTERM)  # the shell exits 0; its program ignores SIGTERM
    assert tokend.proc.wait(10) == 0
    assert not any(alive(pid) for pid in grand), tokend.record.read_text()


def test_signals_passed_on_reach_the_childs_pid_not_its_workers(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    """A gunicorn-like master passes SIGHUP on to its workers itself; sent to the whole
    group, a worker that leaves SIGHUP at its default would die of it."""
    idp.expires_in = 3600
    tokend = supervised("--on-rotate", "restart", mode="master")
    wait_for(lambda: tokend.lines("worker"), 10, "the master's worker")
    ((worker,),) = tokend.lines("worker")
    tokend.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: tokend.lines("hup"), 10, "the master's SIGHUP")
    assert alive(int(worker)), "the worker got SIGHUP too"
    tokend.proc.send_signal(signal.SIGTERM)  # the master exits 0, leaving its worker: stopped too
    assert tokend.proc.wait(10) == 0
    assert not alive(int(worker))


def test_a_sigkilled_tokend_takes_its_child_with_it(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    idp.expires_in = 3600
    tokend = supervised("--on-rotate", "restart")
    wait_for(lambda: tokend.lines("start"), 10, "the child's start")
    ((pid, *_),) = tokend.lines("start")
    tokend.proc.kill()
    tokend.proc.wait(5)
    wait_for(lambda: not alive(int(pid)), 5, "the orphaned child's end")
    assert tokend.lines("term") == [[pid]]  # it was asked to stop (the stop signal), not killed


def test_a_rotation_signal_waits_until_the_program_has_started(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    """A program that installs its handler 1.2 s after start, on 1 s tokens: a rotation
    signal sent before would kill it (SIGUSR1's default action); it is held."""
    idp.expires_in = 1
    tokend = supervised("--on-rotate", "SIGUSR1", mode="late")
    wait_for(lambda: tokend.lines("signal"), 15, "a rotation signal")
    (start,) = tokend.lines("start")  # the one program, alive throughout
    assert alive(int(start[0])) and tokend.proc.poll() is None
    assert "held until pid" in tokend.log


def test_a_cached_token_inside_its_refresh_window_is_replaced_before_the_first_start(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """A newcomer saw the program started with a cached token one second from due, and
    restarted a second later: a token already in its jitter window (here 4.5 s to 5.5 s of
    a 10 s life) is replaced before the first start instead."""
    idp.expires_in = 10
    extra = 'refresh_at = 0.5\nmin_ttl_margin = "0s"'
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=extra))
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    fetched_at = time.monotonic()  # after: the token is at least this old, whatever the load
    cached = (tmp_path / "out" / "api.token").read_text().strip()
    time.sleep(max(0.0, fetched_at + 4.6 - time.monotonic()))  # inside the window (or past it)
    tokend = Exec(tmp_path, config, ["--on-rotate", "restart"])
    try:
        wait_for(lambda: tokend.lines("start"), 10, "the child's first start")
        first = tokend.lines("start")[0][1]
        assert first != cached and first.startswith("tok-"), (first, cached)
    finally:
        tokend.stop()


# A shell's job control, the least of it: the session leader of a pty (its controlling
# terminal on stdin), it runs the command as a job in a process group of its own, in the
# terminal's foreground, and records what waitpid(WUNTRACED | WCONTINUED) tells of it. On
# SIGUSR1 it takes the terminal back, as a shell does after Ctrl-Z (then ``bg``). As
# "leader" it execs the command instead: the session leader, with no shell (docker run -it).
JOB_SHELL = r"""
import fcntl, os, signal, sys, termios
record, mode, *argv = sys.argv[1:]
def note(*words):
    with open(record, "a") as f:
        f.write(" ".join(map(str, words)) + "\n")
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
if mode == "leader":
    note("job", os.getpid())
    os.execvp(argv[0], argv)
job = os.fork()
if job == 0:
    os.setpgid(0, 0)
    os.execvp(argv[0], argv)
os.setpgid(job, job)
os.tcsetpgrp(0, job)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # as a shell: tcsetpgrp from the background
signal.signal(signal.SIGUSR1, lambda signum, frame: os.tcsetpgrp(0, os.getpgrp()))
note("job", job)
while True:
    _, status = os.waitpid(job, os.WUNTRACED | os.WCONTINUED)
    if os.WIFSTOPPED(status):
        note("stopped", os.WSTOPSIG(status))
    elif os.WIFCONTINUED(status):
        note("continued")
    else:
        note("ended", os.waitstatus_to_exitcode(status))
        sys.exit(0)
"""


class Terminal:
    """A pty, and ``tokend exec`` run as a job of :data:`JOB_SHELL` on it."""

    def __init__(self, tmp: Path) -> None:
        self.master, self.slave = os.openpty()
        self.jobs = tmp / f"jobs-{time.monotonic_ns()}.log"
        self.jobs.touch()

    def shell(self, mode: str = "job") -> list[str]:
        return [sys.executable, "-c", JOB_SHELL, str(self.jobs), mode]

    def lines(self, kind: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.jobs.read_text().splitlines() if line.startswith(kind)]

    def job(self) -> int:
        wait_for(lambda: self.lines("job"), 10, "the shell's job")
        return int(self.lines("job")[0][0])

    def end(self, tokend: Exec) -> None:
        """SIGCONT and SIGTERM to the job (SIGKILL if it stays), and the shell ends with it."""
        if not self.lines("job"):
            return
        pid = int(self.lines("job")[0][0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        try:
            tokend.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            tokend.proc.wait(10)

    def read(self) -> str:
        """What was written to the terminal so far (kept for the secrets check)."""
        os.set_blocking(self.master, False)
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.master, 65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode(errors="replace")
        SECRETS.output("the terminal", text)
        return text

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    pty = Terminal(tmp_path)
    yield pty
    pty.close()


def test_ctrl_z_stops_the_program_and_tokend_and_sigcont_runs_both_again(
    supervised: Callable[..., Exec], terminal: Terminal
) -> None:
    """The terminal's Ctrl-Z reaches tokend's group, not the program's: passed on to the
    program's group, then tokend stops, and the shell sees its job stopped; ``fg``'s SIGCONT
    to tokend's group is passed back, and the refreshes go on."""
    tokend = supervised("--on-rotate", "SIGUSR1", prefix=terminal.shell(), terminal=terminal.slave)
    pid = terminal.job()
    try:
        wait_for(lambda: tokend.lines("start"), 10, "the program's start")
        child = int(tokend.lines("start")[0][0])
        wait_for(lambda: os.tcgetpgrp(terminal.master) == pid, 5, "tokend in the terminal's foreground")
        assert os.getpgid(child) == child != pid  # the program in a group of its own
        os.write(terminal.master, b"\x1a")  # Ctrl-Z (VSUSP): SIGTSTP to the foreground group
        wait_for(lambda: state(child) == "T", 5, f"the program stopped (it is {state(child)!r})")
        wait_for(lambda: state(pid) == "T", 5, f"tokend stopped (it is {state(pid)!r})")
        wait_for(lambda: terminal.lines("stopped"), 5, "the shell to see its job stopped")
        os.killpg(pid, signal.SIGCONT)  # fg
        wait_for(lambda: state(pid) in ("R", "S"), 5, f"tokend running (it is {state(pid)!r})")
        wait_for(lambda: state(child) in ("R", "S"), 5, f"the program running (it is {state(child)!r})")
        signalled = len(tokend.lines("signal"))
        wait_for(lambda: len(tokend.lines("signal")) > signalled, 15, "a rotation after fg")
        assert [words[0] for words in tokend.lines("start")] == [str(child)]  # the one program
    finally:
        terminal.end(tokend)
    assert terminal.lines("ended") == [["0"]], terminal.jobs.read_text()
    assert "SIGTSTP: stopping process group" in tokend.log


def test_ctrl_z_without_a_shell_is_ignored_as_the_kernel_ignores_it(
    supervised: Callable[..., Exec], terminal: Terminal
) -> None:
    """tokend the session leader of its terminal (``docker run -it``): its group is
    orphaned, nobody would continue it, and the kernel drops a terminal's stop for such a
    group; so does tokend, for itself and its program."""
    tokend = supervised("--on-rotate", "SIGUSR1", prefix=terminal.shell("leader"), terminal=terminal.slave)
    pid = terminal.job()
    try:
        wait_for(lambda: tokend.lines("start"), 10, "the program's start")
        child = int(tokend.lines("start")[0][0])
        assert pid == tokend.proc.pid == os.getsid(pid) and os.tcgetpgrp(terminal.master) == pid
        os.write(terminal.master, b"\x1a")
        wait_for(lambda: "SIGTSTP: ignored" in tokend.log, 5, "tokend to take the Ctrl-Z")
        assert state(pid) in ("R", "S") and state(child) in ("R", "S")
        signalled = len(tokend.lines("signal"))
        wait_for(lambda: len(tokend.lines("signal")) > signalled, 15, "a rotation after the Ctrl-Z")
    finally:
        terminal.end(tokend)


def test_a_background_job_under_stty_tostop_writes_its_log_and_goes_on(
    supervised: Callable[..., Exec], terminal: Terminal
) -> None:
    """A job the shell put in the background (``bg``) while ``stty tostop``: its own log
    lines must not stop tokend (leaving its program unsupervised), nor, SIGTTOU being
    caught for job control, make each write fail and start again for ever (the main thread
    spun at 100% CPU). They are written, and the rotations go on."""
    attributes = termios.tcgetattr(terminal.slave)
    attributes[3] |= termios.TOSTOP
    termios.tcsetattr(terminal.slave, termios.TCSANOW, attributes)
    tokend = supervised(
        "--on-rotate", "SIGUSR1", prefix=terminal.shell(), terminal=terminal.slave, output_to_terminal=True
    )
    pid = terminal.job()
    try:
        wait_for(lambda: tokend.lines("start"), 10, "the program's start")
        wait_for(lambda: os.tcgetpgrp(terminal.master) == pid, 5, "tokend in the terminal's foreground")
        tokend.proc.send_signal(signal.SIGUSR1)  # the shell takes the terminal back
        wait_for(lambda: os.tcgetpgrp(terminal.master) == tokend.proc.pid, 5, "the shell in the foreground")
        signalled = len(tokend.lines("signal"))
        wait_for(lambda: len(tokend.lines("signal")) >= signalled + 2, 15, "two rotations, each logged")
        assert state(pid) in ("R", "S") and not terminal.lines("stopped"), terminal.jobs.read_text()
        assert "sending SIGUSR1" in terminal.read()  # the main thread's log lines, written
    finally:
        terminal.end(tokend)


# A program that leaves 300 orphans behind, each of which ends at once: a double fork, the
# middle process reaped by the program, the grandchild re-parented to tokend (the subreaper).
ORPHANS = r"""
import os, signal, sys
record = sys.argv[1]
def note(*words):
    with open(record, "a") as f:
        f.write(" ".join(map(str, words)) + "\n")
note("start", os.getpid())
for _ in range(300):
    middle = os.fork()
    if middle == 0:
        os.fork()
        os._exit(0)
    os.waitpid(middle, 0)
note("orphaned", 300)
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
while True:
    signal.pause()
"""


def test_orphans_are_reaped_as_they_end_not_at_the_heartbeat(
    supervised: Callable[..., Exec], idp: TokenEndpoint
) -> None:
    """Each ends at once, a zombie until tokend reaps it: on SIGCHLD, well before the 30 s
    heartbeat, which was the only time tokend reaped while its program ran."""
    idp.expires_in = 3600  # no restart, whose wait for the group would reap them anyway
    tokend = supervised("--on-rotate", "restart", command=[sys.executable, "-S", "-c", ORPHANS])
    wait_for(lambda: tokend.lines("orphaned"), 20, "the program's orphans")
    wait_for(lambda: zombies_of(tokend.proc.pid) == 0, 5, "tokend to reap its adopted orphans")
    assert tokend.proc.poll() is None and "Traceback" not in tokend.log
