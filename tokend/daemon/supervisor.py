"""``tokend exec --on-rotate restart|SIGNAL``: tokend stays the parent of the program.

A program that reads its token once, from its environment, outlives that token. Here
tokend keeps the credential fresh with the daemon's own machinery (a :class:`Runner` for
the one credential, the shared token cache and its per-identity lock, so a daemon next to
it and this never both ask the identity provider), and on each rotation either restarts
the child with the new token (stop signal, up to ``stop_timeout``, SIGKILL, start again)
or sends it a signal (its sinks are written before the observer hears of the attempt).

The shape is the daemon's (gunicorn's arbiter): signal handlers only queue; the main loop
takes signals, attempts and child exits off one queue and dispatches. Decisions are the
small pure functions at the top, tested directly.

Process groups: the child runs in a process group of its own, remembered until no process
is left in it. A restart sends the stop signal to the whole group and starts the next
child only once the group is empty (SIGKILL to the group at the stop timeout), so a
wrapper script's program never outlives a restart nor runs twice; tokend leaves the same
way (what is left of the group after the child gets the stop signal, then SIGKILL).
Signals passed on go to the child's pid alone, as a terminal's would reach a program that
shares its group with its workers: a gunicorn-like master passes them on itself, and its
workers must not get them twice. The price of the group: a child in a background group
cannot read the terminal (programs that do so want ``--on-rotate none``). Under systemd
(``Type=exec``) use ``KillMode=mixed``, so SIGTERM reaches tokend alone and is passed on
once, while the final SIGKILL still reaches every process of the unit.

Job control: the terminal's Ctrl-Z (SIGTSTP) reaches tokend's group, not the child's. It
is passed on to the child's whole group (as the terminal would have stopped the whole
job), then tokend stops itself with SIGSTOP, so the shell sees its job stopped; the shell's
SIGCONT (``fg``, ``bg``) continues tokend, which passes it back to the child's group. So
do SIGTTIN and SIGTTOU, when sent. As the kernel does for a stop signal's default action,
they are ignored in an orphaned process group, where no shell would continue the job
(tokend the session leader of a terminal, as in ``docker run -it``). tokend's own output
never brings them (``stty tostop`` in a background job): the main thread blocks them except
while it waits for an event, and the other threads always, so a write to the terminal goes
ahead instead of stopping tokend, or of a caught SIGTTOU restarting the write for ever.
The time spent stopped does not count against the stop timeout or the rotation grace.

A child subreaper (PR_SET_CHILD_SUBREAPER): the grandchildren a dead child leaves
re-parent to tokend, not to init, and tokend reaps them itself, on each SIGCHLD (the
handler queues one at a time; the heartbeat looks too). Otherwise a SIGKILLed grandchild
stays a zombie, and in the group, for as long as init takes to reap it (seconds under some
container inits; for ever when tokend *is* the container's init), and each restart would
wait for it; a program leaving short-lived orphans by the thousand would fill the process
table with zombies. Reaping never uses a plain ``waitpid(-1)``, which could take
the current child's exit status from its waiter thread: :func:`reap_strays` peeks with
``WNOWAIT`` and leaves the current child alone. The group is polled with ``killpg(pgid,
0)`` while it empties.

If tokend itself is SIGKILLed, the child gets the stop signal from the kernel
(PR_SET_PDEATHSIG), set by a few lines of Python that run between fork and the program's
exec (:data:`SHIM`, about 10 ms): ``preexec_fn`` is not safe with tokend's threads, and
``posix_spawn`` cannot call prctl. Its own children are not covered: nothing is left to
wait for them once tokend is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.config import CredentialConfig, parse_duration
from tokend.core import policy
from tokend.core.results import Attempt
from tokend.core.tokens import Token
from tokend.daemon.clock import Clock, SystemClock
from tokend.daemon.jobs import APSchedulerJobs, Jobs
from tokend.daemon.reporting import EventLog, Observer, Observers
from tokend.daemon.runner import Runner
from tokend.io.cache import TokenCache

log = logging.getLogger("tokend.exec")

# Passed on to the child; the first three also mean "stop": the child's exit is then ours.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
# Job control: passed on to the child's group, then tokend stops itself; SIGCONT comes back.
SUSPENDING = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# A terminal sends these to a background job that touches it: blocked while tokend works (see
# the module's docstring), so its own output never brings them.
TERMINAL_ACCESS = frozenset({signal.SIGTTIN, signal.SIGTTOU})
# Every signal whose handler queues it for the loop.
CAUGHT = (*FORWARDED, *SUSPENDING, signal.SIGCONT, signal.SIGCHLD)
MAX_STOP_TIMEOUT = 3600.0  # longer is a typo; systemd's own default is 90 s
STOP_GRACE = 1.0  # how long leaving waits for a refresh in flight (every write is atomic)
HEARTBEAT = 30.0  # as the daemon: wake the jobs, whose sleep does not count suspended time
CLOCK_JUMP = 2.0
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
GROUP_POLL = 0.05  # how often an emptying process group is looked at
# After SIGKILL to the group: what is still "there" then is a zombie its new parent does
# not reap (a container's init that never waits); going on beats waiting for ever.
KILL_GRACE = 2.0
# A rotation signal to a program still starting would find the signal's default action
# (SIGHUP, SIGUSR1: death) before its handler is installed: held until it has run this long.
ROTATE_GRACE = 2.0

# Run between fork and the program's exec: the kernel sends the stop signal to the child
# when tokend's main thread (the one that forked) ends, even by SIGKILL. If tokend died
# before the prctl, nobody is left to supervise: give up rather than run unwatched.
SHIM = """\
import os, sys
parent, signum, path, *argv = sys.argv[1:]
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(parent):
    os._exit(1)
