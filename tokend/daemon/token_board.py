"""The daemon's memory of each credential's current token, for the local servers.

The token endpoint answers from memory (no identity-provider request per call) and the
proxies add the token to every request, so something must hold the newest valid token of
each credential as the runs produce it: :class:`TokenBoard`, an :class:`Observer` of
``attempted``. It also keeps each credential's status (``/readyz``), who may read it over
the unix socket, and a coalesced "refresh now": a hundred 401s from an upstream that
refused the token cost one token request, and no upstream can make tokend ask more often
than :data:`FORCED_INTERVAL`.

Called from the main loop (``configured``), the workers (``attempted``) and the local
servers' thread: everything is under one lock, and listeners are told outside it.
"""

from __future__ import annotations

import grp
import logging
import pwd
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tokend.config import Config, CredentialConfig
from tokend.core.health import CredentialStatus, readiness
from tokend.core.local_access import Access
from tokend.core.policy import MIN_REFRESH_INTERVAL
from tokend.core.results import Attempt
from tokend.core.tokens import Token
from tokend.daemon.clock import Clock
from tokend.daemon.reporting import Observer

log = logging.getLogger("tokend.daemon")

FORCED_INTERVAL = MIN_REFRESH_INTERVAL  # at most one refresh asked for by an upstream's 401, per credential
PENDING_FOR = 30.0  # a refresh asked for that brought no attempt by then (a run lost) is asked no more
SERVE_MARGIN = 1.0  # a token is served while it has this long left (a tenth of its life, if shorter)


def serve_margin(token: Token) -> float:
    return min(SERVE_MARGIN, token.lifetime / 10)


def resolve_ids(names: Iterable[str | int], *, groups: bool, where: str) -> frozenset[int]:
    """User or group names as ids; a name that does not exist matches nobody (said once
    per load: the endpoint fails closed, and the rest of tokend carries on)."""
    ids = set()
    for name in names:
        if isinstance(name, int):
            ids.add(name)
            continue
        try:
            ids.add(grp.getgrnam(name).gr_gid if groups else pwd.getpwnam(name).pw_uid)
        except KeyError:
            log.warning(
                "%s: no %s named %r; it matches no caller", where, "group" if groups else "user", name
            )
    return frozenset(ids)


def access_for(cred: CredentialConfig) -> Access:
    return Access(
        uids=resolve_ids(cred.endpoint_users, groups=False, where=cred.where("endpoint_users")),
        gids=resolve_ids(cred.endpoint_groups, groups=True, where=cred.where("endpoint_groups")),
        tcp=cred.endpoint_tcp,
        served=not cred.dpop or cred.endpoint_dpop,  # a DPoP token needs the key: on request only
    )


class TokenBoard(Observer):
    """Each credential's newest valid token and status, who may read it, and refreshes
    asked for by the proxies. ``run_now(name)`` arms the credential's run at once, forced."""

    def __init__(self, clock: Clock, run_now: Callable[[str], None] | None = None) -> None:
        self.clock = clock
        self.run_now = run_now
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._statuses: dict[str, CredentialStatus | None] = {}
        self._access: dict[str, Access] = {}
        self._pending: dict[str, float] = {}  # name -> until when (monotonic) the ask stands
        self._last_forced: dict[str, float] = {}
        self._listeners: list[Callable[[str], None]] = []

    # ----------------------------------------------------------------------- observer

    def configured(self, config: Config) -> None:
        access = {name: access_for(cred) for name, cred in config.credentials.items()}
        with self._lock:
            self._access = access
            self._statuses = {name: self._statuses.get(name) for name in config.credentials}
            for gone in set(self._tokens) - set(access):
                del self._tokens[gone]

    def credential_removed(self, name: str) -> None:
        with self._lock:
            self._tokens.pop(name, None)
            self._statuses.pop(name, None)
            self._access.pop(name, None)
            self._pending.pop(name, None)
        self._tell(name)

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        token = attempt.token
        with self._lock:
            if cred.name not in self._access:
                return  # removed meanwhile
            self._statuses[cred.name] = status
            self._pending.pop(cred.name, None)
            held = self._tokens.get(cred.name)
            now = self.clock.time()
            if token is not None and (
                held is None or token.obtained_at >= held.obtained_at or held.expires_at <= now
            ):
                self._tokens[cred.name] = token
        self._tell(cred.name)

    def _tell(self, name: str) -> None:
        for notify in list(self._listeners):
            try:
                notify(name)
            except Exception:  # a listener must never cost a worker its run
                log.exception("telling the local servers about %s failed", name)

    # ----------------------------------------------------------------------- readers

    def token(self, name: str) -> Token | None:
        with self._lock:
            token = self._tokens.get(name)
        if token is None or token.expires_at - serve_margin(token) <= self.clock.time():
            return None
        return token

    def credential_status(self, name: str) -> CredentialStatus | None:
        with self._lock:
            return self._statuses.get(name)

    def access(self, name: str) -> Access | None:
        with self._lock:
            return self._access.get(name)

    def health(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            statuses = dict(self._statuses)
        return readiness(statuses, self.clock.time())

    def subscribe(self, notify: Callable[[str], None]) -> None:
        with self._lock:
            self._listeners.append(notify)

    # ----------------------------------------------------------------------- refresh now

    def refresh(self, name: str, stale: str) -> None:
        """The upstream refused the token ``stale``. Ask for a new one unless one is
        already asked for, the current token is another already, or the last such ask was
        less than :data:`FORCED_INTERVAL` ago."""
        now = self.clock.monotonic()
        with self._lock:
            held = self._tokens.get(name)
            if name not in self._access or self._pending.get(name, 0.0) > now:
                return
            if held is not None and held.access_token != stale:
                return
            last = self._last_forced.get(name)
            if last is not None and now - last < FORCED_INTERVAL:
                return
            self._pending[name] = now + PENDING_FOR
            self._last_forced[name] = now
        log.info("%s: the upstream refused the token; asking for a new one now", name)
        if self.run_now is not None:
            self.run_now(name)

    def pending(self, name: str) -> bool:
        with self._lock:
            return self._pending.get(name, 0.0) > self.clock.monotonic()
