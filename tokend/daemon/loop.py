"""``tokend run``: the main loop, and nothing else.

The shape follows gunicorn's arbiter (the skeleton is :mod:`~tokend.daemon.main_loop`'s,
shared with ``tokend exec``): signal handlers only queue the signal; the loop takes events
off one queue (signals, finished runs, file events) and dispatches ``handle_hup``,
``handle_term``; between events it beats a heartbeat that wakes the jobs (whose sleep does
not count suspended time), pings the systemd watchdog, notices wall-clock steps and
flushes the status. The work is elsewhere: :mod:`~tokend.daemon.runner` runs the
refreshes, :mod:`~tokend.daemon.reloader` decides reloads, :mod:`~tokend.daemon.reporting`
tells the world. The clock, the jobs and the random source are seams, so tests can run a
daemon in-process on a fake clock.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.config import Config, ConfigError, load
from tokend.core.exit_codes import ExitCode
from tokend.core.health import DaemonStatus, summary
from tokend.daemon.clock import Clock, SystemClock
from tokend.daemon.jobs import APSchedulerJobs, Jobs
from tokend.daemon.local_mode import http_imports, local_servers, local_sites
from tokend.daemon.main_loop import HEARTBEAT, MainLoop, captured_signals
from tokend.daemon.reloader import Reloader
from tokend.daemon.reporting import Observer, Observers, standard_observers
from tokend.daemon.runner import Runner
from tokend.daemon.token_board import TokenBoard
from tokend.daemon.token_source import STANDALONE, TokenSource
from tokend.io import logsetup
from tokend.io.cache import TokenCache
from tokend.io.files import FileLock, ensure_private_dir
from tokend.io.private_process import ProcessEnvironment, hold_secrets, make_undumpable
from tokend.io.systemd import Notifier
from tokend.io.token_client import TokenClient

if TYPE_CHECKING:
    from tokend.io.local_http import LocalHttp

log = logging.getLogger("tokend.daemon")

STATUS_INTERVAL = 1.0  # coalesce status-file writes to at most one a second
STOP_GRACE = 3.0  # how long a stop waits for in-flight refreshes before leaving them
LOCK_FILE = "tokend.lock"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class Ran:
    """A run finished (queued by the worker for the main loop)."""

    name: str
    first: bool


@dataclass(frozen=True)
class FilesTouched:
    """The watcher saw an event on a watched file; the debouncer decides when to look."""


class Daemon(MainLoop):
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        heartbeat: float = HEARTBEAT,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        jobs: Jobs | None = None,
        observers: Iterable[Observer] = (),
        client_factory: Callable[[], TokenClient] = TokenClient,
    ) -> None:
        super().__init__(clock or SystemClock(), heartbeat)
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.notifier = Notifier(self.environ)
        # The newest valid token of each credential, for [endpoint] and the proxies.
        self.board = TokenBoard(self.clock, self.run_now)
        self.local: LocalHttp | None = None  # their servers, when the config has any
        if config.serves_http():
            http_imports(config)
        self.observers = Observers(
            [
                *standard_observers(config, self.notifier, self.environ, self.board.health),
                self.board,
                *observers,
            ]
        )
        self.source = token_source(config, self.environ, self.observers, self.clock)
        self.runner = Runner(
            jobs or APSchedulerJobs(self.clock),
            self.observers,
            cache=TokenCache(config.state_dir),
            clock=self.clock,
            rng=rng or random.Random(),
            environ=self.environ,
            on_ran=lambda name, first: self.events.put(Ran(name, first)),
            client_factory=client_factory,
            source=self.source,
        )
        self.reloader = Reloader(self.environ, lambda: self.events.put(FilesTouched()))
        self.config_error: str | None = None
        self.starting: set[str] = set()
        self.ready = False
        self.stopping = False
        self.status_dirty = True
        self.last_status_write = 0.0
        self.next_watchdog = self.clock.monotonic()

    # ----------------------------------------------------------------------- the loop

    def run(self, *, stop_after: float | None = None) -> int:
        """Run until SIGTERM or SIGINT (or ``stop_after`` seconds). Returns the exit code."""
        with captured_signals(SIGNALS, self.queue_signal):
            self.start()
            deadline = None if stop_after is None else self.clock.monotonic() + stop_after
            while not self.stopping:
                if deadline is not None and self.clock.monotonic() >= deadline:
                    self.handle_term(signal.SIGTERM)
                    break
                self.step(deadline)
        return ExitCode.OK

    def start(self) -> None:
        self.runner.jobs.start()
        self.source.start(self.runner.wake)
        self.reloader.watch(self.config)
        self.observers.configured(self.config)
        self.local = local_servers(self.config, self.board, self.environ, self.observers.metrics())
        self.starting = set(self.config.credentials)
        for cred in self.config.credentials.values():
            self.runner.add(cred)
        if not self.starting:
            self.mark_ready()
        log.info("tokend running with %d credential(s) from %s", len(self.runner.slots), self.config.path)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        if not self.config.credentials:
            log.warning("%s", no_credentials_warning(self.config))
        self.next_beat = self.clock.monotonic() + self.heartbeat

    def step(self, deadline: float | None = None, *, block: bool = True) -> None:
        """One turn of the loop: the periodic duties, then one event (waiting for it until
        the next duty is due, unless ``block`` is false)."""
        now_mono = self.clock.monotonic()
        step = self.clock_step(now_mono)
        if step is not None:
            self.handle_clock_jump(step)
        if self.beat_due(now_mono):
            self.beat()
        if self.notifier.watchdog_interval is not None and now_mono >= self.next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self.next_watchdog = now_mono + self.notifier.watchdog_interval
        debounce = self.reloader.debounce
        if debounce.due(now_mono):
            debounce.reset()
            self.check_files("a watched file changed")
        if self.status_dirty and self.ready and now_mono - self.last_status_write >= STATUS_INTERVAL:
            self.flush_status()  # not while starting: READY writes the first one
        wake = [self.next_beat, deadline or self.next_beat, debounce.deadline() or self.next_beat]
        if self.notifier.watchdog_interval is not None:
            wake.append(self.next_watchdog)
        if self.status_dirty and self.ready:
            wake.append(self.last_status_write + STATUS_INTERVAL)
        next_due = self.runner.next_due()
        if next_due is not None:
            wake.append(next_due)  # to look at the clocks when a run should start
        event = self.next_event(min(wake), block=block)
        if event is not None:
            self.dispatch(event)

    def dispatch(self, event: object) -> None:
        if isinstance(event, Ran):
            self.handle_ran(event)
        elif isinstance(event, FilesTouched):
            self.reloader.debounce.touch(self.clock.monotonic())
        elif event == signal.SIGHUP:
            self.handle_hup()
        elif isinstance(event, int) and event in (signal.SIGTERM, signal.SIGINT):
            self.handle_term(signal.Signals(event))

    # ----------------------------------------------------------------------- handlers

    def handle_ran(self, event: Ran) -> None:
        # STATUS= goes out with the coalesced status write: its summary walks every
        # credential, and a thousand refreshes at once must not cost a million steps.
        self.status_dirty = True
        if event.first and event.name in self.starting:
            self.starting.discard(event.name)
            if not self.starting and not self.ready:
                self.mark_ready()

    def mark_ready(self) -> None:
        self.ready = True
        self.flush_status()
        self.observers.ready(self.summary())

    def handle_hup(self) -> None:
        self.check_files("SIGHUP", force=True)

    def handle_term(self, signum: signal.Signals) -> None:
        log.info("%s: stopping", signum.name)
        self.stopping = True
        self.observers.stopping()
        if self.local is not None:
            self.local.stop()
        self.reloader.stop()
        self.runner.stop(STOP_GRACE)
        self.source.stop()  # releases fleet leases: a follower takes over at once
        if self.runner.abandoned:
            log.warning(
                "%d refresh(es) still in flight; leaving them (every write is atomic)", self.runner.abandoned
            )
        self.flush_status()
        log.info("stopped")

    def handle_clock_jump(self, step: float) -> None:
        """The wall clock moved ``step`` seconds against the monotonic one: every run re-armed."""
        log.info("wall clock moved %+.0fs against the monotonic clock; re-arming every refresh", step)
        self.rearm()

    def beat(self) -> None:
        """Wake the jobs (their sleep does not count suspended time); look at the files."""
        self.runner.jobs.wakeup()
        if self.reloader.ensure_watching():
            self.check_files("the file watcher was restarted")
        else:
            self.check_files("the periodic file check found a change")  # overflows, no inotify

    # ----------------------------------------------------------------------- reload

    def check_files(self, reason: str, *, force: bool = False) -> None:
        """Reload when a watched file's content changed (or always, when forced)."""
        differ = self.reloader.changes(self.config)
        if not differ and not force:
            log.debug("%s: no watched file's content changed", reason)
            return
        log.info("%s: %s", reason, ", ".join(sorted(map(str, differ))) or "reloading")
        self.reload(differ - {self.config.path})
        self.reloader.watch(self.config)  # the new config may name other files

    def reload(self, changed_files: frozenset[Path] | set[Path] = frozenset()) -> bool:
        """Load the config again and apply it as a diff; a bad one changes nothing."""
        was_ready = self.ready
        self.observers.reloading()
        new = self.reloader.load(self.config.path)
        if not isinstance(new, ConfigError) and new.state_dir != self.config.state_dir:
            # The lock, the cache and the status live there: moving them under a running
            # daemon would let a second daemon start on the new directory.
            new = ConfigError(
                self.config.path,
                f"cannot change from {self.config.state_dir} while running; restart tokend to move it",
                where="tokend.state_dir",
            )
        if isinstance(new, ConfigError):
            self.config_error = str(new)
            log.error("reload rejected, still running the last good config: %s", new)
            self.flush_status()  # rare and important: not worth coalescing
            self.observers.reloaded(self.config_error, self.summary(), was_ready=was_ready)
            return False
        if new.fleet != self.config.fleet:
            log.warning("[fleet] changed: the new settings take effect when tokend restarts")
        if local_sites(new) != local_sites(self.config):
            log.warning("[endpoint] or a proxy changed: its listeners change when tokend restarts")
        self.apply(new, changed_files)
        for warning in new.warnings:
            log.warning("%s", warning)
        self.flush_status()
        self.observers.reloaded(None, self.summary(), was_ready=was_ready)
        return True

    def apply(self, new: Config, changed_files: frozenset[Path] | set[Path] = frozenset()) -> None:
        self.config_error = None
        hold_secrets(self.environ, new.secret_variables())
        logsetup.setup(new.log_level, new.log_format, environ=self.environ)
        old, self.config = self.config, new
        self.observers.configured(new)
        plan = self.reloader.apply(self.runner, old, new, changed_files)
        # READY must not wait for a credential that is gone, nor for one added meanwhile.
        self.starting -= {*plan.removed, *plan.added}
        if not new.credentials:
            log.warning("%s", no_credentials_warning(self.config))
        self.status_dirty = True
        if not self.ready and not self.starting:
            self.mark_ready()

    # ----------------------------------------------------------------------- status

    def snapshot(self) -> DaemonStatus:
        return DaemonStatus(
            pid=os.getpid(),
            updated_at=self.clock.time(),
            config=str(self.config.path),
            config_error=self.config_error,
            credentials={name: slot.status for name, slot in self.runner.slots.items()},
            warnings=(() if self.config.credentials else (no_credentials_warning(self.config),))
            + self.source.warnings()
            + (tuple(self.local.errors) if self.local is not None else ()),
            fleet=self.source.health(),
        )

    def flush_status(self) -> None:
        self.status_dirty = False
        self.last_status_write = self.clock.monotonic()
        self.observers.status(self.snapshot(), self.summary(), ready=self.ready and not self.stopping)

    def run_now(self, name: str) -> None:
        """A proxy's upstream refused the token: run the credential at once, forced (from
        the local servers' thread, as the fleet's listener wakes runs from its own)."""
        slot = self.runner.slots.get(name)
        if slot is not None and not self.runner.stopping:
            self.runner.arm(slot, 0.0, force=True)

    def summary(self) -> str:
        if self.config_error:
            return f"config rejected: {self.config_error}"
        return summary({name: slot.status for name, slot in self.runner.slots.items()}, self.clock.time())


