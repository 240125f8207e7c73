"""Each credential's refreshes: arm a run, run it on a worker, decide the next, report.

A :class:`Slot` is one credential at run time. Every run is one attempt, in its own try,
and whatever happens the next run is armed. Runs are timed by the monotonic clock; the
jobs underneath speak wall time, so when the wall clock steps, :meth:`Runner.rearm_all`
re-arms every run at its monotonic moment.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tokend.config import ConfigError, CredentialConfig, SinkConfig
from tokend.core import policy
from tokend.core.fleet import Role, follow_deadline, jitter_for
from tokend.core.health import CredentialStatus
from tokend.core.results import Attempt, Origin, Result
from tokend.daemon.clock import Clock
from tokend.daemon.jobs import Jobs
from tokend.daemon.refresher import Refresher
from tokend.daemon.reporting import Observer
from tokend.daemon.token_source import STANDALONE, TokenSource
from tokend.io.cache import TokenCache
from tokend.io.token_client import TokenClient

log = logging.getLogger("tokend.daemon")


@dataclass(slots=True)
class Slot:
    """One credential at run time. Replaced, never edited, when a reload changes it."""

    cred: CredentialConfig
    refresher: Refresher
    generation: int
    status: CredentialStatus
    # Monotonic, not wall-clock: a clock stepped back must not leave an expired token in
    # the sinks. The wall clock is only for what is written out and for the jobs.
    due_mono: float | None = None  # jittered refresh moment of the token in the sinks
    next_mono: float | None = None  # when the next run is armed for
    armed: tuple[bool, bool] = (False, False)  # (force, first) of the armed run
    warned_floor: bool = False
    woken: bool = False  # fleet news came while a run was in flight: run again right after
    removed: bool = False  # left the config; the source forgets it once no run is in flight
    forgotten: bool = False  # ... and has (under ``lock``: exactly once)
    then: Callable[[CredentialConfig], None] | None = None  # after forgetting: the reload's cleanup
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the run in flight


def dpop_thumbprint(cred: CredentialConfig) -> str | None:
    """The DPoP key's thumbprint for the status (the key the token was bound to, read again:
    it is small, and read at each token request anyway); None if it cannot be read now."""
    from tokend.io.dpop import credential_key

    try:
        return credential_key(cred).thumbprint
    except ConfigError:
        return None


def record(
    status: CredentialStatus, attempt: Attempt, *, now: float, received: bool = False, role: str | None = None
) -> CredentialStatus:
    """The credential's status after one attempt. ``received``: its token came from the
    fleet's leader just now (a success as good as our own request)."""
    failed = attempt.result is not Result.SUCCESS
    status = status.updated(
        last_attempt=now,
        next_refresh=attempt.next_at,
        failures=attempt.failures,
        last_error=attempt.error if failed else None,
        last_error_retryable=(attempt.result is Result.RETRYABLE_ERROR) if failed else None,
        role=role,
    )
    token = attempt.token
    if token is None:
        return status
    status = status.updated(
        token_fingerprint=token.fingerprint,
        expires_at=token.expires_at,
        obtained_at=token.obtained_at,
        issued_token_type=token.issued_token_type,
    )
    if attempt.fetched or received:
        return status.updated(last_success=now)
    if status.last_success is None:
        return status.updated(last_success=token.obtained_at)  # a cached token: when it came
    return status