try:
    os.execv(path, argv)
except OSError as exc:
    sys.stderr.write(f"tokend: exec {argv[0]}: {exc.strerror}\\n")
    os._exit(127 if exc.errno == 2 else 126)
"""


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True, slots=True)
class Supervision:
    """What ``--on-rotate``, ``--stop-signal`` and ``--stop-timeout`` asked for."""

    rotate_signal: signal.Signals | None  # None: restart on rotation
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0

    @property
    def restart(self) -> bool:
        return self.rotate_signal is None


def parse_signal(text: str, option: str) -> signal.Signals:
    """``HUP``, ``SIGHUP``, ``sighup`` or an ASCII number. Raises ValueError (one line)."""
    name = text.strip().upper()
    # isascii first: an Arabic-Indic one is a digit to str.isdigit and int(), no signal number.
    if name.isascii() and name.isdigit() and len(name) <= 3:
        try:
            return signal.Signals(int(name))
        except ValueError:
            pass
    elif name.isascii() and name.replace("_", "").isalnum():
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in signal.Signals.__members__:
            return signal.Signals[name]
    raise ValueError(f"{option} {text!r} is not a signal name")


def parse_on_rotate(text: str) -> Supervision | None:
    """``none`` (None: exec as before), ``restart``, or the signal to send."""
    word = text.strip().lower()
    if word == "none":
        return None
    if word == "restart":
        return Supervision(None)
    signum = parse_signal(text, "--on-rotate")
    if signum in UNCATCHABLE:
        raise ValueError(f"--on-rotate {text!r} cannot be caught by the program; use restart")
    if signum in STOPPING:  # passed on as a stop too: tokend would wait for an exit it caused
        raise ValueError(f"--on-rotate {text!r} would stop the program, not reload it; use restart")
    return Supervision(signum)


def parse_stop_timeout(text: str) -> float:
    """``10s``, ``1m30s``, ``500ms`` or ASCII seconds, at most an hour."""
    word = text.strip()
    try:
        seconds = float(word) if word.isascii() and word.isdigit() else parse_duration(word)
    except ValueError:
        raise ValueError(f'--stop-timeout {text!r} is not a duration such as "10s" or "1m"') from None
    if seconds > MAX_STOP_TIMEOUT:
        raise ValueError(f"--stop-timeout {text!r} is over an hour; is that a typo?")
    return seconds


def exit_code(returncode: int) -> int:
    """A child's end as a shell reports it: its code, or 128+N for signal N. tokend exits
    with the code, and dies of the signal itself (see :func:`leave`)."""
    return 128 - returncode if returncode < 0 else returncode


def rotated(attempt: Attempt, latest: str, *, restart: bool, now: float) -> bool:
    """Whether this attempt brings a token the child has not been given yet.

    A failed refresh keeps the old token (the child keeps running). In signal mode the
    child re-reads a sink, so a token some sink could not take is not news yet: the next
    attempt that writes every sink is.
    """
    token = attempt.token
    if token is None or token.fingerprint == latest or not policy.is_valid(token, now):
        return False
    return restart or not attempt.sink_errors


def start_failure_code(exc: OSError) -> int:
    """A shell's answer to a program it cannot run: 127 not found, 126 not executable."""
    return 127 if isinstance(exc, FileNotFoundError) else 126


