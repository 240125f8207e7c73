"""Fleet mode's bookkeeping, under one lock: which credentials take part and for which
identity, each one's role, Redis's reachability, the counts, what waits for a leader, and
the warnings (at most one of a kind per identity a minute). Shared by the leader wait
(:mod:`tokend.daemon.fleet_wait`), the listener thread (:mod:`tokend.daemon.fleet_listener`)
and :class:`tokend.daemon.fleet.Fleet`; it talks to nobody but the log and ``report``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from tokend.config import CredentialConfig, FleetConfig
from tokend.core.fleet import Fault, FleetEvent, Role, meaning
from tokend.core.health import FleetHealth, FleetWait
from tokend.daemon.clock import Clock

log = logging.getLogger("tokend.fleet")

WARN_EVERY = 60.0  # one warning of a kind per identity this often, however many causes


class FleetState:
    def __init__(
        self,
        fleet: FleetConfig,
        clock: Clock,
        report: Callable[[FleetEvent, str | None], None],
        drop: Callable[[Iterable[str]], None],
    ) -> None:
        """``report``: what the metrics count; ``drop``: forget these leases without a word
        to Redis (when it is unreachable)."""
        self.fleet, self.clock, self.report, self.drop = fleet, clock, report, drop
        self.lock = threading.Condition()
        self.identities: dict[str, str] = {}  # credential name -> identity (fleet credentials only)
        self.creds: dict[str, tuple[CredentialConfig, bytes]] = {}  # identity -> credential, key material
        self.roles: dict[str, Role] = {}
        self.looks: dict[str, float] = {}
        self.inbox: dict[str, bytes] = {}  # identity -> the last blob published (already checked)
        self.sent: dict[str, bytes] = {}  # identity -> the last blob we published
        self.warned: dict[tuple[str, str], float] = {}  # (identity, kind) -> last warned (monotonic)
        self.needed: dict[str, float] = {}  # identity -> when we first needed a token (monotonic)
        self.waiting: dict[str, FleetWait] = {}  # credential name -> what it waits for
        self.reachable = True
        self.changed_at = clock.time()
        self.last_error: str | None = None
        self.needs_write = False  # the episode ends only with an accepted write (READONLY...)
        self.counts = dict.fromkeys(FleetEvent, 0)
        self.primary: Callable[[], str | None] = lambda: None  # Sentinel's primary, when known

    def redis_name(self) -> str:
        """The Redis URL (the parser refuses a password, any user and any query in it), or
        the Sentinel service, with the primary it last named."""
        primary = self.primary()
        return self.fleet.shown() + (f" (primary {primary})" if primary else "")

    def names_of(self, identity: str) -> list[str]:
        with self.lock:
            return [name for name, ident in self.identities.items() if ident == identity]

    def warn(self, identity: str, kind: str, message: str) -> None:
        """A WARNING, at most one per (identity, kind) every WARN_EVERY seconds: a flood of
        bad publications costs one line a minute, not one each."""
        now = self.clock.monotonic()
        with self.lock:
            last = self.warned.get((identity, kind))
            if last is not None and now - last < WARN_EVERY:
                return
            if len(self.warned) > 1000:
                self.warned.clear()
            self.warned[(identity, kind)] = now
        log.warning("%s", message)

    # ----------------------------------------------------------------- roles

    def set_role(self, name: str, role: Role) -> None:
        with self.lock:
            before = self.roles.get(name)
            self.roles[name] = role
        if role is Role.LEADER and before is not Role.LEADER:
            self.leader_change(name, "now the fleet's leader")
        elif before is Role.LEADER and role is not Role.LEADER:
            self.leader_change(name, f"no longer the fleet's leader (now {role})")

    def leader_change(self, name: str, what: str) -> None:
        with self.lock:
            self.counts[FleetEvent.LEADER_CHANGE] += 1
        self.report(FleetEvent.LEADER_CHANGE, name)
        log.info("%s: %s", name, what)

    def role(self, name: str) -> Role | None:
        with self.lock:
            if name not in self.identities:
                return None
            return self.roles.get(name, Role.STANDALONE if not self.reachable else Role.FOLLOWER)

    def next_look(self, name: str) -> float | None:
        with self.lock:
            return self.looks.get(name)

    def received(self, cred: CredentialConfig, identity: str) -> None:
        """A token from the fleet goes into this credential's sinks."""
        with self.lock:
            self.counts[FleetEvent.RECEIVED] += 1
            self.needed.pop(identity, None)
        self.report(FleetEvent.RECEIVED, cred.name)
        if self.roles.get(cred.name) is not Role.LEADER:
            self.set_role(cred.name, Role.FOLLOWER)

    # ----------------------------------------------------------------- Redis's reachability

    def down(self, reason: str, fault: Fault = Fault.OTHER) -> None:
        """Redis is unreachable (or refuses writes: a fail-over): everyone on their own,
        said once, with the primary's address, until it returns; a fail-over's first
        failure is counted once per episode (``failover``), whatever follows in it."""
        means = meaning(fault)
        with self.lock:
            was = self.reachable
            self.reachable, self.last_error = False, reason
            self.needs_write = self.needs_write or means.needs_write
            if was:
                self.changed_at = self.clock.time()
                self.counts[FleetEvent.FALLBACK] += 1
                if means.failover:
                    self.counts[FleetEvent.FAILOVER] += 1
            names = [n for n, r in self.roles.items() if r is Role.LEADER]
            for name in self.roles:
                self.roles[name] = Role.STANDALONE
            held = list(self.identities.values())
        self.drop(held)
        if was:
            self.report(FleetEvent.FALLBACK, None)
            if means.failover:
                self.report(FleetEvent.FAILOVER, None)
                log.warning(
                    "fleet: %s, at %s (%s: %s); leases %s; every credential %s",
                    means.what,
                    self.redis_name(),
                    fault,
                    reason,
                    means.lease,
                    means.token,
                )
            else:
                log.warning(
                    "fleet: Redis unreachable (%s); every credential refreshes on its own until it returns",
                    reason,
                )
            for name in names:
                self.leader_change(name, "no longer the fleet's leader (Redis unreachable)")

    def moved(self, before: str, after: str) -> None:
        """The sentinels name another primary than the one we use (``SENTINEL FAILOVER``,
        before the old one is demoted): a fail-over without an outage, counted as one."""
        with self.lock:
            self.counts[FleetEvent.FAILOVER] += 1
        self.report(FleetEvent.FAILOVER, None)
        log.warning(
            "fleet: the sentinels (%s) name a new primary, %s (was %s): moving to it; the leases "
            "held are renewed there if they were replicated, else lost (each then lapses within a lease)",
            self.fleet.shown(),
            after,
            before,
        )

    def up(self, *, written: bool = False) -> None:
        """Redis answers again. After READONLY, MASTERDOWN or LOADING only ``written`` (a
        write accepted) ends the episode: a demoted primary still answers PING and still
        relays publications."""
        with self.lock:
            if self.reachable or (self.needs_write and not written):
                return
            self.reachable, self.last_error, self.changed_at = True, None, self.clock.time()
            self.needs_write = False
        log.info("fleet: Redis %s answers again; rejoining the fleet", self.redis_name())

    # ----------------------------------------------------------------- health

    def health(self) -> FleetHealth:
        with self.lock:
            return FleetHealth(
                redis=self.redis_name(),
                reachable=self.reachable,
                since=self.changed_at,
                last_error=self.last_error,
                lease=self.fleet.lease,
                leases_held=sum(1 for r in self.roles.values() if r is Role.LEADER),
                leader_changes=self.counts[FleetEvent.LEADER_CHANGE],
                fallbacks=self.counts[FleetEvent.FALLBACK],
                tokens_received=self.counts[FleetEvent.RECEIVED],
                waiting=dict(self.waiting),
            )

    def warnings(self) -> tuple[str, ...]:
        with self.lock:
            if self.reachable:
                return ()
            return (f"fleet: Redis unreachable ({self.last_error}); every credential refreshes on its own",)
