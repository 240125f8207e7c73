"""Fleet mode's side of the token-source seam: what a due credential is offered (the
leader's token, "follow", or "ask the identity provider yourself"), the wait for a
leader's token when this host has none, taking over a lapsed lease, and, as the leader,
publishing what it got or letting go of the lease when it got nothing.

Everything is on the :class:`~tokend.daemon.clock.Clock` seam; the rules are
:mod:`tokend.core.fleet`'s, Redis and AES-GCM :mod:`tokend.io.fleet_store`'s and
:mod:`tokend.io.fleet_crypto`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from tokend.config import CredentialConfig, FleetConfig
from tokend.core.fleet import (
    LOOK_SLACK,
    NOT_NEWER,
    Role,
    Shared,
    follow_until,
    judge,
    localize,
    may_follow,
    wait_budget,
)
from tokend.core.health import FleetWait
from tokend.core.tokens import Token
from tokend.daemon.clock import Clock
from tokend.daemon.fleet_state import FleetState
from tokend.daemon.token_source import ASK, Offer
from tokend.io import fleet_crypto
from tokend.io.fleet_store import FleetStore, RedisDown, TooLarge

log = logging.getLogger("tokend.fleet")

WAIT_POLL = 0.25  # a follower without a token re-reads Redis this often while it waits
WAITING_FOR = "the fleet's leader's token"


@dataclass(frozen=True, slots=True)
class Adoption:
    """What came of a blob read from the fleet: ``token``, the token this host may use
    (None: not this one, and why was logged); ``unreadable``: it does not open with our key
    (another client secret), so this host refreshes on its own."""

    token: Token | None = None
    unreadable: bool = False


REFUSED = Adoption()
UNREADABLE = Adoption(unreadable=True)


class LeaderWait:
    def __init__(
        self,
        fleet: FleetConfig,
        store: FleetStore,
        state: FleetState,
        *,
        clock: Clock,
        host: str,
        environ: Mapping[str, str] | None,
    ) -> None:
        self.fleet, self.store, self.state = fleet, store, state
        self.clock, self.host, self.environ = clock, host, environ

    def offer(
        self,
        cred: CredentialConfig,
        identity: str,
        material: bytes,
        pushed: bytes | None,
        ours: Token | None,
        now: float,
        *,
        due: bool,
    ) -> Offer:
        """``pushed``: a publication the listener took for this identity (already judged)."""
        name, state = cred.name, self.state
        try:
            if pushed is not None:
                adopted = self.adopt(cred, identity, pushed, material, ours, now, self.store.time(), due=due)
                if adopted.token is not None:
                    return Offer(adopted.token)
            if not due:
                return ASK  # the refresher keeps ours
            try:
                stored = self.store.get(identity)
            except TooLarge as exc:
                state.warn(identity, "large", f"{name}: ignoring the fleet's stored token: {exc}")
                stored = None
            state.up()
            if stored is not None:
                adopted = self.adopt(
                    cred,
                    identity,
                    stored.blob,
                    material,
                    ours,
                    now,
                    stored.redis_now,
                    ttl=stored.ttl,
                    due=True,
                )
                if adopted.token is not None:
                    return Offer(adopted.token)
                if adopted.unreadable:
                    state.set_role(name, Role.STANDALONE)
                    return ASK
            if self.store.lead(identity):
                state.set_role(name, Role.LEADER)
                return ASK
            state.set_role(name, Role.FOLLOWER)
            policy_of = {
                "refresh_at": cred.refresh_at,
                "min_ttl_margin": cred.min_ttl_margin,
                "timeout": cred.timeout,
            }
            if may_follow(ours, now, **policy_of):
                look = follow_until(
                    now,
                    lease=self.fleet.lease,
                    lease_left=self.store.lease_left(identity),
                    ours=ours,
                    **policy_of,
                )
                with state.lock:
                    state.looks[name] = look
                return Offer(follow=True)
            if ours is not None:  # we had a token: never wait a lease on top of its end
                state.warn(
                    identity,
                    "late",
                    f"{name}: the fleet's leader has not delivered and our token {ours.fingerprint} "
                    f"expires in {max(0.0, ours.expires_at - now):.1f}s; "
                    "asking the identity provider ourselves",
                )
                return ASK
            return self.wait_for_leader(cred, identity, material)
        except RedisDown as exc:
            state.down(str(exc), exc.fault)
            state.set_role(name, Role.STANDALONE)
            return ASK

    def wait_for_leader(self, cred: CredentialConfig, identity: str, material: bytes) -> Offer:
        """No valid token of our own: wait for the leader's token, and take over its lease
        if it lapses (a dead leader, or one whose request failed) or is released. The
        wait is bounded in total (:func:`tokend.core.fleet.wait_budget`: a lease and a
        request's timeout), counted from when this host first needed the token, whatever
        the lease key shows meanwhile: a live leader whose request outlasts its lease is
        waited for (its lease is being renewed), and nobody re-setting the lease key can
        make the wait longer. We look at the lease again just after it would lapse (its
        PTTL), so we are there to take it. Whoever takes it asks the identity provider
        (and publishes); the others wait for that new leader, within the same budget. The
        wait is logged and shown in status.json (``fleet.waiting``). The answer says how
        long it waited (the token asked for after it lives from then)."""
        state, clock = self.state, self.clock
        started = clock.monotonic()
        budget = wait_budget(lease=self.fleet.lease, timeout=cred.timeout)
        with state.lock:
            since = state.needed.setdefault(identity, started)  # kept until we hold a token
        until = since + budget
        if started >= until:  # a wait for this token already ran out: no second one
            log.debug("%s: still no token; not waiting for the fleet's leader again", cred.name)
            return Offer()
        try:
            left = self.store.lease_left(identity)
        except RedisDown as exc:
            return self.wait_ended(cred, started, exc)
        wall = clock.time()
        with state.lock:
            state.waiting[cred.name] = FleetWait(
                WAITING_FOR, wall - (started - since), wall + (until - started)
            )
        log.info(
            "%s: no token yet; waiting up to %.1fs for the fleet's leader's token (lease %s), "
            "then asking the identity provider ourselves",
            cred.name,
            until - started,
            "free" if left is None else f"held by another host, {left:.1f}s left",
        )
        try:
            lapse = clock.monotonic() + (self.fleet.lease if left is None else left)
            while (now := clock.monotonic()) < until:
                wake = min(now + WAIT_POLL, lapse + LOOK_SLACK, until)
                with state.lock:
                    state.lock.wait_for(lambda: identity in state.inbox, timeout=max(0.0, wake - now))
                    blob = state.inbox.pop(identity, None)
                try:
                    stored = None
                    if blob is None:
                        try:
                            stored = self.store.get(identity)
                        except TooLarge:
                            stored = None
                    ttl: float | None = None
                    if stored is not None:
                        blob, ttl, redis_now = stored.blob, stored.ttl, stored.redis_now
                    elif blob is not None:
                        redis_now = self.store.time()
                    if blob is not None:
                        adopted = self.adopt(
                            cred, identity, blob, material, None, clock.time(), redis_now, ttl=ttl, due=True
                        )
                        if adopted.token is not None:
                            return Offer(adopted.token, waited=clock.monotonic() - started)
                        if adopted.unreadable:
                            state.set_role(cred.name, Role.STANDALONE)
                            return Offer(waited=clock.monotonic() - started)
                    left = self.store.lease_left(identity)
                    if left is None and self.store.lead(identity):  # lapsed or released: ours
                        state.set_role(cred.name, Role.LEADER)
                        return Offer(waited=clock.monotonic() - started)  # we ask, and publish
                except RedisDown as exc:
                    return self.wait_ended(cred, started, exc)
                lapse = clock.monotonic() + (self.fleet.lease if left is None else left)
            log.warning(
                "%s: no token from the fleet's leader within %.1fs; asking the identity provider ourselves",
                cred.name,
                budget,
            )
            return Offer(waited=clock.monotonic() - started)
        finally:
            with state.lock:
                state.waiting.pop(cred.name, None)

    def wait_ended(self, cred: CredentialConfig, started: float, exc: RedisDown) -> Offer:
        """Redis went away while we waited for the leader: on our own, at once."""
        self.state.down(str(exc), exc.fault)
        self.state.set_role(cred.name, Role.STANDALONE)
        return Offer(waited=self.clock.monotonic() - started)

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        """The leader seals and publishes what it got; nobody else does."""
        with self.state.lock:
            self.state.needed.pop(identity, None)  # we hold a token: a later wait is a new one
        if not cred.fleet or not self.store.holds(identity):
            return
        try:
            stamped = self.store.time()  # Redis's clock: a follower judges the age by it too
            remaining = token.expires_at - self.clock.time()
            shared = Shared(identity, token, self.host, remaining, stamped)
            blob = fleet_crypto.seal(shared, fleet_crypto.key_material(cred, self.environ))
            with self.state.lock:
                self.state.sent[identity] = blob  # before it echoes back through our own subscription
            self.store.publish(identity, blob, remaining)
        except RedisDown as exc:
            self.state.down(str(exc), exc.fault)
            self.state.set_role(cred.name, Role.STANDALONE)
            return
        log.info("%s: published token %s to the fleet", cred.name, token.fingerprint)

    def failed(self, cred: CredentialConfig, identity: str) -> None:
        """We could not get a token (the request, or a config error on the way: discovery,
        a key): a leader lets go of its lease, so a host whose request may work takes over
        instead of every follower waiting until its own margin."""
        if not cred.fleet or not self.store.holds(identity):
            return
        self.store.release(identity)
        self.state.set_role(cred.name, Role.FOLLOWER)

    def adopt(
        self,
        cred: CredentialConfig,
        identity: str,
        blob: bytes,
        material: bytes,
        ours: Token | None,
        now: float,
        redis_now: float,
        *,
        ttl: float | None = None,
        due: bool,
    ) -> Adoption:
        """The token in ``blob`` (on our clock, its age by Redis's: ``redis_now``) if this
        host may use it; else :data:`REFUSED` (or :data:`UNREADABLE`), and a log line saying
        why, at most once a minute per kind."""
        try:
            opened = fleet_crypto.unseal(blob, material, identity)
            shared = localize(opened, now, redis_now=redis_now, ttl=ttl)
        except fleet_crypto.Undecryptable as exc:
            self.state.warn(
                identity,
                "unreadable",
                f"{cred.name}: cannot use the fleet's token ({exc}: another client secret?)"
                + ("; refreshing on our own" if due else ""),
            )
            return UNREADABLE
        except ValueError as exc:
            self.state.warn(identity, "invalid", f"{cred.name}: ignoring the fleet's token: {exc}")
            return REFUSED
        reason = judge(
            shared,
            identity=identity,
            ours=ours,
            now=now,
            refresh_at=cred.refresh_at,
            min_ttl_margin=cred.min_ttl_margin,
        )
        if reason is not None:
            message = f"{cred.name}: ignoring the fleet's token {shared.token.fingerprint}: {reason}"
            if reason == NOT_NEWER:
                log.debug("%s", message)
            else:
                self.state.warn(identity, reason, message)
            return REFUSED
        self.state.received(cred, identity)
        log.info(
            "%s: token %s from the fleet (issued by %s)",
            cred.name,
            shared.token.fingerprint,
            shared.issuer_host,
        )
        return Adoption(shared.token)
