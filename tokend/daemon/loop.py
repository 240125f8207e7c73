"""``tokend run``: keep every credential's token fresh until told to stop.

The shape follows gunicorn's arbiter: signal handlers only queue the signal; the main loop
takes events off one queue (signals, finished refreshes) and dispatches ``handle_hup``,
``handle_term``; between events it beats a heartbeat that wakes the scheduler (whose sleep
does not count suspended time), pings the systemd watchdog and writes the status file.

Each credential is one APScheduler ``date`` job, re-armed at the end of every run for the
moment the policy picks. Runs happen on a bounded pool, each credential in its own try, so
a thousand credentials need no thousand threads and one failure never delays another.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from tokend.config import Config, ConfigError, CredentialConfig, load
from tokend.core import policy
from tokend.core.health import (
    EXPIRED,
    FAILING,
    CredentialStatus,
    DaemonStatus,
    verdict,
    write_status,
)
from tokend.core.reload_plan import plan_reload
from tokend.daemon.refresher import Outcome, Refresher
from tokend.io import logsetup
from tokend.io.cache import TokenCache
from tokend.io.files import FileLock, ensure_private_dir
from tokend.io.hooks import HookRunner
from tokend.io.oauth import TokenClient
from tokend.io.sinks import in_the_way, rfc3339
from tokend.io.systemd import Notifier

if TYPE_CHECKING:
    from tokend.io.metrics import Metrics
from tokend.io.watch import (
    Debouncer,
    FileState,
    Watcher,
    changed,
    read_state,
    read_states,
    watched_files,
)

log = logging.getLogger("tokend.daemon")

HEARTBEAT = 30.0  # the design's upper bound on noticing a clock jump or a missed wakeup
CLOCK_JUMP = 2.0  # wall-vs-monotonic drift that counts as a jump
STATUS_INTERVAL = 1.0  # coalesce status-file writes to at most one a second
STOP_GRACE = 3.0  # how long a stop waits for in-flight refreshes before leaving them
WORKERS = 16
LOCK_FILE = "tokend.lock"
EX_LOCKED = 75  # sysexits.h EX_TEMPFAIL: the other daemon may stop; not a config error


@dataclass(slots=True)
class Slot:
    """One credential at run time. Replaced, never edited, when a reload changes it."""

    cred: CredentialConfig
    refresher: Refresher
    generation: int
    status: CredentialStatus
    # Monotonic, not wall-clock: a clock stepped back must not leave an expired token in
    # the sinks. The wall clock is only for what is written out and for APScheduler, whose
    # jobs are re-armed from these when the two clocks part (see Daemon.handle_clock_jump).
    due_mono: float | None = None  # jittered refresh moment of the token in the sinks
    next_mono: float | None = None  # when the next run is armed for
    armed: tuple[bool, bool] = (False, False)  # (force, first) of the armed run
    warned_floor: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and what that means for the next one."""

    message: str
    retryable: bool = True
    retry_after: float | None = None
    needs_token: bool = True  # False: the token is fine, only a sink failed


def record(
    status: CredentialStatus,
    *,
    now: float,
    when: float,
    failures: int,
    outcome: Outcome | None,
    failure: Failure | None,
) -> CredentialStatus:
    """The status after one attempt."""
    status = status.updated(
        last_attempt=now,
        next_refresh=when,
        failures=failures,
        last_error=failure.message if failure else None,
        last_error_retryable=failure.retryable if failure else None,
    )
    token = outcome.token if outcome is not None else None
    if token is None:
        return status
    status = status.updated(
        token_fingerprint=token.fingerprint, expires_at=token.expires_at, obtained_at=token.obtained_at
    )
    if outcome is not None and outcome.fetched:
        status = status.updated(last_success=now)
    elif status.last_success is None:
        status = status.updated(last_success=token.obtained_at)  # a cached token: when it came
    return status


@dataclass(frozen=True)
class Ran:
    name: str
    first: bool


