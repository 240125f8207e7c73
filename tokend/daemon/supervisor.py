"""``tokend exec --on-rotate restart|SIGNAL``: tokend stays the parent of the program.

A program that reads its token once, from its environment, outlives that token. Here
tokend keeps the credential fresh with the daemon's own machinery (a :class:`Runner` for
the one credential, the shared token cache and its per-identity lock, so a daemon next to
it and this never both ask the identity provider), and on each rotation either restarts
the child with the new token (stop signal, up to ``stop_timeout``, SIGKILL, start again)
or sends it a signal (its sinks are written before the observer hears of the attempt).

The shape is the daemon's (gunicorn's arbiter, :mod:`tokend.daemon.main_loop`): signal
handlers only queue; the main loop takes signals, attempts and child exits off one queue and
dispatches. Decisions are the small pure functions at the top, tested directly.

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

A child subreaper: the grandchildren a dead child leaves re-parent to tokend, not to init,
and tokend reaps them itself, on each SIGCHLD (the handler queues one at a time; the
heartbeat looks too). Otherwise a SIGKILLed grandchild stays a zombie, and in the group,
for as long as init takes to reap it (seconds under some container inits; for ever when
tokend *is* the container's init), and each restart would wait for it; a program leaving
short-lived orphans by the thousand would fill the process table with zombies. The process
edges (the PR_SET_PDEATHSIG shim, the subreaper, reaping, the group, the signal masks, /proc)
are :mod:`tokend.io.child_process`; the options are :mod:`tokend.daemon.exec_options`.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokend.config import CredentialConfig
from tokend.core import policy
from tokend.core.exit_codes import exec_failure
from tokend.core.results import Attempt
from tokend.core.tokens import Token
from tokend.daemon.clock import Clock, SystemClock
from tokend.daemon.exec_options import STOPPING, Supervision
from tokend.daemon.jobs import APSchedulerJobs, Jobs
from tokend.daemon.main_loop import MainLoop, captured_signals
from tokend.daemon.reporting import EventLog, Observer, Observers
from tokend.daemon.runner import Runner
from tokend.io import child_process
from tokend.io.cache import TokenCache

log = logging.getLogger("tokend.exec")

# Passed on to the child; the first three also mean "stop" (STOPPING): the child's exit is then ours.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Job control: passed on to the child's group, then tokend stops itself; SIGCONT comes back.
SUSPENDING = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# Every signal whose handler queues it for the loop.
CAUGHT = (*FORWARDED, *SUSPENDING, signal.SIGCONT, signal.SIGCHLD)
STOP_GRACE = 1.0  # how long leaving waits for a refresh in flight (every write is atomic)
GROUP_POLL = 0.05  # how often an emptying process group is looked at
# After SIGKILL to the group: what is still "there" then is a zombie its new parent does
# not reap (a container's init that never waits); going on beats waiting for ever.
KILL_GRACE = 2.0
# A rotation signal to a program still starting would find the signal's default action
# (SIGHUP, SIGUSR1: death) before its handler is installed: held until it has run this long.
ROTATE_GRACE = 2.0


# --------------------------------------------------------------------------- pure parts


def exit_code(returncode: int) -> int:
    """A child's end as a shell reports it: its code, or 128+N for signal N. tokend exits
    with the code, and dies of the signal itself (see :meth:`Supervisor.leave`)."""
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


@dataclass(slots=True)
class Timers:
    """The supervisor's moments, on the monotonic clock."""

    started_at: float = 0.0  # when the child started
    kill_at: float | None = None  # SIGKILL the child's group then
    give_up_at: float | None = None  # stop waiting for a SIGKILLed group
    rotate_at: float | None = None  # send the held rotation signal then

    def shift(self, paused: float) -> None:
        """All wait ``paused`` seconds longer (tokend and its child were stopped so long)."""
        self.started_at += paused
        if self.kill_at is not None:
            self.kill_at += paused
        if self.give_up_at is not None:
            self.give_up_at += paused
        if self.rotate_at is not None:
            self.rotate_at += paused


def exec_runner(
    jobs: Jobs,
    put: Callable[[object], None],
    cache: TokenCache,
    clock: Clock,
    environ: Mapping[str, str] | None,
) -> Runner:
    """The daemon's runner, for one credential: each attempt goes to the loop (``put``)."""
    observers = Observers([EventLog(), AttemptQueue(put)])
    return Runner(
        jobs,
        observers,
        cache=cache,
        clock=clock,
        rng=random.Random(),
        environ=environ,
        on_ran=lambda *_: None,
    )


# --------------------------------------------------------------------------- the loop


