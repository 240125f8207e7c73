"""Fleet mode in the daemon: the :class:`~tokend.daemon.token_source.TokenSource` that
shares one token per identity through Redis. :class:`Fleet` is its lifecycle (start, stop,
a credential forgotten, an identity changed); its bookkeeping is
:mod:`~tokend.daemon.fleet_state`, the offer and the leader wait
:mod:`~tokend.daemon.fleet_wait`, the listener thread :mod:`~tokend.daemon.fleet_listener`.
Imported only with ``[fleet]``, once :func:`tokend.daemon.fleet_mode.fleet_imports` has
found redis-py and cryptography.

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

The listener thread renews the leases, listens to pub/sub and probes an absent Redis.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from tokend.config import CredentialConfig, FleetConfig
from tokend.core.fleet import FleetEvent, Role
from tokend.core.health import FleetHealth
from tokend.core.tokens import Token
from tokend.daemon.clock import Clock, SystemClock
from tokend.daemon.fleet_listener import FleetListener
from tokend.daemon.fleet_state import FleetState
from tokend.daemon.fleet_wait import LeaderWait
from tokend.daemon.token_source import ASK, Offer, TokenSource
from tokend.io import fleet_crypto
from tokend.io.fleet_secret import read_password, read_sentinel_password
from tokend.io.fleet_store import SOCKET_TIMEOUT, FleetStore

log = logging.getLogger("tokend.fleet")


class Fleet(TokenSource):
    def __init__(
        self,
        fleet: FleetConfig,
        config_path: Path,
        *,
        environ: Mapping[str, str] | None = None,
        report: Callable[[FleetEvent, str | None], None] = lambda event, name: None,
        clock: Clock | None = None,
    ) -> None:
        self.fleet = fleet
        self.environ = environ
        self.clock = clock or SystemClock()
        env = os.environ if environ is None else environ
        password = read_password(fleet, config_path, env)
        sentinel_password = read_sentinel_password(fleet, config_path, env)
        self.store = FleetStore(fleet, password, sentinel_password)  # unreadable: ConfigError above
        self.state = FleetState(fleet, self.clock, report, self.store.drop)
        self.state.primary = self.store.primary
        host = socket.gethostname()
        self.wait = LeaderWait(fleet, self.store, self.state, clock=self.clock, host=host, environ=environ)
        self.listener = FleetListener(fleet, self.store, self.state, self.clock)

    # ----------------------------------------------------------------- lifecycle

    def start(self, on_news: Callable[[str], None]) -> None:
        self.listener.start(on_news)
        log.info(
            "fleet mode: Redis %s, lease %gs, keys %s:*",
            self.state.redis_name(),
            self.fleet.lease,
            self.fleet.key_prefix,
        )

    def stop(self) -> None:
        self.listener.stop(timeout=2 * SOCKET_TIMEOUT)
        self.store.release_all()  # a follower takes over at once, not a lease later
        self.store.close()

    def forget(self, name: str, why: str = "removed from the config") -> None:
        """The credential left the config (or fleet mode): its lease goes at once (unless
        another credential shares the identity)."""
        state = self.state
        with state.lock:
            identity = state.identities.pop(name, None)
            role = state.roles.pop(name, None)
            state.looks.pop(name, None)
        if role is Role.LEADER:
            state.leader_change(name, f"no longer the fleet's leader ({why})")
        if identity is not None:
            self.release_unused(identity)

    def release_unused(self, identity: str) -> None:
        """Release the identity's lease when no credential of ours wants it any more."""
        with self.state.lock:
            if identity in self.state.identities.values():
                return
            self.state.creds.pop(identity, None)
        self.store.release(identity)

    # ----------------------------------------------------------------- the seam

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        name, state = cred.name, self.state
        if not cred.fleet:
            self.forget(name, "fleet = false")  # a reload opted it out: no lease, no subscription
            return ASK
        material = fleet_crypto.key_material(cred, self.environ)
        with state.lock:
            previous = state.identities.get(name)
            state.identities[name] = identity
            state.creds[identity] = (cred, material)
            state.looks.pop(name, None)
            pushed = state.inbox.pop(identity, None)
            if ours is not None and now < ours.expires_at:
                state.needed.pop(identity, None)  # we hold a token: a later wait is a new one
        if previous is not None and previous != identity:
            if state.roles.get(name) is Role.LEADER:
                state.set_role(name, Role.FOLLOWER)
            self.release_unused(previous)  # the credential's identity changed (a reload)
        return self.wait.offer(cred, identity, material, pushed, ours, now, due=due)

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        self.wait.obtained(cred, identity, token)

    def failed(self, cred: CredentialConfig, identity: str) -> None:
        self.wait.failed(cred, identity)

    def role(self, name: str) -> Role | None:
        return self.state.role(name)

    def next_look(self, name: str) -> float | None:
        return self.state.next_look(name)

    def health(self) -> FleetHealth | None:
        return self.state.health()

    def warnings(self) -> tuple[str, ...]:
        return self.state.warnings()