@dataclass(frozen=True)
class FilesTouched:
    """The watcher saw an event on a watched file; the debouncer decides when to look."""


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        heartbeat: float = HEARTBEAT,
        rng: random.Random | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.heartbeat = heartbeat
        self.rng = rng or random.Random()
        self.on_outcome = on_outcome
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.notifier = Notifier(self.environ)
        self.hooks = HookRunner()
        self.cache = TokenCache(config.state_dir)
        self.metrics = make_metrics(config)
        self.watcher = Watcher(lambda: self.events.put(FilesTouched()))
        self.debounce = Debouncer()
        self.file_states: dict[Path, FileState] = {}
        self.slots: dict[str, Slot] = {}
        self.generation = 0
        self.config_error: str | None = None
        self.starting: set[str] = set()
        self.ready = False
        self.stopping = False
        self.status_dirty = True
        self.last_status_write = 0.0
        self._local = threading.local()
        self._inflight = 0
        self._inflight_done = threading.Condition()
        self.due_heap: list[tuple[float, int, str]] = []  # (next_mono, generation, name)
        self.due_lock = threading.Lock()
        self.wall_offset = time.time() - time.monotonic()
        self.abandoned = 0  # refreshes still in flight when we stopped
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=WORKERS)},
            job_defaults={
                "misfire_grace_time": None,  # the default (1 s) silently drops a late run
                "coalesce": True,
                "max_instances": 2,  # the run that re-arms its own id is still counted
            },
            timezone=UTC,
        )

    # ----------------------------------------------------------------------- lifecycle

    def run(self, *, stop_after: float | None = None) -> int:
        """Run until SIGTERM or SIGINT (or ``stop_after`` seconds). Returns the exit code."""
        self.install_signal_handlers()
        self.serve_metrics()
        self.scheduler.start()
        self.watch_files()
        self.starting = set(self.config.credentials)
        for cred in self.config.credentials.values():
            self.add_slot(cred, force=False)
        if not self.starting:
            self.mark_ready()
        log.info("tokend running with %d credential(s) from %s", len(self.slots), self.config.path)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        if not self.config.credentials:
            log.warning("%s", self.no_credentials_warning())
        deadline = None if stop_after is None else time.monotonic() + stop_after
        next_beat = time.monotonic() + self.heartbeat
        next_watchdog = time.monotonic()
        while not self.stopping:
            now_mono = time.monotonic()
            if deadline is not None and now_mono >= deadline:
                self.handle_term(signal.SIGTERM)
                break
            offset = time.time() - now_mono
            if abs(offset - self.wall_offset) > CLOCK_JUMP:
                self.handle_clock_jump(offset)
            if now_mono >= next_beat:
                self.beat()
                next_beat = now_mono + self.heartbeat
            if self.notifier.watchdog_interval is not None and now_mono >= next_watchdog:
                self.notifier.notify("WATCHDOG=1")
                next_watchdog = now_mono + self.notifier.watchdog_interval
            if self.debounce.due(now_mono):
                self.debounce.reset()
                self.check_files("a watched file changed")
            if self.status_dirty and self.ready and now_mono - self.last_status_write >= STATUS_INTERVAL:
                self.flush_status()  # not while starting: READY writes the first one
            wake = [next_beat, deadline or next_beat, self.debounce.deadline() or next_beat]
            if self.notifier.watchdog_interval is not None:
                wake.append(next_watchdog)
            if self.status_dirty and self.ready:
                wake.append(self.last_status_write + STATUS_INTERVAL)
            next_due = self.next_due(now_mono)
            if next_due is not None:
                wake.append(next_due)  # to look at the clocks when a run should start
            try:
                event = self.events.get(timeout=max(0.01, min(wake) - time.monotonic()))
            except queue.Empty:
                continue
            self.dispatch(event)
        return 0

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, _frame: object) -> None:
        self.events.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def dispatch(self, event: object) -> None:
        if isinstance(event, Ran):
            self.handle_ran(event)
        elif isinstance(event, FilesTouched):
            self.debounce.touch(time.monotonic())
        elif event == signal.SIGHUP:
            self.handle_hup()
        elif isinstance(event, int) and event in (signal.SIGTERM, signal.SIGINT):
            self.handle_term(signal.Signals(event))

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
        self.notifier.notify("READY=1", f"STATUS={self.summary()}")
        log.info("ready: %s", self.summary())

    def handle_hup(self) -> None:
        self.check_files("SIGHUP", force=True)

    def handle_term(self, signum: signal.Signals) -> None:
        log.info("%s: stopping", signum.name)
        self.stopping = True
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.scheduler.shutdown(wait=False)
        self.watcher.stop()
        self.hooks.shutdown()
        with self._inflight_done:
            self._inflight_done.wait_for(lambda: self._inflight == 0, timeout=STOP_GRACE)
            self.abandoned = self._inflight
        if self.abandoned:
            log.warning(
                "%d refresh(es) still in flight; leaving them (every write is atomic)", self.abandoned
            )
        self.flush_status()
        log.info("stopped")

    def serve_metrics(self) -> None:
        if self.metrics is None or self.config.metrics_listen is None:
            return
        host, port = self.config.metrics_listen
        try:
            self.metrics.serve(host, port)
        except OSError as exc:  # tokens matter more than their metrics: carry on
            log.error("cannot serve metrics on %s:%d: %s", host, port, exc.strerror)

    def beat(self) -> None:
        """Wake the scheduler: its sleep does not count time the machine was suspended."""
        self.scheduler.wakeup()
        if self.watcher.ensure_alive():
            self.check_files("the file watcher was restarted")
        else:
            self.check_files("the periodic file check found a change")  # overflows, no inotify

    def handle_clock_jump(self, offset: float) -> None:
        """The wall clock moved against the monotonic one (NTP step, VM restore, an
        operator). Every run is armed in wall time for APScheduler: re-arm each at its
        monotonic moment, so a clock stepped back does not postpone a refresh."""
        log.info(
            "wall clock moved %+.0fs against the monotonic clock; re-arming every refresh",
            offset - self.wall_offset,
        )
        self.wall_offset = offset
        now_mono = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.next_mono is not None:
                force, first = slot.armed
                with contextlib.suppress(Exception):  # the scheduler may be shutting down
                    self.arm(slot, max(0.0, slot.next_mono - now_mono), force=force, first=first)
        self.scheduler.wakeup()

    def next_due(self, now_mono: float) -> float | None:
        """The soonest armed run still ahead, from a heap pruned lazily."""
        with self.due_lock:
            while self.due_heap and self.due_heap[0][0] <= now_mono:
                heapq.heappop(self.due_heap)
            return self.due_heap[0][0] if self.due_heap else None

    def no_credentials_warning(self) -> str:
        return (
            f"{self.config.path}: no credentials configured; is this the right file? "
            "(running, and a reload can add some)"
        )

    # ----------------------------------------------------------------------- scheduling

    def add_slot(self, cred: CredentialConfig, *, force: bool, previous: Slot | None = None) -> None:
        self.generation += 1
        slot = Slot(
            cred=cred,
            refresher=Refresher(cred, self.cache, environ=self.environ),
            generation=self.generation,
            status=previous.status if previous else CredentialStatus(cred.name),
            due_mono=None if force or previous is None else previous.due_mono,
        )
        self.slots[cred.name] = slot
        if self.metrics is not None and previous is None:
            self.metrics.credential_added(cred.name)
        self.arm(slot, 0.0, force=force, first=previous is None)

    def arm(self, slot: Slot, delay: float, *, force: bool = False, first: bool = False) -> None:
        """Run the slot ``delay`` seconds from now (by the monotonic clock)."""
        slot.next_mono = time.monotonic() + delay
        slot.armed = (force, first)
        with self.due_lock:
            heapq.heappush(self.due_heap, (slot.next_mono, slot.generation, slot.cred.name))
        self.scheduler.add_job(
            self.run_slot,
            trigger="date",
            run_date=datetime.fromtimestamp(time.time() + delay, UTC),
            args=(slot.cred.name, slot.generation, force, first),
            id=slot.cred.name,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def client(self) -> TokenClient:
        """One requests session per worker thread: sessions are not thread-safe."""
        client: TokenClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = TokenClient()
        return client

    def run_slot(self, name: str, generation: int, force: bool, first: bool) -> None:
        slot = self.slots.get(name)
        if slot is None or slot.generation != generation or self.stopping:
            return  # removed or replaced by a reload since this run was armed
        if not slot.lock.acquire(blocking=False):
            return  # the run that holds it will re-arm
        with self._inflight_done:
            self._inflight += 1
        try:
            self.refresh_slot(slot, force=force)
        finally:
            slot.lock.release()
            with self._inflight_done:
                self._inflight -= 1
                self._inflight_done.notify_all()
            self.events.put(Ran(name, first))

    def refresh_slot(self, slot: Slot, *, force: bool) -> None:
        """One attempt for one credential; whatever happens, the next one is armed."""
        cred = slot.cred
        started = time.monotonic()
        outcome, failure = self.attempt(slot, force=force)
        duration = time.monotonic() - started
        # After the attempt: Retry-After and backoff count from the answer. Decisions are
        # made in wall time (the policy's frame), anchored to the monotonic clock.
        now, now_mono = time.time(), time.monotonic()
        token = outcome.token if outcome is not None else None
        fetched = outcome is not None and outcome.fetched
        if token is not None and (fetched or slot.due_mono is None):
            due = policy.refresh_due_at(
                token,
                refresh_at=cred.refresh_at,
                min_ttl_margin=cred.min_ttl_margin,
                jitter=self.rng.uniform(-1, 1),
            )
            # A new token's life counts from its request, by the monotonic clock (the wall
            # clock may step while the request is out); a cached one's only from the wall.
            slot.due_mono = started + (due - token.obtained_at) if fetched else now_mono + (due - now)
        due_at = None if slot.due_mono is None else now + (slot.due_mono - now_mono)
        failures = slot.status.failures + 1 if failure else 0
        when = policy.next_attempt(
            now,
            failures=failures,
            token_due=due_at if failure is None or not failure.needs_token else None,
            retryable=failure.retryable if failure else True,
            retry_after=failure.retry_after if failure else None,
            random=self.rng.random(),
            has_token=token is not None,
            min_interval=policy.refresh_floor(token.lifetime) if token else policy.MIN_DELAY,
        )
        if token is not None and token.lifetime < policy.MIN_SANE_LIFETIME and not slot.warned_floor:
            slot.warned_floor = True
            log.warning(
                "%s: the identity provider issues tokens valid for only %.3gs; asking it at most every %gs",
                cred.name,
                token.lifetime,
                policy.MIN_REFRESH_INTERVAL,
            )
        slot.status = record(
            slot.status, now=now, when=when, failures=failures, outcome=outcome, failure=failure
        )
        result = "success" if failure is None else "retryable_error" if failure.retryable else "fatal_error"
        if self.metrics is not None:
            self.metrics.attempt(
                cred.name,
                result=result,
                duration=duration,
                failures=failures,
                expires_at=slot.status.expires_at,
                success_at=slot.status.last_success,
            )
        log.info(
            "%s: refresh %s in %dms, token %s, next refresh %s",
            cred.name,
            result,
            duration * 1000,
            slot.status.token_fingerprint or "none",
            rfc3339(when),
            extra={
                "event": "refresh",
                "credential": cred.name,
                "outcome": result,
                "duration_ms": round(duration * 1000),
                "next_refresh": rfc3339(when),
                "token": slot.status.token_fingerprint,
            },
        )
        if (
            outcome is not None
            and token is not None
            and cred.on_rotate is not None
            and (outcome.sinks_written or (fetched and not cred.sinks))
        ):
            self.hooks.submit(cred.name, token, cred.on_rotate, self.config.secret_variables())
        if outcome is not None and self.on_outcome is not None:
            self.on_outcome(cred.name, outcome)
        if not self.stopping and self.slots.get(cred.name) is slot:
            with contextlib.suppress(Exception):  # the scheduler may be shutting down
                self.arm(slot, when - now)

    def attempt(self, slot: Slot, *, force: bool) -> tuple[Outcome | None, Failure | None]:
        cred = slot.cred
        try:
            fresh_until = None if slot.due_mono is None else time.time() + (slot.due_mono - time.monotonic())
            outcome = slot.refresher.refresh(self.client(), force=force, fresh_until=fresh_until)
        except ConfigError as exc:
            log.error("%s", exc)
            return None, Failure(str(exc), retryable=False)
        except Exception as exc:  # a bug must cost one attempt, never the credential's job
            log.exception("%s: refresh failed unexpectedly", cred.name)
            return None, Failure(f"internal error: {type(exc).__name__}")
        error = outcome.request_error
        if error is not None:
            if not error.retryable:
                log.error(
                    "%s: a retry cannot fix %s; trying again every %ds and at once on reload",
                    cred.name,
                    error.error or "this",
                    policy.BACKOFF_CAP,
                )
            return outcome, Failure(str(error), retryable=error.retryable, retry_after=error.retry_after)
        if outcome.sink_errors:
            message = "; ".join(str(e) for e in outcome.sink_errors)
            return outcome, Failure(message, needs_token=False)
        return outcome, None

    # ----------------------------------------------------------------------- reload

    def watch_files(self) -> None:
        """(Re)start watching what the running config depends on.

        Only files new to the watch get a baseline read here. A file already watched keeps
        the state it was last *compared* at: an edit that lands while a reload is being
        applied must still count as a change at the next check, not become the baseline.
        """
        files = watched_files(self.config)
        self.file_states = {path: self.file_states.get(path) or read_state(path) for path in files}
        self.watcher.update(files)

    def check_files(self, reason: str, *, force: bool = False) -> None:
        """Reload when a watched file's content changed (or always, when forced)."""
        states = read_states(watched_files(self.config), self.file_states)
        differ = changed(self.file_states, states)
        self.file_states = states
        if not differ and not force:
            log.debug("%s: checked %d watched file(s), no content changed", reason, len(states))
            return
        log.info("%s: %s", reason, ", ".join(sorted(map(str, differ))) or "reloading")
        self.reload(differ - {self.config.path})
        self.watch_files()  # the new config may name other files

    def reload(self, changed_files: frozenset[Path] | set[Path] = frozenset()) -> bool:
        """Load the config again and apply it as a diff; a bad one changes nothing."""
        # READY=1 ends a reload; during the start it would claim a start not yet finished
        # (mark_ready sends it, from apply, when the last first attempt is in).
        ready = ("READY=1",) if self.ready else ()
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load(self.config.path, self.environ)
        except Exception as exc:  # load raises only ConfigError; anything else is rejected too
            if not isinstance(exc, ConfigError):
                exc = ConfigError(self.config.path, f"cannot be loaded ({type(exc).__name__})")
            self.config_error = str(exc)
            if self.metrics is not None:
                self.metrics.reloaded(ok=False, at=time.time())
            self.flush_status()  # rare and important: not worth coalescing
            log.error("reload rejected, still running the last good config: %s", exc)
            self.notifier.notify(*ready, f"STATUS=config rejected: {exc}")
            return False
        self.apply(new, changed_files)
        if self.metrics is not None:
            self.metrics.reloaded(ok=True, at=time.time())
        for warning in new.warnings:
            log.warning("%s", warning)
        self.flush_status()
        self.notifier.notify(*ready, f"STATUS={self.summary()}")
        return True

    def apply(self, new: Config, changed_files: frozenset[Path] | set[Path] = frozenset()) -> None:
        plan = plan_reload(self.config.credentials, new.credentials, changed_files)
        self.config_error = None
        logsetup.setup(new.log_level, new.log_format, environ=self.environ)
        if new.state_dir != self.config.state_dir:
            self.cache = TokenCache(new.state_dir)
        old = self.config
        self.config = new
        for name in plan.removed:
            slot = self.slots.pop(name)
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(name)
            remove_sink_files(slot.cred, keep=())
            if self.metrics is not None:
                self.metrics.credential_removed(name)
            self.starting.discard(name)  # READY must not wait for a credential that is gone
            log.info("%s: removed from the config; stopped", name)
        for name in plan.added:
            self.starting.discard(name)
            self.add_slot(new.credentials[name], force=False)
        for name in plan.refetch:
            log.info(
                "%s: settings or secret changed; asking for a new token (the old one stays meanwhile)", name
            )
            self.add_slot(new.credentials[name], force=True, previous=self.slots[name])
        for name in plan.resink:
            remove_sink_files(old.credentials[name], keep=new.credentials[name].sinks)
            self.add_slot(new.credentials[name], force=False, previous=self.slots[name])
        for name in plan.unchanged:
            slot = self.slots[name]
            if slot.status.failures and slot.status.last_error_retryable is False:
                self.arm(slot, 0.0)  # a reload is the moment to retry a fatal error
        log.info("reload applied: %s", plan.summary())
        if not new.credentials:
            log.warning("%s", self.no_credentials_warning())
        self.status_dirty = True
        if not self.ready and not self.starting:
            self.mark_ready()

    # ----------------------------------------------------------------------- status

    def snapshot(self) -> DaemonStatus:
        return DaemonStatus(
            pid=os.getpid(),
            updated_at=time.time(),
            config=str(self.config.path),
            config_error=self.config_error,
            credentials={name: slot.status for name, slot in self.slots.items()},
            warnings=() if self.config.credentials else (self.no_credentials_warning(),),
        )

    def flush_status(self) -> None:
        self.status_dirty = False
        self.last_status_write = time.monotonic()
        if self.ready and not self.stopping:
            self.notifier.notify(f"STATUS={self.summary()}")
        try:
            write_status(self.config.state_dir, self.snapshot())
        except OSError as exc:
            log.warning("cannot write status in %s: %s", self.config.state_dir, exc.strerror)
        if self.metrics is not None:
            self.metrics.flush()

    def summary(self) -> str:
        if self.config_error:
            return f"config rejected: {self.config_error}"
        now = time.time()
        by_name = {name: verdict(slot.status, now) for name, slot in self.slots.items()}
        verdicts = list(by_name.values())
        failing = [name for name, v in by_name.items() if v != "ok"]
        text = (
            f"{len(verdicts)} credential(s): {verdicts.count('ok')} ok, "
            f"{verdicts.count(FAILING)} failing, {verdicts.count(EXPIRED)} without a valid token"
        )
        return text + (f" ({', '.join(sorted(failing)[:5])})" if failing else "")


def make_metrics(config: Config) -> Metrics | None:
    if config.metrics_listen is None and config.metrics_textfile is None:
        return None  # and prometheus_client is never imported
    from tokend.io.metrics import Metrics

    return Metrics(config.metrics_textfile)


def remove_sink_files(cred: CredentialConfig, keep: tuple[Any, ...]) -> None:
    """Delete the sinks marked ``remove_on_stop`` that are not in ``keep``: regular files
    only, and a failure (read-only directory, a directory in the way) is logged, never
    fatal to the reload that asked for it."""
    kept = {sink.path for sink in keep}
    for sink in cred.sinks:
        if not sink.remove_on_stop or sink.path in kept:
            continue
        reason = in_the_way(sink.path)
        if reason is not None:
            log.warning("%s: not removing %s (remove_on_stop): it %s", cred.name, sink.path, reason)
            continue
        try:
            os.unlink(sink.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot remove %s (remove_on_stop): %s", cred.name, sink.path, exc.strerror)
            continue
        log.info("%s: removed %s (remove_on_stop)", cred.name, sink.path)


def leave(daemon: Daemon, code: int) -> int:
    """Return ``code``, or exit with it at once if refreshes were abandoned at stop.

    concurrent.futures joins its worker threads at interpreter exit, so a request hanging
    until its timeout would hold a stop past systemd's patience. Those workers can only
    leave a temp file behind (swept later), never a damaged sink or cache.
    """
    if daemon.abandoned:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


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
    config = load(config_path, environ)
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
        return EX_LOCKED
    daemon = Daemon(config, environ=environ)
    try:
        return leave(daemon, daemon.run(stop_after=stop_after))
    finally:
        lock.release()
