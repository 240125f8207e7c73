"""Fleet mode's Redis: the leader lease, the shared (encrypted) token and its notification.

redis-py does the work: the lease is its :class:`redis.lock.Lock` (``SET key token NX PX``
to take it, a Lua compare-and-``PEXPIRE`` to renew it, a Lua compare-and-``DEL`` to
release it, so a stale leader can never renew or release another's lease). The token is
one ``SET key blob PX ttl`` and one ``PUBLISH``. Every call has a short socket timeout and
no retry: a hung or absent Redis costs a refresh at most :data:`SOCKET_TIMEOUT`, and the
daemon then carries on alone.

Keys (``{prefix}`` is ``[fleet] key_prefix``, ``{identity}`` the token cache key):
``{prefix}:lease:{identity}``, ``{prefix}:token:{identity}``, channel
``{prefix}:rotated:{identity}``. Imported only when ``[fleet]`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from redis.retry import Retry

from tokend.config import ConfigError
from tokend.config.schema import FleetConfig
from tokend.core.fleet import redis_keys
from tokend.io.files import read_regular

log = logging.getLogger("tokend.fleet")

SOCKET_TIMEOUT = 1.0
"""Seconds any one Redis call may take (connect, or an answer). Never blocks a refresh longer."""
MAX_PASSWORD_BYTES = 4096


class RedisDown(Exception):
    """Redis cannot be reached or did not answer; the message is one line, no secret."""


def read_password(fleet: FleetConfig, path: Path, environ: Mapping[str, str]) -> str | None:
    """The Redis password from password_file or password_env; a ConfigError naming the key."""
    if fleet.password_file is not None:
        try:
            raw = read_regular(fleet.password_file, MAX_PASSWORD_BYTES)
        except OSError as exc:
            raise ConfigError(
                path, f"{fleet.password_file}: cannot read: {exc.strerror}", where="fleet.password_file"
            ) from None
        password = raw.decode("utf-8", "replace").strip("\r\n")
        if not password:
            raise ConfigError(path, f"{fleet.password_file} is empty", where="fleet.password_file")
        return password
    if fleet.password_env is not None:
        from_env = environ.get(fleet.password_env)
        if not from_env:
            raise ConfigError(path, f"${fleet.password_env} is not set", where="fleet.password_env")
        return from_env
    return None


def describe_error(exc: BaseException) -> str:
    """One line about a Redis failure; redis-py's messages name the host, never the password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class FleetStore:
    """One Redis connection pool, the leases this daemon holds, and a pub/sub listener."""

    def __init__(self, fleet: FleetConfig, path: Path, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.fleet = fleet
        self.client = redis.Redis.from_url(
            fleet.redis_url,
            username=fleet.username,
            password=read_password(fleet, path, environ),
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.held: dict[str, Lock] = {}
        self.lock = threading.Lock()
        self.pubsub: redis.client.PubSub | None = None
        self.subscribed: set[str] = set()

    def _call(self, what: str, fn: object, *args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)  # type: ignore[operator]
        except RedisError as exc:
            raise RedisDown(f"{what}: {describe_error(exc)}") from None
        except OSError as exc:
            raise RedisDown(f"{what}: {exc.strerror or type(exc).__name__}") from None

    def keys(self, identity: str) -> tuple[str, str, str]:
        return redis_keys(self.fleet.key_prefix, identity)

    # ---------------------------------------------------------------- the commands

    def ping(self) -> None:
        self._call("PING", self.client.ping)

    def get(self, identity: str) -> bytes | None:
        """The stored blob (one GET)."""
        value = self._call("GET", self.client.get, self.keys(identity)[1])
        return value if isinstance(value, bytes) else None

    def publish(self, identity: str, blob: bytes, ttl: float) -> None:
        """Store the blob until the token expires and tell the followers (SET PX + PUBLISH,
        one round trip). The message is the blob itself: a follower needs no GET."""
        _, token_key, channel = self.keys(identity)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(token_key, blob, px=max(1, int(ttl * 1000)))
        pipe.publish(channel, blob)
        self._call("SET+PUBLISH", pipe.execute)

    def lead(self, identity: str) -> bool:
        """Whether this daemon holds the identity's lease, taking it if free (one SET NX PX;
        nothing at all when we already hold it: the renewals keep it)."""
        with self.lock:
            if identity in self.held:
                return True
            lease = Lock(
                self.client,
                self.keys(identity)[0],
                timeout=self.fleet.lease,
                blocking=False,
                thread_local=False,
                raise_on_release_error=False,
            )
            if not self._call("SET NX PX", lease.acquire, blocking=False):
                return False
            self.held[identity] = lease
            return True

    def holds(self, identity: str) -> bool:
        with self.lock:
            return identity in self.held

    def renew(self) -> list[str]:
        """Renew every lease held (one EVALSHA each); returns the identities lost. A Redis
        failure drops them all (a lease we cannot renew may already be another's) and
        raises RedisDown."""
        with self.lock:
            held = dict(self.held)
        lost: list[str] = []
        for identity, lease in held.items():
            try:
                lease.reacquire()
            except LockError:
                lost.append(identity)
            except (RedisError, OSError) as exc:
                self.drop(held)
                raise RedisDown(f"renewing a lease: {describe_error(exc)}") from None
        self.drop(lost)
        return sorted(lost)

    def drop(self, identities: Iterable[str]) -> None:
        """Forget these leases without a word to Redis (it is unreachable)."""
        with self.lock:
            for identity in identities:
                self.held.pop(identity, None)

    def release_all(self) -> None:
        """At stop: compare-and-delete each lease, so a follower takes over at once."""
        with self.lock:
            held, self.held = self.held, {}
        for lease in held.values():
            with contextlib.suppress(LockError, RedisError, OSError):  # else it runs out by itself
                lease.release()

    # ---------------------------------------------------------------- pub/sub

    def listen(self, identities: Iterable[str], timeout: float) -> list[tuple[str, bytes]]:
        """Subscribe to exactly these identities' channels, then wait up to ``timeout`` for
        messages: (identity, blob) pairs. Called from the listener thread only."""
        wanted = {self.keys(i)[2]: i for i in identities}
        try:
            if self.pubsub is None:
                self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                self.subscribed = set()
            pubsub = self.pubsub
            new = set(wanted) - self.subscribed
            gone = self.subscribed - set(wanted)
            if new:
                pubsub.subscribe(*sorted(new))
            if gone:
                pubsub.unsubscribe(*sorted(gone))
            self.subscribed = set(wanted)
            if not self.subscribed:
                return []
            found: list[tuple[str, bytes]] = []
            message = pubsub.get_message(timeout=timeout)
            while message is not None:
                channel, data = message.get("channel"), message.get("data")
                if isinstance(channel, bytes):
                    channel = channel.decode("utf-8", "replace")
                if message.get("type") == "message" and channel in wanted and isinstance(data, bytes):
                    found.append((wanted[channel], data))
                message = pubsub.get_message(timeout=0)
            return found
        except (RedisError, OSError) as exc:
            self.reset_pubsub()
            raise RedisDown(f"SUBSCRIBE: {describe_error(exc)}") from None

    def reset_pubsub(self) -> None:
        pubsub, self.pubsub, self.subscribed = self.pubsub, None, set()
        if pubsub is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close: dropped
                pubsub.close()

    def close(self) -> None:
        self.reset_pubsub()
        with contextlib.suppress(Exception):
            self.client.close()