class Supervisor(MainLoop):
    """One child, one credential. :meth:`run` returns how the child ended, as Popen says it
    (a negative number: killed by that signal); :meth:`leave` makes it tokend's own end."""

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
        super().__init__(clock or SystemClock())
        self.cred, self.environment, self.options = cred, environment, options
        self.program = child_process.Program(command, options.stop_signal, CAUGHT)
        self.runner = exec_runner(
            jobs or APSchedulerJobs(self.clock), self.events.put, cache, self.clock, environ
        )
        self.token = token  # the newest valid token: what a (re)started child gets
        self.latest = token.fingerprint
        self.timers = Timers()
        self.restarting = False  # the stop signal went out for a rotation
        self.stopping = False  # a stopping signal came: the child's exit is ours
        self.final: int | None = None  # how we end, decided; waiting for the group to empty
        self.outcome: int | None = None  # how we end, once nothing is left to wait for
        self.reap_queued = False  # a SIGCHLD is in the queue: another would add nothing
        self.mask: set[int | signal.Signals] = set()  # the main thread's, as tokend started

    def run(self) -> int:
        with captured_signals(CAUGHT, self.queue_signal):
            self.mask = child_process.block_terminal_signals()
            child_process.become_subreaper()
            try:
                self.start_child()
                if self.outcome is not None:  # it could not start: nothing else was
                    return self.outcome
                with child_process.signals_blocked(CAUGHT):
                    self.runner.jobs.start()
                try:
                    self.runner.add(self.cred)
                    while self.outcome is None:
                        self.step()
                finally:
                    self.runner.stop(STOP_GRACE)
            finally:
                child_process.restore_mask(self.mask)
        return self.outcome

    def queue_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGCHLD:  # a program's orphans may end by the thousand
            if self.reap_queued:
                return
            self.reap_queued = True
        super().queue_signal(signum, frame)

    def step(self) -> None:
        """The timers (SIGKILL after the stop timeout, a held rotation signal, the
        heartbeat, an emptying process group), then one event."""
        now = self.clock.monotonic()
        if self.timers.kill_at is not None and now >= self.timers.kill_at:
            self.timers.kill_at = None
            self.kill_group(now)
        if self.timers.rotate_at is not None and now >= self.timers.rotate_at:
            self.timers.rotate_at = None
            self.send_rotation()
        if self.beat_due(now):
            self.beat(now)
        draining = self.program.proc is None and self.program.group is not None
        if draining:
            self.check_group(now)
            if self.outcome is not None:
                return
        deadlines = [d for d in (self.next_beat, self.timers.kill_at, self.timers.rotate_at) if d is not None]
        if draining:
            deadlines.append(now + GROUP_POLL)
        with child_process.terminal_signals_open(self.mask):
            event = self.next_event(min(deadlines))
        if event is not None:
            self.dispatch(event)

    def beat(self, now: float) -> None:
        if self.clock_step(now) is not None:
            self.rearm()
        self.runner.jobs.wakeup()
        self.program.reap_strays()  # orphans left the group

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
            self.program.reap_strays()
            return
        if signum in SUSPENDING:
            self.suspend(signum)
            return
        if signum is signal.SIGCONT:  # tokend runs again (or was never stopped): so does its job
            if self.program.group is not None:
                log.info("SIGCONT: passing it on to process group %d", self.program.group)
                self.program.signal_group(signum)
            return
        if signum in STOPPING:
            self.stopping = True
        if self.program.proc is None:  # between a stop and a start: nobody to pass it on to
            if self.stopping and self.final is None:
                self.final = -signum  # as tokend itself would have ended: of the signal
                if self.program.group is None:
                    self.outcome = self.final
                # else: a restart's stop is under way, its timeout armed; then we leave
            return
        log.info("%s: passing it on to the child (pid %d)", signum.name, self.program.proc.pid)
        self.program.send(signum)

    def suspend(self, signum: signal.Signals) -> None:
        """Stop as a job does: the child's whole group, then tokend (SIGSTOP, the default
        action being out of reach of a caught signal), unless no shell would continue it.
        Returns once continued; the SIGCONT is queued, and passed on by the loop."""
        if not child_process.job_control():
            log.info(
                "%s: ignored: tokend's process group is orphaned, nothing would continue it", signum.name
            )
            return
        if self.program.group is not None:
            log.info("%s: stopping process group %d, then tokend", signum.name, self.program.group)
            self.program.signal_group(signum)
        before = self.clock.monotonic()
        child_process.stop_self()
        self.resumed(self.clock.monotonic() - before)

    def resumed(self, paused: float) -> None:
        """The child was stopped as long as tokend: its timers wait that much longer."""
        self.timers.shift(paused)
        self.next_beat = self.clock.monotonic()  # look at the clocks and wake the jobs now

    def handle_attempt(self, attempt: Attempt) -> None:
        if not rotated(attempt, self.latest, restart=self.options.restart, now=self.clock.time()):
            return
        assert attempt.token is not None
        self.token, self.latest = attempt.token, attempt.token.fingerprint
        if self.stopping or self.final is not None:
            return
        if self.program.proc is None:
            if self.program.group is None and not self.restarting:  # a restart found no valid token
                self.start_child()  # to start with: now there is
            return  # else: the restart under way starts the next child with this token
        rotate = self.options.rotate_signal
        if rotate is not None:
            now = self.clock.monotonic()
            if now >= self.timers.started_at + ROTATE_GRACE:
                self.send_rotation()
            elif self.timers.rotate_at is None:
                self.timers.rotate_at = self.timers.started_at + ROTATE_GRACE
                log.info(
                    "new token %s: %s held until pid %d has run %gs",
                    self.latest,
                    rotate.name,
                    self.program.proc.pid,
                    ROTATE_GRACE,
                )
        elif not self.restarting:
            stop = self.options.stop_signal
            log.info("new token %s: restarting pid %d (%s)", self.latest, self.program.proc.pid, stop.name)
            self.restarting = True
            self.timers.kill_at = self.clock.monotonic() + self.options.stop_timeout
            self.program.signal_group(stop)
        # else: a restart is under way; the child it starts gets this newer token

    def handle_exit(self, event: Exited) -> None:
        if event.proc is not self.program.proc:
            return
        self.program.proc, self.timers.rotate_at = None, None
        if self.restarting and not self.stopping:
            return  # the next child starts once the group is empty (the timeout stays armed)
        returncode = event.returncode
        log.info("child pid %d exited with %d", event.proc.pid, exit_code(returncode))
        self.final = returncode
        if self.program.group_alive():
            stop = self.options.stop_signal
            log.info(
                "its process group %d still has processes: sending them %s", self.program.group, stop.name
            )
            self.program.signal_group(stop)
            if self.timers.kill_at is None:
                self.timers.kill_at = self.clock.monotonic() + self.options.stop_timeout

    def check_group(self, now: float) -> None:
        """The child is gone: once its group is too (or a SIGKILL had its grace), go on."""
        assert self.program.group is not None
        child_process.reap_strays(None)  # the child is reaped (its Exited came after): all others are orphans
        if self.program.group_alive():
            if self.timers.give_up_at is None or now < self.timers.give_up_at:
                return
            log.warning(
                "process group %d still has processes %gs after SIGKILL (zombies nobody reaps?); going on",
                self.program.group,
                KILL_GRACE,
            )
        self.program.group, self.timers.kill_at, self.timers.give_up_at = None, None, None
        if self.final is not None:
            self.outcome = self.final
        elif self.restarting:
            self.restarting = False
            if policy.is_valid(self.token, self.clock.time()):
                self.start_child()
            else:
                log.warning("no valid token to restart with; waiting for the next refresh")

    def kill_group(self, now: float) -> None:
        if self.program.group is None:
            return
        log.warning(
            "process group %d still running %gs after %s; killing it",
            self.program.group,
            self.options.stop_timeout,
            self.options.stop_signal.name,
        )
        self.program.signal_group(signal.SIGKILL)
        self.timers.give_up_at = now + KILL_GRACE

    def send_rotation(self) -> None:
        rotate = self.options.rotate_signal
        if rotate is None or self.program.proc is None:
            return
        log.info("new token %s: sending %s to pid %d", self.latest, rotate.name, self.program.proc.pid)
        self.program.send(rotate)

    # ----------------------------------------------------------------------- the child

    def start_child(self) -> None:
        """Start the child with the newest token, in a process group of its own."""
        try:
            proc = self.program.start(
                self.environment(self.token),
                self.mask,
                lambda ended, code: self.events.put(Exited(ended, code)),
            )
        except OSError as exc:
            log.error("exec %s: %s", self.program.command[0], exc.strerror)
            self.outcome = exec_failure(exc)
            return
        self.timers.started_at = self.clock.monotonic()
        log.info("started pid %d with token %s", proc.pid, self.token.fingerprint)

    def leave(self, returncode: int) -> int:
        """End as the child did, so tokend's parent sees what a plain exec would have given:
        its exit code, or death by its signal (systemd counts SIGTERM as a clean stop, 143 as
        a failure). Exits at once when a refresh was left in flight (its worker would hold
        the exit until its request timed out); otherwise returns the exit code."""
        if returncode < 0:
            child_process.die_of(-returncode)
        return super().leave(exit_code(returncode))