def token_source(
    config: Config, environ: Mapping[str, str], observers: Observer, clock: Clock
) -> TokenSource:
    """Standalone, or fleet mode when the config has ``[fleet]`` (only then are redis-py
    and cryptography imported)."""
    if config.fleet is None:
        return STANDALONE
    from tokend.daemon.fleet_mode import open_fleet

    return open_fleet(config.fleet, config.path, environ=environ, report=observers.fleet_event, clock=clock)


def no_credentials_warning(config: Config) -> str:
    return (
        f"{config.path}: no credentials configured; is this the right file? "
        "(running, and a reload can add some)"
    )


def single_instance(state_dir: Path) -> FileLock | None:
    """The state dir's lock, or None when another daemon holds it. Two daemons on one
    state dir would both refresh, flip the sinks between their tokens and send the same
    refresh token twice (an IdP with reuse detection then revokes the whole family)."""
    lock = FileLock(state_dir / LOCK_FILE)
    try:
        ensure_private_dir(state_dir)
        if not lock.acquire():
            return None
        lock.write_pid()
    except OSError as exc:  # tokend works without a writable state dir; it just cannot lock
        log.warning("cannot lock %s (%s); not guarding against a second daemon", lock.path, exc.strerror)
    return lock


def run(
    config_path: Path, *, environ: Mapping[str, str] | None = None, stop_after: float | None = None
) -> int:
    if environ is None:  # the real process: its memory and environment kept to itself
        environ = ProcessEnvironment()
        make_undumpable()
    config = load(config_path, environ)
    hold_secrets(environ, config.secret_variables())
    logsetup.setup(config.log_level, config.log_format, environ=environ)
    lock = single_instance(config.state_dir)
    if lock is None:
        holder = FileLock(config.state_dir / LOCK_FILE).holder()
        log.error(
            "another tokend (pid %s) is running with the state directory %s; stop it "
            "first, or give this one another state_dir",
            holder or "unknown",
            config.state_dir,
        )
        return ExitCode.LOCKED
    try:
        daemon = Daemon(config, environ=environ)  # [fleet]: a password it cannot read is a ConfigError
        return daemon.leave(daemon.run(stop_after=stop_after))
    finally:
        lock.release()
