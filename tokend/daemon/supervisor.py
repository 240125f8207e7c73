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

Process groups: the child runs in a process group of its own. A restart must take the
child's own children with it (a wrapper script's program would otherwise outlive each
restart), and a Ctrl-C in a terminal must reach the child once, not twice (the terminal
signals tokend's group, tokend passes it on to the child's). The price: a child in a
background group cannot read the terminal (programs that do so want ``--on-rotate none``).
Under systemd (``Type=exec``) use ``KillMode=mixed``, so SIGTERM reaches tokend alone and
is passed on once, while the final SIGKILL still reaches every process of the unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
MAX_STOP_TIMEOUT = 3600.0  # longer is a typo; systemd's own default is 90 s
STOP_GRACE = 1.0  # how long leaving waits for a refresh in flight (every write is atomic)
HEARTBEAT = 30.0  # as the daemon: wake the jobs, whose sleep does not count suspended time
CLOCK_JUMP = 2.0
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


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
    """What tokend exits with when the child ended: its code, or 128+N for signal N (as a
    shell reports it, so a script cannot tell tokend from the program it ran)."""
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
    """Threads started inside inherit a mask blocking the forwarded signals, so these are
    delivered to the main thread, whose queue wait they interrupt, and not to a worker
    (which would leave them pending until the main thread happened to wake)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --------------------------------------------------------------------------- the loop


class Supervisor:
    """One child, one credential. :meth:`run` returns tokend's exit code."""

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
        self.restarting = False  # the stop signal went out for a rotation
        self.kill_at: float | None = None  # monotonic: SIGKILL the restarting child then
        self.stopping = False  # a stopping signal came: the child's exit is ours
        self.code: int | None = None  # tokend's exit code, once decided
        self.next_beat = self.clock.monotonic() + HEARTBEAT
        self.wall_offset = self.clock.time() - self.clock.monotonic()

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._queue_signal) for signum in FORWARDED}
        try:
            self.start_child()
            if self.code is not None:  # it could not start: nothing else was
                return self.code
            with signals_blocked():
                self.runner.jobs.start()
            try:
                self.runner.add(self.cred)
                while self.code is None:
                    self.step()
            finally:
                self.runner.stop(STOP_GRACE)
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
        return self.code

    def _queue_signal(self, signum: int, _frame: object) -> None:
        self.events.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def step(self) -> None:
        """The timers (SIGKILL after the stop timeout, the heartbeat), then one event."""
        now = self.clock.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            if self.child is not None:
                log.warning(
                    "child pid %d still running %gs after %s; killing it",
                    self.child.pid,
                    self.options.stop_timeout,
                    self.options.stop_signal.name,
                )
                self.signal_child(signal.SIGKILL, group=True)
        if now >= self.next_beat:
            self.beat(now)
        wake = self.next_beat if self.kill_at is None else min(self.next_beat, self.kill_at)
        try:
            event = self.events.get(timeout=max(0.01, wake - self.clock.monotonic()))
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

    def dispatch(self, event: object) -> None:
        if isinstance(event, Exited):
            self.handle_exit(event)
        elif isinstance(event, Attempted):
            self.handle_attempt(event.attempt)
        elif isinstance(event, int):
            self.handle_signal(signal.Signals(event))

    # ----------------------------------------------------------------------- handlers

    def handle_signal(self, signum: signal.Signals) -> None:
        if signum in STOPPING:
            self.stopping = True
        if self.child is None:  # between a stop and a start: nobody to pass it on to
            if self.stopping:
                self.code = 128 + signum
            return
        log.info("%s: passing it on to the child (pid %d)", signum.name, self.child.pid)
        self.signal_child(signum, group=True)

    def handle_attempt(self, attempt: Attempt) -> None:
        if not rotated(attempt, self.latest, restart=self.options.restart, now=self.clock.time()):
            return
        assert attempt.token is not None
        self.token, self.latest = attempt.token, attempt.token.fingerprint
        if self.stopping:
            return
        if self.child is None:  # a restart found no valid token to start with: now there is
            self.start_child()
            return
        rotate = self.options.rotate_signal
        if rotate is not None:
            log.info("new token %s: sending %s to pid %d", self.latest, rotate.name, self.child.pid)
            self.signal_child(rotate, group=False)
        elif not self.restarting:
            stop = self.options.stop_signal
            log.info("new token %s: restarting pid %d (%s)", self.latest, self.child.pid, stop.name)
            self.restarting = True
            self.kill_at = self.clock.monotonic() + self.options.stop_timeout
            self.signal_child(stop, group=True)
        # else: a restart is under way; the child it starts gets this newer token

    def handle_exit(self, event: Exited) -> None:
        if event.proc is not self.child:
            return
        self.child, self.kill_at = None, None
        code = exit_code(event.returncode)
        if self.restarting and not self.stopping:
            self.restarting = False
            if policy.is_valid(self.token, self.clock.time()):
                self.start_child()
            else:
                log.warning("no valid token to restart with; waiting for the next refresh")
            return
        log.info("child pid %d exited with %d", event.proc.pid, code)
        self.code = code

    # ----------------------------------------------------------------------- the child

    def start_child(self) -> None:
        """Start the child with the newest token, in a process group of its own."""
        try:
            proc = subprocess.Popen(  # argv by design, no shell
                self.command, env=self.environment(self.token), process_group=0
            )
        except OSError as exc:
            log.error("exec %s: %s", self.command[0], exc.strerror)
            self.code = start_failure_code(exc)
            return
        self.child = proc
        log.info("started pid %d with token %s", proc.pid, self.token.fingerprint)
        with signals_blocked():
            threading.Thread(target=self._wait, args=(proc,), name="child-wait", daemon=True).start()

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        self.events.put(Exited(proc, proc.wait()))

    def signal_child(self, signum: signal.Signals, *, group: bool) -> None:
        child = self.child
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has just exited: its Exited is queued
            if group:
                os.killpg(child.pid, signum)
            else:
                child.send_signal(signum)


def leave(supervisor: Supervisor, code: int) -> int:
    """Exit at once when a refresh was left in flight (its worker would hold the exit until
    its request timed out); otherwise return ``code``."""
    if supervisor.runner.abandoned:
        logging.shutdown()
        os._exit(code)
    return code
