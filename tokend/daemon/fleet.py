"""Fleet mode in the daemon: the :class:`~tokend.daemon.token_source.TokenSource` that
shares one token per identity through Redis, and its listener thread.

Per identity, whoever holds the lease is the leader: only it asks the identity provider,
then seals the token and publishes it. The others follow: the publication wakes their
credential at once (``on_news``), and at their own due time they read Redis themselves,
so a lost message costs nothing. The rules (see the README's "Fleet mode"):

- availability first: Redis unreachable → every credential refreshes on its own, logged
  once, and rejoins when Redis answers again;
- a follower without any valid token waits at most one lease for the leader, then asks
  the identity provider itself;
- a token read from Redis is used only if it decrypts, is for this identity, has not
  expired and is newer than ours (:func:`tokend.core.fleet.judge`); one that cannot be
  decrypted (another secret) makes this host refresh on its own, saying why.

The listener thread renews the leases (every third of a lease), listens to pub/sub and,
while Redis is away, probes it with backoff. It never dies of an exception.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tokend.config import ConfigError, CredentialConfig
from tokend.config.schema import FleetConfig
from tokend.core.fleet import FleetEvent, Role, Shared, follow_until, judge, may_follow
from tokend.core.tokens import Token
from tokend.daemon.token_source import ASK, Offer, TokenSource

log = logging.getLogger("tokend.fleet")

PROBE_BACKOFF = (0.25, 5.0)  # first and longest pause between looks at an absent Redis
WAIT_POLL = 0.25  # a follower without a token re-reads Redis this often while it waits


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
        from tokend.io.fleet_store import FleetStore

        self.fleet = fleet
        self.crypto = fleet_crypto
        self.environ = environ
        self.report = report
        self.clock = clock
        self.store = FleetStore(fleet, config_path, environ)  # reads the password: ConfigError
        self.host = socket.gethostname()
        self.lock = threading.Condition()
        self.identities: dict[str, str] = {}  # credential name -> identity
        self.roles: dict[str, Role] = {}
        self.looks: dict[str, float] = {}
        self.inbox: dict[str, bytes] = {}  # identity -> the last blob published
        self.sent: dict[str, bytes] = {}  # identity -> the last blob we published
        self.warned: set[tuple[str, str]] = set()  # (identity, blob digest) already explained
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

    def forget(self, name: str) -> None:
        with self.lock:
            self.identities.pop(name, None)
            self.roles.pop(name, None)
            self.looks.pop(name, None)

    def store_timeout(self) -> float:
        from tokend.io.fleet_store import SOCKET_TIMEOUT

        return SOCKET_TIMEOUT

    def redis_name(self) -> str:
        """The Redis URL without its query (it holds no password: the parser refuses one)."""
        return self.fleet.redis_url.split("?", 1)[0]

    # ----------------------------------------------------------------- the seam

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        name = cred.name
        if not cred.fleet:
            return ASK
        with self.lock:
            self.identities[name] = identity
            self.looks.pop(name, None)
            pushed = self.inbox.pop(identity, None)
        from tokend.io.fleet_store import RedisDown

        material = self.crypto.key_material(cred, self.environ)
        if pushed is not None:
            token = self.adopt(cred, identity, pushed, material, ours, now)
            if isinstance(token, Token):
                return Offer(token)
        if not due:
            return ASK  # the refresher keeps ours
        try:
            stored = self.store.get(identity)
            self.up()
            if stored is not None:
                token = self.adopt(cred, identity, stored, material, ours, now)
                if isinstance(token, Token):
                    return Offer(token)
                if token is UNREADABLE:
                    self.set_role(name, Role.STANDALONE)
                    return ASK
            if self.store.lead(identity):
                self.set_role(name, Role.LEADER, identity)
                return ASK
            self.set_role(name, Role.FOLLOWER, identity)
            if may_follow(ours, now, lease=self.fleet.lease):
                with self.lock:
                    self.looks[name] = follow_until(now, lease=self.fleet.lease, ours=ours)
                return Offer(follow=True)
            if ours is not None and ours.expires_at > now:
                log.warning(
                    "%s: the fleet's leader has not delivered and our token %s expires in %.1fs; "
                    "asking the identity provider ourselves",
                    name,
                    ours.fingerprint,
                    ours.expires_at - now,
                )
                return ASK
            return self.wait_for_leader(cred, identity, material)
        except RedisDown as exc:
            self.down(str(exc))
            self.set_role(name, Role.STANDALONE)
            return ASK

    def wait_for_leader(self, cred: CredentialConfig, identity: str, material: bytes) -> Offer:
        """No valid token of our own: give the leader one lease, then ask ourselves."""
        from tokend.io.fleet_store import RedisDown

        deadline = time.monotonic() + self.fleet.lease
        while (left := deadline - time.monotonic()) > 0:
            with self.lock:
                self.lock.wait_for(lambda: identity in self.inbox, timeout=min(WAIT_POLL, left))
                blob = self.inbox.pop(identity, None)
            if blob is None:
                try:
                    blob = self.store.get(identity)
                except RedisDown as exc:
                    self.down(str(exc))
                    self.set_role(cred.name, Role.STANDALONE)
                    return ASK
            if blob is not None:
                token = self.adopt(cred, identity, blob, material, None, self.clock())
                if isinstance(token, Token):
                    return Offer(token)
                if token is UNREADABLE:
                    self.set_role(cred.name, Role.STANDALONE)
                    return ASK
        log.warning(
            "%s: no token from the fleet's leader within %gs; asking the identity provider ourselves",
            cred.name,
            self.fleet.lease,
        )
        return ASK

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        """The leader seals and publishes what it got; nobody else does."""
        if not cred.fleet or not self.store.holds(identity):
            return
        from tokend.io.fleet_store import RedisDown

        shared = Shared(identity, token, self.host)
        blob = self.crypto.seal(shared, self.crypto.key_material(cred, self.environ))
        with self.lock:
            self.sent[identity] = blob  # before it echoes back through our own subscription
        try:
            self.store.publish(identity, blob, token.expires_at - self.clock())
        except RedisDown as exc:
            self.down(str(exc))
            self.set_role(cred.name, Role.STANDALONE)
            return
        log.info("%s: published token %s to the fleet", cred.name, token.fingerprint)

    def adopt(
        self,
        cred: CredentialConfig,
        identity: str,
        blob: bytes,
        material: bytes,
        ours: Token | None,
        now: float,
    ) -> Token | object | None:
        """The token in ``blob`` if this host may use it; else None (or UNREADABLE), and a
        log line once per blob saying why."""
        digest = hashlib.sha256(blob).hexdigest()[:16]
        try:
            shared = self.crypto.unseal(blob, material, identity)
        except self.crypto.Undecryptable as exc:
            self.explain_once(
                identity,
                digest,
                logging.WARNING,
                f"{cred.name}: cannot use the fleet's token ({exc}: another client secret?); "
                "refreshing on our own",
            )
            return UNREADABLE
        except ValueError as exc:
            self.explain_once(
                identity, digest, logging.WARNING, f"{cred.name}: ignoring the fleet's token: {exc}"
            )
            return None
        reason = judge(shared, identity=identity, ours=ours, now=now)
        if reason is not None:
            level = logging.DEBUG if reason == "it is not newer than ours" else logging.WARNING
            self.explain_once(
                identity,
                digest,
                level,
                f"{cred.name}: ignoring the fleet's token {shared.token.fingerprint}: {reason}",
            )
            return None
        with self.lock:
            self.counts[FleetEvent.RECEIVED] += 1
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

    def explain_once(self, identity: str, digest: str, level: int, message: str) -> None:
        with self.lock:
            if (identity, digest) in self.warned:
                return
            if len(self.warned) > 1000:
                self.warned.clear()
            self.warned.add((identity, digest))
        log.log(level, "%s", message)

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
        self.store.drop(list(self.identities.values()))
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
            }

    def warnings(self) -> tuple[str, ...]:
        with self.lock:
            if self.reachable:
                return ()
            return (f"fleet: Redis unreachable ({self.last_error}); every credential refreshes on its own",)

    # ----------------------------------------------------------------- the listener thread

    def listen_forever(self) -> None:
        """Renew leases, take publications, probe an absent Redis; never dies."""
        from tokend.io.fleet_store import RedisDown

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
                    for identity in self.store.renew():
                        for name in self.names_of(identity):
                            self.set_role(name, Role.FOLLOWER)
                with self.lock:
                    identities = set(self.identities.values())
                if not identities:
                    self.stopping.wait(min(1.0, interval))
                    continue
                timeout = max(0.01, min(1.0, next_renew - time.monotonic()))
                for identity, blob in self.store.listen(identities, timeout):
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
        with self.lock:
            if self.sent.get(identity) == blob:
                return  # our own publication
            self.inbox[identity] = blob
            self.lock.notify_all()
        self.up()
        for name in self.names_of(identity):
            self.on_news(name)


UNREADABLE = object()
""":meth:`Fleet.adopt`'s answer for a blob this host cannot decrypt."""
