"""Fleet mode in the daemon: the :class:`~tokend.daemon.token_source.TokenSource` that
shares one token per identity through Redis, and its listener thread.

Per identity, whoever holds the lease is the leader: only it asks the identity provider,
then seals the token and publishes it. The others follow: the publication wakes their
credential at once (``on_news``), and at their own due time they read Redis themselves,
so a lost message costs nothing. The rules (see the README's "Fleet mode"):

- availability first: Redis unreachable → every credential refreshes on its own, logged
  once, and rejoins when Redis answers again;
- a follower without any valid token waits for the leader's token, at most a lease and
  a request's timeout in all (:func:`tokend.core.fleet.wait_budget`, from when it first
  needed it, whatever the lease key shows), saying so (log, ``fleet.waiting`` in
  status.json), and takes the lease over when it lapses or is released (then it asks,
  and publishes); one with a token waits until :func:`tokend.core.fleet.follow_deadline`,
  looking again when the lease would lapse;
- a token read from Redis is used only if it decrypts, is for this identity, is fresh by
  the credential's policy and newer than ours (:func:`tokend.core.fleet.judge`), its age
  judged by Redis's clock (TIME, which stamps every publication) and its expiry taken on
  this host's clock (:func:`tokend.core.fleet.localize`); one that cannot
  be decrypted (another secret) makes this host refresh on its own, saying why;
- a lease is held only while it is wanted: released when the credential leaves the
  config, opts out, changes identity, or it cannot get a token (any failure: a refused
  request, refused discovery metadata, an unreadable key).

The listener thread renews the leases (every third of a lease), listens to pub/sub (a
bounded batch at a time; a publication that does not open with our key never wakes a
credential) and, while Redis is away, probes it with backoff. A lost pub/sub connection
with the commands still answering is not an outage: the leases are kept. It never dies
of an exception.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tokend.config import ConfigError, CredentialConfig
from tokend.config.schema import FleetConfig
from tokend.core.fleet import (
    LOOK_SLACK,
    NOT_NEWER,
    FleetEvent,
    Role,
    Shared,
    follow_until,
    judge,
    localize,
    may_follow,
    wait_budget,
)
from tokend.core.tokens import Token
from tokend.daemon.token_source import ASK, Offer, TokenSource

log = logging.getLogger("tokend.fleet")

PROBE_BACKOFF = (0.25, 5.0)  # first and longest pause between looks at an absent Redis
WAIT_POLL = 0.25  # a follower without a token re-reads Redis this often while it waits
WARN_EVERY = 60.0  # one warning of a kind per identity this often, however many causes
PUBSUB_PAUSE = 0.1  # before subscribing again after the pub/sub connection was dropped


def fleet_imports(config_path: Path) -> None:
    """redis-py and cryptography, or the one-line config error that says how to get them."""
    try:
        import cryptography  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            config_path, f"needs {exc.name}: pip install 'tokend[fleet]'", where="fleet"
        ) from None


class Fleet(TokenSource):
    def __init__(
        self,
        fleet: FleetConfig,
        config_path: Path,
        *,
        environ: Mapping[str, str] | None = None,
        report: Callable[[FleetEvent, str | None], None] = lambda event, name: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        fleet_imports(config_path)
        from tokend.io import fleet_crypto
        from tokend.io.fleet_secret import read_password
        from tokend.io.fleet_store import FleetStore

        self.fleet = fleet
        self.crypto = fleet_crypto
        self.environ = environ
        self.report = report
        self.clock = clock
        password = read_password(fleet, config_path, os.environ if environ is None else environ)
        self.store = FleetStore(fleet, password)  # a password it cannot read: ConfigError above
        self.host = socket.gethostname()
        self.lock = threading.Condition()
        self.identities: dict[str, str] = {}  # credential name -> identity (fleet credentials only)
        self.creds: dict[str, tuple[CredentialConfig, bytes]] = {}  # identity -> credential, key material
        self.roles: dict[str, Role] = {}
        self.looks: dict[str, float] = {}
        self.inbox: dict[str, bytes] = {}  # identity -> the last blob published (already checked)
        self.sent: dict[str, bytes] = {}  # identity -> the last blob we published
        self.warned: dict[tuple[str, str], float] = {}  # (identity, kind) -> last warned (monotonic)
        self.needed: dict[str, float] = {}  # identity -> when we first needed a token (monotonic)
        self.waiting: dict[str, dict[str, Any]] = {}  # credential name -> what it waits for
        self.reachable = True
        self.changed_at = clock()
        self.last_error: str | None = None
        self.counts = dict.fromkeys(FleetEvent, 0)
        self.on_news: Callable[[str], None] = lambda name: None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self, on_news: Callable[[str], None]) -> None:
        self.on_news = on_news
        self.thread = threading.Thread(target=self.listen_forever, name="fleet", daemon=True)
        self.thread.start()
        log.info(
            "fleet mode: Redis %s, lease %gs, keys %s:*",
            self.redis_name(),
            self.fleet.lease,
            self.fleet.key_prefix,
        )

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2 * self.store_timeout())
        self.store.release_all()  # a follower takes over at once, not a lease later
        self.store.close()

    def forget(self, name: str, why: str = "removed from the config") -> None:
        """The credential left the config (or fleet mode): its lease goes at once (unless
        another credential shares the identity)."""
        with self.lock:
            identity = self.identities.pop(name, None)
            role = self.roles.pop(name, None)
            self.looks.pop(name, None)
        if role is Role.LEADER:
            self.leader_change(name, f"no longer the fleet's leader ({why})")
        if identity is not None:
            self.release_unused(identity)

    def release_unused(self, identity: str) -> None:
        """Release the identity's lease when no credential of ours wants it any more."""
        with self.lock:
            if identity in self.identities.values():
                return
            self.creds.pop(identity, None)
        self.store.release(identity)

    def store_timeout(self) -> float:
        from tokend.io.fleet_store import SOCKET_TIMEOUT

        return SOCKET_TIMEOUT

    def redis_name(self) -> str:
        """The Redis URL (the parser refuses a password, any user and any query in it)."""
        return self.fleet.redis_url.split("?", 1)[0]

    # ----------------------------------------------------------------- the seam

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        name = cred.name
        if not cred.fleet:
            self.forget(name, "fleet = false")  # a reload opted it out: no lease, no subscription
            return ASK
        material = self.crypto.key_material(cred, self.environ)
        with self.lock:
            previous = self.identities.get(name)
            self.identities[name] = identity
            self.creds[identity] = (cred, material)
            self.looks.pop(name, None)
            pushed = self.inbox.pop(identity, None)
            if ours is not None and now < ours.expires_at:
                self.needed.pop(identity, None)  # we hold a token: a later wait is a new one
        if previous is not None and previous != identity:
            if self.roles.get(name) is Role.LEADER:
                self.set_role(name, Role.FOLLOWER)
            self.release_unused(previous)  # the credential's identity changed (a reload)
        from tokend.io.fleet_store import RedisDown, TooLarge

        try:
            if pushed is not None:
                token = self.adopt(cred, identity, pushed, material, ours, now, self.store.time(), due=due)
                if isinstance(token, Token):
                    return Offer(token)
            if not due:
                return ASK  # the refresher keeps ours
            try:
                stored = self.store.get(identity)
            except TooLarge as exc:
                self.warn(identity, "large", f"{name}: ignoring the fleet's stored token: {exc}")
                stored = None
            self.up()
            if stored is not None:
                token = self.adopt(
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
                if isinstance(token, Token):
                    return Offer(token)
                if token is UNREADABLE:
                    self.set_role(name, Role.STANDALONE)
                    return ASK
            if self.store.lead(identity):
                self.set_role(name, Role.LEADER, identity)
                return ASK
            self.set_role(name, Role.FOLLOWER, identity)
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
                with self.lock:
                    self.looks[name] = look
                return Offer(follow=True)
            if ours is not None:  # we had a token: never wait a lease on top of its end
                self.warn(
                    identity,
                    "late",
                    f"{name}: the fleet's leader has not delivered and our token {ours.fingerprint} "
                    f"expires in {max(0.0, ours.expires_at - now):.1f}s; "
                    "asking the identity provider ourselves",
                )
                return ASK
            return self.wait_for_leader(cred, identity, material)
        except RedisDown as exc:
            self.down(str(exc))
            self.set_role(name, Role.STANDALONE)
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
        from tokend.io.fleet_store import RedisDown, TooLarge

        started = time.monotonic()
        budget = wait_budget(lease=self.fleet.lease, timeout=cred.timeout)
        with self.lock:
            since = self.needed.setdefault(identity, started)  # kept until we hold a token
        until = since + budget
        if started >= until:  # a wait for this token already ran out: no second one
            log.debug("%s: still no token; not waiting for the fleet's leader again", cred.name)
            return Offer()
        try:
            left = self.store.lease_left(identity)
        except RedisDown as exc:
            return self.wait_ended(cred, started, exc)
        wall = self.clock()
        with self.lock:
            self.waiting[cred.name] = {
                "for": "the fleet's leader's token",
                "since": wall - (started - since),
                "until": wall + (until - started),
            }
        log.info(
            "%s: no token yet; waiting up to %.1fs for the fleet's leader's token (lease %s), "
            "then asking the identity provider ourselves",
            cred.name,
            until - started,
            "free" if left is None else f"held by another host, {left:.1f}s left",
        )
        try:
            lapse = time.monotonic() + (self.fleet.lease if left is None else left)
            while (now := time.monotonic()) < until:
                wake = min(now + WAIT_POLL, lapse + LOOK_SLACK, until)
                with self.lock:
                    self.lock.wait_for(lambda: identity in self.inbox, timeout=max(0.0, wake - now))
                    blob = self.inbox.pop(identity, None)
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
                        token = self.adopt(
                            cred, identity, blob, material, None, self.clock(), redis_now, ttl=ttl, due=True
                        )
                        if isinstance(token, Token):
                            return Offer(token, waited=time.monotonic() - started)
                        if token is UNREADABLE:
                            self.set_role(cred.name, Role.STANDALONE)
                            return Offer(waited=time.monotonic() - started)
                    left = self.store.lease_left(identity)
                    if left is None and self.store.lead(identity):  # lapsed or released: ours
                        self.set_role(cred.name, Role.LEADER, identity)
                        return Offer(waited=time.monotonic() - started)  # we ask, and publish
                except RedisDown as exc:
                    return self.wait_ended(cred, started, exc)
                lapse = time.monotonic() + (self.fleet.lease if left is None else left)
            log.warning(
                "%s: no token from the fleet's leader within %.1fs; asking the identity provider ourselves",
                cred.name,
                budget,
            )
            return Offer(waited=time.monotonic() - started)
        finally:
            with self.lock:
                self.waiting.pop(cred.name, None)

    def wait_ended(self, cred: CredentialConfig, started: float, exc: Exception) -> Offer:
        """Redis went away while we waited for the leader: on our own, at once."""
        self.down(str(exc))
        self.set_role(cred.name, Role.STANDALONE)
        return Offer(waited=time.monotonic() - started)

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        """The leader seals and publishes what it got; nobody else does."""
        with self.lock:
            self.needed.pop(identity, None)  # we hold a token: a later wait is a new one
        if not cred.fleet or not self.store.holds(identity):
            return
        from tokend.io.fleet_store import RedisDown

        try:
            stamped = self.store.time()  # Redis's clock: a follower judges the age by it too
            remaining = token.expires_at - self.clock()
            shared = Shared(identity, token, self.host, remaining, stamped)
            blob = self.crypto.seal(shared, self.crypto.key_material(cred, self.environ))
            with self.lock:
                self.sent[identity] = blob  # before it echoes back through our own subscription
            self.store.publish(identity, blob, remaining)
        except RedisDown as exc:
            self.down(str(exc))
            self.set_role(cred.name, Role.STANDALONE)
            return
        log.info("%s: published token %s to the fleet", cred.name, token.fingerprint)

    def failed(self, cred: CredentialConfig, identity: str) -> None:
        """We could not get a token (the request, or a config error on the way: discovery,
        a key): a leader lets go of its lease, so a host whose request may work takes over
        instead of every follower waiting until its own margin."""
        if not cred.fleet or not self.store.holds(identity):
            return
        self.store.release(identity)
        self.set_role(cred.name, Role.FOLLOWER)

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
    ) -> Token | object | None:
        """The token in ``blob`` (on our clock, its age by Redis's: ``redis_now``) if this
        host may use it; else None (or UNREADABLE), and a log line saying why, at most
        once a minute per kind."""
        try:
            shared = localize(self.crypto.unseal(blob, material, identity), now, redis_now=redis_now, ttl=ttl)
        except self.crypto.Undecryptable as exc:
            self.warn(
                identity,
                "unreadable",
                f"{cred.name}: cannot use the fleet's token ({exc}: another client secret?)"
                + ("; refreshing on our own" if due else ""),
            )
            return UNREADABLE
        except ValueError as exc:
            self.warn(identity, "invalid", f"{cred.name}: ignoring the fleet's token: {exc}")
            return None
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
                self.warn(identity, reason, message)
            return None
        with self.lock:
            self.counts[FleetEvent.RECEIVED] += 1
            self.needed.pop(identity, None)
        self.report(FleetEvent.RECEIVED, cred.name)
        if self.roles.get(cred.name) is not Role.LEADER:
            self.set_role(cred.name, Role.FOLLOWER)
        log.info(
            "%s: token %s from the fleet (issued by %s)",
            cred.name,
            shared.token.fingerprint,
            shared.issuer_host,
        )
        return shared.token

    def warn(self, identity: str, kind: str, message: str) -> None:
        """A WARNING, at most one per (identity, kind) every WARN_EVERY seconds: a flood of
        bad publications costs one line a minute, not one each."""
        now = time.monotonic()
        with self.lock:
            last = self.warned.get((identity, kind))
            if last is not None and now - last < WARN_EVERY:
                return
            if len(self.warned) > 1000:
                self.warned.clear()
            self.warned[(identity, kind)] = now
        log.warning("%s", message)

    # ----------------------------------------------------------------- roles and health

    def set_role(self, name: str, role: Role, identity: str | None = None) -> None:
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

    def down(self, reason: str) -> None:
        """Redis is unreachable: everyone on their own, said once until it returns."""
        with self.lock:
            was = self.reachable
            self.reachable, self.last_error = False, reason
            if was:
                self.changed_at = self.clock()
                self.counts[FleetEvent.FALLBACK] += 1
            names = [n for n, r in self.roles.items() if r is Role.LEADER]
            for name in self.roles:
                self.roles[name] = Role.STANDALONE
            held = list(self.identities.values())
        self.store.drop(held)
        if was:
            self.report(FleetEvent.FALLBACK, None)
            log.warning(
                "fleet: Redis unreachable (%s); every credential refreshes on its own until it returns",
                reason,
            )
            for name in names:
                self.leader_change(name, "no longer the fleet's leader (Redis unreachable)")

    def up(self) -> None:
        with self.lock:
            if self.reachable:
                return
            self.reachable, self.last_error, self.changed_at = True, None, self.clock()
        log.info("fleet: Redis %s answers again; rejoining the fleet", self.redis_name())

    def health(self) -> dict[str, Any] | None:
        with self.lock:
            return {
                "redis": self.redis_name(),
                "reachable": self.reachable,
                "since": self.changed_at,
                "last_error": self.last_error,
                "lease": self.fleet.lease,
                "leases_held": sum(1 for r in self.roles.values() if r is Role.LEADER),
                "leader_changes": self.counts[FleetEvent.LEADER_CHANGE],
                "fallbacks": self.counts[FleetEvent.FALLBACK],
                "tokens_received": self.counts[FleetEvent.RECEIVED],
                "waiting": {name: dict(wait) for name, wait in self.waiting.items()},
            }

    def warnings(self) -> tuple[str, ...]:
        with self.lock:
            if self.reachable:
                return ()
            return (f"fleet: Redis unreachable ({self.last_error}); every credential refreshes on its own",)

    # ----------------------------------------------------------------- the listener thread

    def listen_forever(self) -> None:
        """Renew leases, take publications, probe an absent Redis; never dies. Each turn
        renews first (when due), then takes one bounded batch of publications, so no
        flood on a channel can make a lease lapse."""
        from tokend.io.fleet_store import PubSubLost, RedisDown

        interval = self.fleet.lease / 3
        next_renew = time.monotonic() + interval
        pause = PROBE_BACKOFF[0]
        while not self.stopping.is_set():
            try:
                if not self.reachable:
                    self.store.ping()
                    self.up()
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + interval
                    with self.lock:
                        wanted = set(self.identities.values())
                    for identity in self.store.renew(wanted):
                        for name in self.names_of(identity):
                            self.set_role(name, Role.FOLLOWER)
                with self.lock:
                    identities = set(self.identities.values())
                if not identities:
                    self.stopping.wait(min(1.0, interval))
                    continue
                timeout = max(0.01, min(1.0, next_renew - time.monotonic()))
                try:
                    found = self.store.listen(identities, timeout)
                except PubSubLost as exc:
                    self.store.ping()  # the commands fail too (RedisDown): that is an outage
                    self.warn("", "pubsub", f"fleet: {exc}; subscribing again (the leases are kept)")
                    self.stopping.wait(PUBSUB_PAUSE)
                    continue
                for identity, blob in found.items():
                    self.deliver(identity, blob)
                pause = PROBE_BACKOFF[0]
            except RedisDown as exc:
                self.down(str(exc))
                self.stopping.wait(pause)
                pause = min(PROBE_BACKOFF[1], pause * 2)
            except Exception:
                log.exception("fleet: listener failed; carrying on")
                self.store.reset_pubsub()
                self.stopping.wait(pause)
                pause = min(PROBE_BACKOFF[1], pause * 2)

    def names_of(self, identity: str) -> list[str]:
        with self.lock:
            return [name for name, ident in self.identities.items() if ident == identity]

    def deliver(self, identity: str, blob: bytes) -> None:
        """A publication: wake the identity's credentials only for a token they would take
        (it opens with our key, is for this identity, fresh and unexpired); anything else
        costs one unseal and, at most once a minute, a warning."""
        with self.lock:
            if self.sent.get(identity) == blob:
                return  # our own publication
            known = self.creds.get(identity)
        self.up()
        if known is None:
            return  # no credential has run yet: its first run reads Redis anyway
        cred, material = known
        now = self.clock()
        try:
            opened = self.crypto.unseal(blob, material, identity)
            shared = localize(opened, now, redis_now=self.store.time())  # RedisDown: an outage
        except ValueError as exc:  # Undecryptable included: garbage, or another secret
            self.warn(
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
        if reason is not None:
            self.warn(
                identity, "published", f"{cred.name}: ignoring a publication on the fleet's channel: {reason}"
            )
            return
        with self.lock:
            self.inbox[identity] = blob
            self.lock.notify_all()
        for name in self.names_of(identity):
            self.on_news(name)


UNREADABLE = object()
""":meth:`Fleet.adopt`'s answer for a blob this host cannot decrypt."""