def resolve(program: str, search_path: str) -> str:
    """The file ``execvp`` would run (the shim execs a path), or FileNotFoundError."""
    if "/" in program:
        if not Path(program).exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        return program  # the shim reports what exec says of it (126, 127)
    found = shutil.which(program, path=search_path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


def launch_argv(command: Sequence[str], search_path: str, death_signal: signal.Signals) -> list[str]:
    """What Popen runs: the shim that sets PR_SET_PDEATHSIG, then the program (Linux with
    a known interpreter), else the program itself."""
    path = resolve(command[0], search_path)
    if sys.platform != "linux" or not sys.executable:
        return [path, *command[1:]]
    shim = [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), str(int(death_signal))]
    return [*shim, path, *command]


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER, so the child's orphans are ours to reap (Linux; best effort)."""
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_strays(current: int | None) -> None:
    """Reap every ended child of tokend's but ``current`` (the child whose waiter thread
    reaps it): the orphans a subreaper inherits."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == current:
            return  # nothing ended, or only the current child (others: at the next look)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


@dataclass(frozen=True, slots=True)
class Process:
    """What /proc/<pid>/stat says of a process's place in job control."""

    ppid: int
    pgrp: int
    session: int


def orphaned(pgrp: int, session: int, processes: Mapping[int, Process]) -> bool:
    """POSIX's orphaned process group: no member has a parent in another group of the same
    session, so no shell is there to continue it once stopped."""
    for process in processes.values():
        parent = processes.get(process.ppid) if process.pgrp == pgrp else None
        if parent is not None and parent.pgrp != pgrp and parent.session == session:
            return False
    return True


def process_table() -> dict[int, Process]:
    """Every process /proc shows (empty where there is no /proc)."""
    found: dict[int, Process] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
                found[int(entry.name)] = Process(int(fields[1]), int(fields[2]), int(fields[3]))
            except (OSError, ValueError, IndexError):
                continue  # it ended while we looked
    return found


