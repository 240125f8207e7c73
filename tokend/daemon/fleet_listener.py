"""Fleet mode's listener thread: it renews the leases held (every third of a lease), takes
pub/sub publications (a bounded batch at a time; one that does not open with our key, or
that this host would not take, never wakes a credential) and, while Redis is away, probes
it with backoff. A lost pub/sub connection with the commands still answering is not an
outage: the leases are kept. It never dies of an exception."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tokend.config import FleetConfig
from tokend.core.fleet import Role, judge, localize, meaning
from tokend.daemon.clock import Clock
from tokend.daemon.fleet_state import FleetState
from tokend.io import fleet_crypto
from tokend.io.fleet_store import FleetStore, PubSubLost, RedisDown, Stored

log = logging.getLogger("tokend.fleet")

PROBE_BACKOFF = (0.25, 5.0)  # first and longest pause between looks at an absent Redis
PUBSUB_PAUSE = 0.1  # before subscribing again after the pub/sub connection was dropped


class FleetListener:
    def __init__(self, fleet: FleetConfig, store: FleetStore, state: FleetState, clock: Clock) -> None:
        self.fleet, self.store, self.state, self.clock = fleet, store, state, clock
        self.on_news: Callable[[str], None] = lambda name: None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, on_news: Callable[[str], None]) -> None:
        """``on_news(name)``: a publication this credential would take is in the inbox."""
        self.on_news = on_news
        self.thread = threading.Thread(target=self.listen_forever, name="fleet", daemon=True)
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def listen_forever(self) -> None:
        """Renew leases, take publications, probe an absent Redis; never dies. Each turn
        renews first (when due), then takes one bounded batch of publications, so no
        flood on a channel can make a lease lapse."""
        state, clock = self.state, self.clock
        interval = self.fleet.lease / 3
        next_renew = clock.monotonic() + interval
        pause = PROBE_BACKOFF[0]
        while not self.stopping.is_set():
            try:
                if not state.reachable:
                    self.store.probe(write=state.needs_write)  # after READONLY: a write, not a PING
                    self.store.reset_pubsub()  # subscribe again, on the node that answers now
                    state.up(written=True)
                if clock.monotonic() >= next_renew:
                    next_renew = clock.monotonic() + interval
                    if (moved := self.store.follow_primary()) is not None:
                        state.moved(*moved)
                    with state.lock:
                        wanted = set(state.identities.values())
                    for identity in self.store.renew(wanted):
                        for name in state.names_of(identity):
                            state.set_role(name, Role.FOLLOWER)
                with state.lock:
                    identities = set(state.identities.values())
                if not identities:
                    self.stopping.wait(min(1.0, interval))
                    continue
                timeout = max(0.01, min(1.0, next_renew - clock.monotonic()))
                try:
                    found = self.store.listen(identities, timeout)
                except PubSubLost as exc:
                    self.store.ping()  # the commands fail too (RedisDown): that is an outage
                    state.warn("", "pubsub", f"fleet: {exc}; subscribing again (the leases are kept)")
                    self.stopping.wait(PUBSUB_PAUSE)
                    continue
                for identity in sorted(self.store.take_rejoined()):
                    # Subscribed again (after a fail-over, on the new primary): what was
                    # published meanwhile is read once, before what came since.
                    stored = self.store.get(identity)  # RedisDown: an outage
                    if stored is not None:
                        self.deliver(identity, stored.blob, stored)
                for identity, blob in found.items():
                    self.deliver(identity, blob)
                pause = PROBE_BACKOFF[0]
            except RedisDown as exc:
                state.down(str(exc), exc.fault)
                self.stopping.wait(pause)
                # A fail-over ends within seconds: look at least every half lease, so every
                # host is back on the shared token within a lease of the new primary.
                longest = (
                    min(PROBE_BACKOFF[1], self.fleet.lease / 2)
                    if meaning(exc.fault).failover
                    else PROBE_BACKOFF[1]
                )
                pause = min(longest, pause * 2)
            except Exception:
                log.exception("fleet: listener failed; carrying on")
                self.store.reset_pubsub()
                self.stopping.wait(pause)
                pause = min(PROBE_BACKOFF[1], pause * 2)

    def deliver(self, identity: str, blob: bytes, stored: Stored | None = None) -> None:
        """A publication (or, with ``stored``, the token key read after subscribing again):
        wake the identity's credentials only for a token they would take (it opens with
        our key, is for this identity, fresh and unexpired); anything else costs one
        unseal and, at most once a minute, a warning."""
        state = self.state
        with state.lock:
            if state.sent.get(identity) == blob:
                return  # our own publication
            known = state.creds.get(identity)
        state.up()
        if known is None:
            return  # no credential has run yet: its first run reads Redis anyway
        cred, material = known
        now = self.clock.time()
        try:
            opened = fleet_crypto.unseal(blob, material, identity)
            if stored is None:
                shared = localize(opened, now, redis_now=self.store.time())  # RedisDown: an outage
            else:
                shared = localize(opened, now, redis_now=stored.redis_now, ttl=stored.ttl)
        except ValueError as exc:  # Undecryptable included: garbage, or another secret
            state.warn(
                identity, "published", f"{cred.name}: ignoring a publication on the fleet's channel: {exc}"
            )
            return
        reason = judge(
            shared,
            identity=identity,
            ours=None,
            now=now,
            refresh_at=cred.refresh_at,
            min_ttl_margin=cred.min_ttl_margin,
        )
        if reason is not None and stored is not None:
            # Read back after subscribing again: an old token there (the one before the
            # fail-over, its leader's last) is what is expected, not worth a warning.
            log.debug("%s: the fleet's stored token, read after subscribing again: %s", cred.name, reason)
            return
        if reason is not None:
            state.warn(
                identity, "published", f"{cred.name}: ignoring a publication on the fleet's channel: {reason}"
            )
            return
        with state.lock:
            state.inbox[identity] = blob
            state.lock.notify_all()
        for name in state.names_of(identity):
            self.on_news(name)