class Runner:
    """The slots, their runs and what is in flight. ``on_ran(name, first)`` is called from
    the worker after every run (the daemon queues it for its main loop)."""

    def __init__(
        self,
        jobs: Jobs,
        observers: Observer,
        *,
        cache: TokenCache,
        clock: Clock,
        rng: random.Random,
        environ: Mapping[str, str] | None,
        on_ran: Callable[[str, bool], None],
        client_factory: Callable[[], TokenClient] = TokenClient,
        source: TokenSource = STANDALONE,
    ) -> None:
        self.jobs, self.observers, self.cache = jobs, observers, cache
        self.source = source  # standalone, or fleet mode's Redis
        self.clock, self.rng, self.environ, self.on_ran = clock, rng, environ, on_ran
        self.client_factory = client_factory
        self.slots: dict[str, Slot] = {}
        self.generation = 0
        self.stopping = False
        self.abandoned = 0  # runs still in flight when we stopped
        self._local = threading.local()
        self._inflight = 0
        self._inflight_done = threading.Condition()
        self._due: list[tuple[float, int, str]] = []  # (next_mono, generation, name)
        self._due_lock = threading.Lock()

    # ----------------------------------------------------------------------- slots

    def add(self, cred: CredentialConfig, *, force: bool = False, previous: Slot | None = None) -> None:
        """Start (or replace) a credential's slot and run it now."""
        self.generation += 1
        slot = Slot(
            cred=cred,
            refresher=Refresher(
                cred, self.cache, environ=self.environ, clock=self.clock.time, source=self.source
            ),
            generation=self.generation,
            status=previous.status if previous else CredentialStatus(cred.name),
            due_mono=None if force or previous is None else previous.due_mono,
        )
        self.slots[cred.name] = slot
        if previous is None:
            self.observers.credential_added(cred.name)
        self.arm(slot, 0.0, force=force, first=previous is None)

    def remove(self, name: str, *, then: Callable[[CredentialConfig], None] | None = None) -> Slot:
        """Stop a credential's runs. ``then`` (deleting its remove_on_stop sinks) runs once
        no run of it is in flight: a run still going would write those sinks again."""
        slot = self.slots.pop(name)
        self.jobs.cancel(name)
        slot.removed, slot.then = True, then
        self.forget_when_idle(slot)
        self.observers.credential_removed(name)
        return slot

    def sinks_in_use(self) -> tuple[SinkConfig, ...]:
        """Every sink a current slot writes (a removed credential's cleanup keeps them)."""
        return tuple(sink for slot in list(self.slots.values()) for sink in slot.cred.sinks)

    def forget_when_idle(self, slot: Slot) -> None:
        """Tell the source a removed credential is gone, once no run of it is in flight:
        a run still going would reach the fleet's ``offer()`` after ``forget()`` and put
        the credential back, its lease then renewed for good. A run in flight calls this
        again when it ends; whoever holds the slot's lock forgets, exactly once."""
        if not slot.lock.acquire(blocking=False):
            return  # the run in flight does it when it ends
        try:
            name = slot.cred.name
            if slot.removed and not slot.forgotten:
                slot.forgotten = True
                if name not in self.slots:  # not added again since: a new slot owns the name
                    self.source.forget(name)
                if slot.then is not None:  # it keeps the sinks a current slot writes
                    try:
                        slot.then(slot.cred)
                    except Exception:  # a cleanup must never cost the run's thread
                        log.exception("%s: cleaning up after its removal failed", name)
        finally:
            slot.lock.release()

    def arm(self, slot: Slot, delay: float, *, force: bool = False, first: bool = False) -> None:
        """Run the slot ``delay`` seconds from now (by the monotonic clock)."""
        slot.next_mono = self.clock.monotonic() + delay
        slot.armed = (force, first)
        with self._due_lock:
            heapq.heappush(self._due, (slot.next_mono, slot.generation, slot.cred.name))
        self.jobs.schedule(slot.cred.name, delay, self.run, slot.cred.name, slot.generation, force, first)

    def wake(self, name: str) -> None:
        """Run a credential now: the fleet's leader published a token for it (called from
        the fleet's listener thread)."""
        slot = self.slots.get(name)
        if slot is not None and not self.stopping:
            slot.woken = True  # if a run is in flight, it runs again when done
            self.arm(slot, 0.0)

    def rearm_all(self) -> None:
        """The wall clock stepped: re-arm every run at its monotonic moment."""
        now_mono = self.clock.monotonic()
        for slot in list(self.slots.values()):
            if slot.next_mono is not None:
                force, first = slot.armed
                self.arm(slot, max(0.0, slot.next_mono - now_mono), force=force, first=first)
        self.jobs.wakeup()

    def next_due(self) -> float | None:
        """The soonest armed run still ahead (monotonic), from a heap pruned lazily."""
        now_mono = self.clock.monotonic()
        with self._due_lock:
            while self._due and self._due[0][0] <= now_mono:
                heapq.heappop(self._due)
            return self._due[0][0] if self._due else None

    def retry_fatal(self, names: Iterable[str]) -> None:
        """Run these now if their last error was one no retry could fix."""
        for name in names:
            slot = self.slots[name]
            if slot.status.failures and slot.status.last_error_retryable is False:
                self.arm(slot, 0.0)

    def stop(self, grace: float) -> None:
        """No new runs; wait up to ``grace`` for those in flight, then leave them."""
        self.stopping = True
        self.jobs.shutdown()
        with self._inflight_done:
            self._inflight_done.wait_for(lambda: self._inflight == 0, timeout=grace)
            self.abandoned = self._inflight

    # ----------------------------------------------------------------------- a run

    def client(self) -> TokenClient:
        """One requests session per worker thread: sessions are not thread-safe."""
        client: TokenClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.client_factory()
        return client

    def run(self, name: str, generation: int, force: bool, first: bool) -> None:
        slot = self.slots.get(name)
        if slot is None or slot.generation != generation or self.stopping:
            return  # removed or replaced by a reload since this run was armed
        if not slot.lock.acquire(blocking=False):
            return  # the run that holds it will re-arm
        if slot.removed:  # removed between the look-up and the lock
            slot.lock.release()
            self.forget_when_idle(slot)
            return
        slot.woken = False
        with self._inflight_done:
            self._inflight += 1
        try:
            self.refresh(slot, force=force)
        finally:
            slot.lock.release()
            if slot.removed:
                self.forget_when_idle(slot)
            with self._inflight_done:
                self._inflight -= 1
                self._inflight_done.notify_all()
            self.on_ran(name, first)

    def refresh(self, slot: Slot, *, force: bool) -> None:
        """One attempt for one credential; whatever happens, the next one is armed."""
        cred, clock = slot.cred, self.clock
        started = clock.monotonic()
        attempt = self.attempt(slot, force=force)
        # After the attempt: Retry-After and backoff count from the answer. Decisions are
        # made in wall time (the policy's frame), anchored to the monotonic clock.
        now, now_mono = clock.time(), clock.monotonic()
        token = attempt.token
        received = attempt.origin is Origin.FLEET
        role = self.source.role(cred.name)
        if token is not None and (attempt.fetched or received or slot.due_mono is None):
            due = policy.refresh_due_at(
                token,
                refresh_at=cred.refresh_at,
                min_ttl_margin=cred.min_ttl_margin,
                jitter=jitter_for(role, self.rng.uniform(-1, 1)),  # a fleet's leader comes due first
            )
            if role is Role.FOLLOWER:  # its late jitter never past the moment it stops waiting
                due = min(
                    due,
                    follow_deadline(
                        token,
                        refresh_at=cred.refresh_at,
                        min_ttl_margin=cred.min_ttl_margin,
                        timeout=cred.timeout,
                    ),
                )
            # A new token's life counts from its request, by the monotonic clock (the wall
            # clock may step while the request is out); a cached one's only from the wall.
            # A wait for the fleet's leader came before the request: not part of the token's life.
            asked = started + attempt.waited
            slot.due_mono = asked + (due - token.obtained_at) if attempt.fetched else now_mono + (due - now)
        due_at = None if slot.due_mono is None else now + (slot.due_mono - now_mono)
        failed = attempt.result is not Result.SUCCESS
        failures = slot.status.failures + 1 if failed else 0
        when = policy.next_attempt(
            now,
            failures=failures,
            token_due=None if failed and attempt.needs_token else due_at,
            retryable=attempt.result is not Result.FATAL_ERROR,
            retry_after=attempt.retry_after,
            random=self.rng.random(),
            has_token=token is not None,
            min_interval=policy.refresh_floor(token.lifetime) if token else policy.MIN_DELAY,
        )
        look = self.source.next_look(cred.name)
        if look is not None and not failed:
            when = max(when, look)  # a follower: the leader is getting the next token
        if token is not None and token.lifetime < policy.MIN_SANE_LIFETIME and not slot.warned_floor:
            slot.warned_floor = True
            log.warning(
                "%s: the identity provider issues tokens valid for only %.3gs; asking it at most every %gs",
                cred.name,
                token.lifetime,
                policy.MIN_REFRESH_INTERVAL,
            )
        attempt = dataclasses.replace(
            attempt, duration=clock.monotonic() - started, failures=failures, next_at=when
        )
        slot.status = record(slot.status, attempt, now=now, received=received, role=role)
        if cred.dpop and attempt.token is not None:
            slot.status = slot.status.updated(dpop_key=dpop_thumbprint(cred))
        self.observers.attempted(attempt, cred, slot.status)
        if not self.stopping and self.slots.get(cred.name) is slot:
            try:
                self.arm(slot, 0.0 if slot.woken else when - now)
            except Exception:  # the jobs may be shutting down
                log.debug("%s: not re-armed (stopping)", cred.name)

    def attempt(self, slot: Slot, *, force: bool) -> Attempt:
        cred, clock = slot.cred, self.clock
        try:
            fresh_until = (
                None if slot.due_mono is None else clock.time() + (slot.due_mono - clock.monotonic())
            )
            return slot.refresher.refresh(self.client(), force=force, fresh_until=fresh_until)
        except ConfigError as exc:
            log.error("%s", exc)
            return Attempt(cred.name, None, Result.FATAL_ERROR, error=str(exc), request_failed=True)
        except Exception as exc:  # a bug must cost one attempt, never the credential's job
            log.exception("%s: refresh failed unexpectedly", cred.name)
            return Attempt(
                cred.name,
                None,
                Result.RETRYABLE_ERROR,
                error=f"internal error: {type(exc).__name__}",
                request_failed=True,
            )