def job_control() -> bool:
    """Whether a stopped tokend has a shell to continue it: its group is not orphaned (or
    there is no /proc to tell)."""
    table = process_table()
    return not table or not orphaned(os.getpgrp(), os.getsid(0), table)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group (a zombie counts until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # one that changed its user: still there
        return True
    return True


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Attempted:
    """A refresh attempt finished (queued by a worker)."""

    attempt: Attempt


@dataclass(frozen=True)
class Exited:
    """A child ended (queued by its waiter thread)."""

    proc: subprocess.Popen[bytes]
    returncode: int


class AttemptQueue(Observer):
    """Hands every attempt to the main loop, which decides whether it is a rotation."""

    def __init__(self, put: Callable[[object], None]) -> None:
        self.put = put

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: Any) -> None:
        self.put(Attempted(attempt))


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask blocking the caught signals, so these are
    delivered to the main thread, whose queue wait they interrupt, and not to a worker
    (which would leave them pending until the main thread happened to wake)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def terminal_signals_open(mask: set[int | signal.Signals]) -> Iterator[None]:
    """The main thread takes SIGTTIN and SIGTTOU only inside (its mask the one tokend
    started with): while it waits for an event (any sent meanwhile were kept pending), and
    while it forks the child, which inherits that mask."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_ACCESS)


# --------------------------------------------------------------------------- the loop


class Supervisor:
    """One child, one credential. :meth:`run` returns how the child ended, as Popen says it
    (a negative number: killed by that signal); :func:`leave` makes it tokend's own end."""

    def __init__(
        self,
        cred: CredentialConfig,
        command: Sequence[str],
        environment: Callable[[Token], dict[str, str]],
        options: Supervision,
        token: Token,
        *,
        cache: TokenCache,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        jobs: Jobs | None = None,
    ) -> None:
        self.cred, self.command, self.environment, self.options = cred, list(command), environment, options
        self.clock = clock or SystemClock()
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.runner = Runner(
            jobs or APSchedulerJobs(self.clock),
            Observers([EventLog(), AttemptQueue(self.events.put)]),
            cache=cache,
            clock=self.clock,
            rng=random.Random(),
            environ=environ,
            on_ran=lambda name, first: None,
        )
        self.token = token  # the newest valid token: what a (re)started child gets
        self.latest = token.fingerprint
        self.child: subprocess.Popen[bytes] | None = None
        self.group: int | None = None  # the last child's process group, until it is empty
        self.started_at = 0.0  # monotonic: when the child started
        self.restarting = False  # the stop signal went out for a rotation
        self.kill_at: float | None = None  # monotonic: SIGKILL the child's group then
        self.give_up_at: float | None = None  # monotonic: stop waiting for a SIGKILLed group
        self.rotate_at: float | None = None  # monotonic: send the held rotation signal then
        self.stopping = False  # a stopping signal came: the child's exit is ours
        self.final: int | None = None  # how we end, decided; waiting for the group to empty
        self.outcome: int | None = None  # how we end, once nothing is left to wait for
        self.reap_queued = False  # a SIGCHLD is in the queue: another would add nothing
        self.mask: set[int | signal.Signals] = set()  # the main thread's, as tokend started
        self.next_beat = self.clock.monotonic() + HEARTBEAT
        self.wall_offset = self.clock.time() - self.clock.monotonic()

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._queue_signal) for signum in CAUGHT}
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_ACCESS)
        become_subreaper()
        try:
            self.start_child()
            if self.outcome is not None:  # it could not start: nothing else was
                return self.outcome
            with signals_blocked():
                self.runner.jobs.start()
            try:
                self.runner.add(self.cred)
                while self.outcome is None:
                    self.step()
            finally:
                self.runner.stop(STOP_GRACE)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            for signum, old in previous.items():
                signal.signal(signum, old)
        return self.outcome

    def _queue_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGCHLD:  # a program's orphans may end by the thousand
            if self.reap_queued:
                return
            self.reap_queued = True
        self.events.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def step(self) -> None:
        """The timers (SIGKILL after the stop timeout, a held rotation signal, the
        heartbeat, an emptying process group), then one event."""
        now = self.clock.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.kill_group(now)
        if self.rotate_at is not None and now >= self.rotate_at:
            self.rotate_at = None
            self.send_rotation()
        if now >= self.next_beat:
            self.beat(now)
        draining = self.child is None and self.group is not None
        if draining:
            self.check_group(now)
            if self.outcome is not None:
                return
        deadlines = [d for d in (self.next_beat, self.kill_at, self.rotate_at) if d is not None]
        if draining:
            deadlines.append(now + GROUP_POLL)
        try:
            with terminal_signals_open(self.mask):
                event = self.events.get(timeout=max(0.01, min(deadlines) - self.clock.monotonic()))
        except queue.Empty:
            return
        self.dispatch(event)

    def beat(self, now: float) -> None:
        self.next_beat = now + HEARTBEAT
        offset = self.clock.time() - now
        if abs(offset - self.wall_offset) > CLOCK_JUMP:
            self.wall_offset = offset
            with contextlib.suppress(Exception):  # the jobs may be shutting down
                self.runner.rearm_all()
        self.runner.jobs.wakeup()
        reap_strays(self.child.pid if self.child is not None else None)  # orphans left the group

    def dispatch(self, event: object) -> None:
        if isinstance(event, Exited):
            self.handle_exit(event)
        elif isinstance(event, Attempted):
            self.handle_attempt(event.attempt)
        elif isinstance(event, int):
            self.handle_signal(signal.Signals(event))

    # ----------------------------------------------------------------------- handlers

    def handle_signal(self, signum: signal.Signals) -> None:
        if signum is signal.SIGCHLD:
            self.reap_queued = False
            reap_strays(self.child.pid if self.child is not None else None)
            return
        if signum in SUSPENDING:
            self.suspend(signum)
            return
        if signum is signal.SIGCONT:  # tokend runs again (or was never stopped): so does its job
            if self.group is not None:
                log.info("SIGCONT: passing it on to process group %d", self.group)
                self.signal_group(signum)
            return
        if signum in STOPPING:
            self.stopping = True
        if self.child is None:  # between a stop and a start: nobody to pass it on to
            if self.stopping and self.final is None:
                self.final = -signum  # as tokend itself would have ended: of the signal
                if self.group is None:
                    self.outcome = self.final
                # else: a restart's stop is under way, its timeout armed; then we leave
            return
        log.info("%s: passing it on to the child (pid %d)", signum.name, self.child.pid)
        self.signal_child(signum)

    def suspend(self, signum: signal.Signals) -> None:
        """Stop as a job does: the child's whole group, then tokend (SIGSTOP, the default
        action being out of reach of a caught signal), unless no shell would continue it.
        Returns once continued; the SIGCONT is queued, and passed on by the loop."""
        if not job_control():
            log.info(
                "%s: ignored: tokend's process group is orphaned, nothing would continue it", signum.name
            )
            return
        if self.group is not None:
            log.info("%s: stopping process group %d, then tokend", signum.name, self.group)
            self.signal_group(signum)
        before = self.clock.monotonic()
        os.kill(os.getpid(), signal.SIGSTOP)
        self.resumed(self.clock.monotonic() - before)

    def resumed(self, paused: float) -> None:
        """The child was stopped as long as tokend: its timers wait that much longer."""
        if self.kill_at is not None:
            self.kill_at += paused
        if self.give_up_at is not None:
            self.give_up_at += paused
        if self.rotate_at is not None:
            self.rotate_at += paused
        self.started_at += paused
        self.next_beat = self.clock.monotonic()  # look at the clocks and wake the jobs now

    def handle_attempt(self, attempt: Attempt) -> None:
        if not rotated(attempt, self.latest, restart=self.options.restart, now=self.clock.time()):
            return
        assert attempt.token is not None
        self.token, self.latest = attempt.token, attempt.token.fingerprint
        if self.stopping or self.final is not None:
            return
        if self.child is None:
            if self.group is None and not self.restarting:  # a restart found no valid token
                self.start_child()  # to start with: now there is
            return  # else: the restart under way starts the next child with this token
        rotate = self.options.rotate_signal
        if rotate is not None:
            now = self.clock.monotonic()
            if now >= self.started_at + ROTATE_GRACE:
                self.send_rotation()
            elif self.rotate_at is None:
                self.rotate_at = self.started_at + ROTATE_GRACE
                log.info(
                    "new token %s: %s held until pid %d has run %gs",
                    self.latest,
                    rotate.name,
                    self.child.pid,
                    ROTATE_GRACE,
                )
        elif not self.restarting:
            stop = self.options.stop_signal
            log.info("new token %s: restarting pid %d (%s)", self.latest, self.child.pid, stop.name)
            self.restarting = True
            self.kill_at = self.clock.monotonic() + self.options.stop_timeout
            self.signal_group(stop)
        # else: a restart is under way; the child it starts gets this newer token

    def handle_exit(self, event: Exited) -> None:
        if event.proc is not self.child:
            return
        self.child, self.rotate_at = None, None
        if self.restarting and not self.stopping:
            return  # the next child starts once the group is empty (the timeout stays armed)
        returncode = event.returncode
        log.info("child pid %d exited with %d", event.proc.pid, exit_code(returncode))
        self.final = returncode
        if self.group is not None and group_alive(self.group):
            stop = self.options.stop_signal
            log.info("its process group %d still has processes: sending them %s", self.group, stop.name)
            self.signal_group(stop)
            if self.kill_at is None:
                self.kill_at = self.clock.monotonic() + self.options.stop_timeout

    def check_group(self, now: float) -> None:
        """The child is gone: once its group is too (or a SIGKILL had its grace), go on."""
        assert self.group is not None
        reap_strays(None)  # the child is reaped (its Exited came after): every other is an orphan
        if group_alive(self.group):
            if self.give_up_at is None or now < self.give_up_at:
                return
            log.warning(
                "process group %d still has processes %gs after SIGKILL (zombies nobody reaps?); going on",
                self.group,
                KILL_GRACE,
            )
        self.group, self.kill_at, self.give_up_at = None, None, None
        if self.final is not None:
            self.outcome = self.final
        elif self.restarting:
            self.restarting = False
            if policy.is_valid(self.token, self.clock.time()):
                self.start_child()
            else:
                log.warning("no valid token to restart with; waiting for the next refresh")

    def kill_group(self, now: float) -> None:
        if self.group is None:
            return
        log.warning(
            "process group %d still running %gs after %s; killing it",
            self.group,
            self.options.stop_timeout,
            self.options.stop_signal.name,
        )
        self.signal_group(signal.SIGKILL)
        self.give_up_at = now + KILL_GRACE

    def send_rotation(self) -> None:
        rotate = self.options.rotate_signal
        if rotate is None or self.child is None:
            return
        log.info("new token %s: sending %s to pid %d", self.latest, rotate.name, self.child.pid)
        self.signal_child(rotate)

    # ----------------------------------------------------------------------- the child

    def start_child(self) -> None:
        """Start the child with the newest token, in a process group of its own. From the
        main thread: PR_SET_PDEATHSIG fires when the thread that forked ends."""
        env = self.environment(self.token)
        try:
            argv = launch_argv(self.command, env.get("PATH", os.defpath), self.options.stop_signal)
            with terminal_signals_open(self.mask):  # the child's mask: the one tokend started with
                proc = subprocess.Popen(argv, env=env, process_group=0)  # argv by design, no shell
        except OSError as exc:
            log.error("exec %s: %s", self.command[0], exc.strerror)
            self.outcome = start_failure_code(exc)
            return
        self.child, self.group, self.started_at = proc, proc.pid, self.clock.monotonic()
        log.info("started pid %d with token %s", proc.pid, self.token.fingerprint)
        with signals_blocked():
            threading.Thread(target=self._wait, args=(proc,), name="child-wait", daemon=True).start()

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        self.events.put(Exited(proc, proc.wait()))

    def signal_child(self, signum: signal.Signals) -> None:
        """To the child's pid alone: its own children are its business."""
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has just exited: its Exited is queued
            child.send_signal(signum)

    def signal_group(self, signum: signal.Signals) -> None:
        """To every process left in the child's group (a restart's stop, the SIGKILL)."""
        if self.group is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # it has emptied
            os.killpg(self.group, signum)


def leave(supervisor: Supervisor, returncode: int) -> int:
    """End as the child did, so tokend's parent sees what a plain exec would have given:
    its exit code, or death by its signal (systemd counts SIGTERM as a clean stop, 143 as a
    failure). Exits at once when a refresh was left in flight (its worker would hold the
    exit until its request timed out); otherwise returns the exit code."""
    code = exit_code(returncode)
    if returncode < 0:
        die_of(-returncode)
    if supervisor.runner.abandoned:
        logging.shutdown()
        os._exit(code)
    return code


def die_of(signum: int) -> None:
    """Kill this process with ``signum`` at its default action. No core file: tokend's
    memory holds the client secret (the child's own core, if any, is already written)."""
    import resource

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # A core_pattern that pipes to a helper ignores RLIMIT_CORE; not dumpable, it gets nothing.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    if signum not in UNCATCHABLE:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    # Still here: tokend is PID 1 (a container's init ignores even these); exit 128+N then.
