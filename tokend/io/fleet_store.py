"""Fleet mode's Redis: the leader lease, the shared (encrypted) token and its notification.

redis-py does the work: the lease is its :class:`redis.lock.Lock` (``SET key token NX PX``
to take it, a Lua compare-and-``PEXPIRE`` to renew it, a Lua compare-and-``DEL`` to
release it, so a stale leader can never renew or release another's lease). The token is
one ``SET key blob PX ttl`` and one ``PUBLISH``; it is read back with a bound (``STRLEN``,
``GETRANGE 0 16383`` and ``PTTL`` in one round trip: a huge value is never read whole).
Every call has a short socket timeout and no retry: a hung or absent Redis costs a
refresh at most :data:`SOCKET_TIMEOUT`, and the daemon then carries on alone.

``TIME`` is Redis's own clock: a leader stamps each publication with it and a follower
reads it with the token (in the same round trip), so a publication's age never depends on
how far one host's clock is from another's.

Pub/sub has its own connection, whose parser refuses any reply longer than
:data:`~tokend.core.fleet.MAX_BLOB_BYTES` from its length header, before reading it
(:class:`BoundedParser`): a huge publication is never read into memory (at most one
socket read, 64 KiB); the subscription is dropped and taken again (:class:`PubSubLost`).
It is drained a bounded batch at a time (:data:`DRAIN_MESSAGES`,
:data:`DRAIN_SECONDS`), keeping only the last blob per identity, so a flood on a channel
can neither starve the lease renewals nor grow memory. A lost pub/sub connection
(:class:`PubSubLost`; Redis drops a subscriber that reads too slowly) is not "Redis down":
the caller checks the commands before it gives up its leases.

Keys (``{prefix}`` is ``[fleet] key_prefix``, ``{identity}`` the token cache key):
``{prefix}:lease:{identity}``, ``{prefix}:token:{identity}``, channel
``{prefix}:rotated:{identity}``. Imported only when ``[fleet]`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis._parsers import _RESP2Parser
from redis._parsers.socket import SocketBuffer
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError, ResponseError
from redis.lock import Lock
from redis.retry import Retry
from redis.sentinel import Sentinel
from redis.utils import SENTINEL

from tokend.config import FleetConfig
from tokend.config.urls import split_host_port
from tokend.core.fleet import MAX_BLOB_BYTES, Fault, fault_of, meaning, redis_keys

log = logging.getLogger("tokend.fleet")

SOCKET_TIMEOUT = 1.0
"""Seconds any one Redis call may take (connect, or an answer). Never blocks a refresh longer."""
DRAIN_MESSAGES = 256
DRAIN_SECONDS = 0.1
"""One :meth:`FleetStore.listen` takes at most this many messages, or this long, after the first."""


class RedisDown(Exception):
    """Redis cannot be reached or did not answer; the message is one line, no secret.
    ``fault`` is its kind (:func:`tokend.core.fleet.fault_of`): a fail-over's or not."""

    def __init__(self, message: str, fault: Fault = Fault.OTHER) -> None:
        super().__init__(message)
        self.fault = fault


def fault_from(exc: BaseException) -> Fault:
    """The kind of this Redis (or socket) failure: the decision is :func:`fault_of`'s."""
    return fault_of(type(exc).__name__, str(exc))


class PubSubLost(Exception):
    """The pub/sub connection failed; the commands may still work (ask with a PING)."""


class TooLarge(Exception):
    """The token key holds more than :data:`~tokend.core.fleet.MAX_BLOB_BYTES`: not read."""


class OversizedReply(RedisError):
    """A reply on the pub/sub connection longer than MAX_BLOB_BYTES: refused unread."""


class BoundedBuffer(SocketBuffer):
    """redis-py's socket buffer, refusing a bulk reply longer than the limit from its
    length header, before a byte of it is awaited (the connection is then dropped)."""

    def read(self, length: int, timeout: float | object = SENTINEL) -> bytes:
        if length > MAX_BLOB_BYTES:
            raise OversizedReply(f"a message of {length} bytes, more than {MAX_BLOB_BYTES}: not read")
        return super().read(length, timeout)


class BoundedParser(_RESP2Parser):
    """The RESP2 parser over a :class:`BoundedBuffer`: the pub/sub connection's. (The
    commands' replies are bounded by the commands themselves: GETRANGE, STRLEN, PTTL.)"""

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)  # type: ignore[no-untyped-call]
        sock = self._sock
        if sock is None:  # pragma: no cover (on_connect always sets it)
            raise redis.exceptions.ConnectionError("not connected")
        self._buffer = BoundedBuffer(sock, self.socket_read_size, connection.socket_timeout)


@dataclass(frozen=True, slots=True)
class Stored:
    """What :meth:`FleetStore.get` read: the blob, the seconds its key has left (None: no
    expiry) and Redis's clock when it was read (TIME, seconds since the epoch)."""

    blob: bytes
    ttl: float | None
    redis_now: float


def redis_seconds(answer: object) -> float:
    """TIME's answer ([seconds, microseconds]) as seconds; ValueError for anything else."""
    if not isinstance(answer, list | tuple) or len(answer) != 2:
        raise ValueError(f"not a TIME answer: {type(answer).__name__}")
    seconds, micros = (int(part) for part in answer)
    return seconds + micros / 1_000_000


def describe_error(exc: BaseException) -> str:
    """One line about a Redis failure; redis-py's messages name the host, never the password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def tls_settings(fleet: FleetConfig) -> dict[str, Any]:
    """redis-py's TLS settings for rediss://: the certificate verified and its name checked
    (redis-py's default leaves the name unchecked), against ``ca_bundle`` or the system's
    CAs; a client certificate when configured."""
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(fleet.ca_bundle) if fleet.ca_bundle is not None else None,
        "ssl_certfile": str(fleet.tls_cert_file) if fleet.tls_cert_file is not None else None,
        "ssl_keyfile": str(fleet.tls_key_file) if fleet.tls_key_file is not None else None,
    }


class FleetStore:
    """One Redis connection pool, the leases this daemon holds, and a pub/sub listener."""

    def __init__(
        self, fleet: FleetConfig, password: str | None, sentinel_password: str | None = None
    ) -> None:
        """``password``: from :func:`tokend.io.fleet_secret.read_password`;
        ``sentinel_password`` from :func:`~tokend.io.fleet_secret.read_sentinel_password`."""
        self.fleet = fleet
        settings: dict[str, Any] = {
            "username": fleet.username,
            "password": password,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if (fleet.redis_url or "").startswith("rediss://"):
            settings.update(tls_settings(fleet))
        self.sentinel: Sentinel | None = None
        if fleet.sentinels is not None and fleet.service_name is not None:
            # Each new connection asks the sentinels (in turn, 1 s each at most) for the
            # service's primary: after a fail-over the next connection goes to the new one;
            # a connection still on the demoted node meets READONLY and is dropped.
            own = {"username": fleet.sentinel_username, "password": sentinel_password}
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
                [split_host_port(address) for address in fleet.sentinels],
                sentinel_kwargs={**settings, **own},
                **settings,
            )
            self.client: redis.Redis = self.sentinel.master_for(fleet.service_name)  # type: ignore[no-untyped-call]
            # Pub/sub on its own pool, whose parser never reads a reply over MAX_BLOB_BYTES.
            self.subscriber: redis.Redis = self.sentinel.master_for(  # type: ignore[no-untyped-call]
                fleet.service_name, parser_class=BoundedParser, protocol=2
            )
        else:
            url = fleet.redis_url or ""
            self.client = redis.Redis.from_url(url, **settings)
            self.subscriber = redis.Redis.from_url(url, **settings, parser_class=BoundedParser, protocol=2)
        self.held: dict[str, Lock] = {}
        self.lock = threading.Lock()
        self.pubsub: redis.client.PubSub | None = None
        self.subscribed: set[str] = set()
        self.lost: set[str] = set()  # channels subscribed when the subscription was dropped
        self.rejoined: set[str] = set()  # identities subscribed again: their token key to read once

    def _call(self, what: str, fn: object, *args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)  # type: ignore[operator]
        except RedisError as exc:
            raise RedisDown(f"{what}: {describe_error(exc)}", fault_from(exc)) from None
        except OSError as exc:
            raise RedisDown(f"{what}: {exc.strerror or type(exc).__name__}", fault_from(exc)) from None

    def primary(self) -> str | None:
        """The primary the sentinels named last (HOST:PORT), None without Sentinel or
        before the first connection."""
        if self.sentinel is None:
            return None
        address = getattr(self.client.connection_pool, "master_address", None)
        if not isinstance(address, tuple) or len(address) != 2:
            return None
        host, port = address
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def follow_primary(self) -> tuple[str, str] | None:
        """With Sentinel: ask the sentinels which primary they name now (SENTINEL MASTERS).
        After ``SENTINEL FAILOVER`` the old primary goes on accepting writes until the
        sentinels demote it, seconds later: a client that only asks at connect time would
        stay there. When they name another, the idle connections are dropped (one in use
        is dropped when it is put back: redis-py's pool no longer owns it) and so is the
        subscription, so everything goes to the new primary; returns (old, new). None when
        nothing moved, without Sentinel, or when no sentinel answers (the connections we
        have carry on: the sentinels down is not the primary down)."""
        if self.sentinel is None:
            return None
        before = self.primary()
        try:
            self.client.connection_pool.get_master_address()  # type: ignore[attr-defined]
            self.subscriber.connection_pool.get_master_address()  # type: ignore[attr-defined]
        except (RedisError, OSError):
            return None
        after = self.primary()
        if before is None or after is None or before == after:
            return None
        self.reset_pubsub()
        return before, after

    def keys(self, identity: str) -> tuple[str, str, str]:
        return redis_keys(self.fleet.key_prefix, identity)

    # ---------------------------------------------------------------- the commands

    def ping(self) -> None:
        """PING, and TIME: a Redis (or an ACL) that will not tell its time cannot share
        tokens safely, and says so here (``tokend check --online``, the outage probe)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.ping()
        pipe.time()
        self._call("PING+TIME", pipe.execute)

    def probe(self, *, write: bool) -> None:
        """The outage probe: PING+TIME, and with ``write`` also one short-lived write under
        the prefix (``SET {prefix}:probe 1 PX 1000``). After READONLY or MASTERDOWN a
        demoted primary still answers PING: only an accepted write says a primary is back.
        Connections are dropped first, so the next one goes to wherever the address (or
        Sentinel) now points."""
        if write:
            with contextlib.suppress(Exception):
                self.client.connection_pool.disconnect()
        self.ping()
        if write:
            self._call("SET PX (probe)", self.client.set, f"{self.fleet.key_prefix}:probe", b"1", px=1000)

    def time(self) -> float:
        """Redis's clock (TIME), seconds since the epoch: the one clock the fleet shares."""
        answer = self._call("TIME", self.client.time)
        try:
            return redis_seconds(answer)
        except ValueError as exc:
            raise RedisDown(f"TIME: {exc}") from None

    def get(self, identity: str) -> Stored | None:
        """The stored blob, the seconds its key has left and Redis's clock, or None when
        there is none. Read with a bound (STRLEN, GETRANGE, PTTL, TIME: one round trip);
        more than MAX_BLOB_BYTES raises :class:`TooLarge`, unread."""
        token_key = self.keys(identity)[1]
        pipe = self.client.pipeline(transaction=False)
        pipe.strlen(token_key)
        pipe.getrange(token_key, 0, MAX_BLOB_BYTES - 1)
        pipe.pttl(token_key)
        pipe.time()
        answers: list[object] = self._call(  # type: ignore[assignment]
            "STRLEN+GETRANGE+PTTL+TIME", pipe.execute, raise_on_error=False
        )
        size, value, pttl, clock = answers
        for answer in answers:  # MASTERDOWN, LOADING: a fail-over, not "no token here"
            if isinstance(answer, Exception) and meaning(fault_from(answer)).failover:
                raise RedisDown(f"STRLEN+GETRANGE+PTTL+TIME: {describe_error(answer)}", fault_from(answer))
        if isinstance(clock, Exception):  # NOPERM for TIME (an ACL without +time): no age
            raise RedisDown(f"TIME: {describe_error(clock)}", fault_from(clock))
        if isinstance(size, ResponseError) or not isinstance(size, int) or not isinstance(value, bytes):
            return None  # absent, or not a string (WRONGTYPE): nothing to use
        if not size:
            return None
        if size > MAX_BLOB_BYTES:
            raise TooLarge(f"{size} bytes, more than {MAX_BLOB_BYTES}")
        try:
            redis_now = redis_seconds(clock)
        except ValueError as exc:
            raise RedisDown(f"TIME: {exc}") from None
        return Stored(value, pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None, redis_now)

    def lease_left(self, identity: str) -> float | None:
        """Seconds until the identity's lease lapses (PTTL), or None (none held, no expiry)."""
        pttl = self._call("PTTL", self.client.pttl, self.keys(identity)[0])
        return pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None

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

    def release(self, identity: str) -> None:
        """Give up one lease at once (compare-and-delete), so another host may lead."""
        with self.lock:
            lease = self.held.pop(identity, None)
        if lease is not None:
            with contextlib.suppress(LockError, RedisError, OSError):  # else it runs out by itself
                lease.release()

    def renew(self, wanted: Iterable[str]) -> list[str]:
        """Renew the leases held for ``wanted`` identities (one EVALSHA each) and release
        the others (a credential removed, opted out or changed identity must not keep
        its lease forever); returns the identities lost. A Redis failure drops them all
        (a lease we cannot renew may already be another's) and raises RedisDown."""
        wanted = set(wanted)
        with self.lock:
            unwanted = [identity for identity in self.held if identity not in wanted]
        for identity in unwanted:
            self.release(identity)
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
                raise RedisDown(f"renewing a lease: {describe_error(exc)}", fault_from(exc)) from None
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

    def listen(self, identities: Iterable[str], timeout: float) -> dict[str, bytes]:
        """Subscribe to exactly these identities' channels, then wait up to ``timeout`` for
        a message and take what follows, at most DRAIN_MESSAGES or DRAIN_SECONDS: the last
        blob per identity (none over MAX_BLOB_BYTES). Raises :class:`PubSubLost`. Called
        from the listener thread only."""
        wanted = {self.keys(i)[2]: i for i in identities}
        try:
            if self.pubsub is None:
                # Confirmations are not ignored: redis-py answers None for an ignored one,
                # which would end a drain early; only "message" counts below.
                self.pubsub = self.subscriber.pubsub()  # type: ignore[no-untyped-call]
                self.subscribed = set()
            pubsub = self.pubsub
            new = set(wanted) - self.subscribed
            gone = self.subscribed - set(wanted)
            if new:
                pubsub.subscribe(*sorted(new))
                # Subscribed again after a drop (a fail-over, a restart, a slow reader cut
                # off): what was published meanwhile is not replayed, so the caller reads
                # each such identity's token key once (take_rejoined), after this wait.
                self.lost &= set(wanted)
                self.rejoined |= {wanted[channel] for channel in new & self.lost}
                self.lost -= new
            if gone:
                pubsub.unsubscribe(*sorted(gone))
            self.subscribed = set(wanted)
            if not self.subscribed:
                return {}
            found: dict[str, bytes] = {}
            message = pubsub.get_message(timeout=timeout)
            until, taken = time.monotonic() + DRAIN_SECONDS, 0
            while message is not None:
                taken += 1
                channel, data = message.get("channel"), message.get("data")
                if isinstance(channel, bytes):
                    channel = channel.decode("utf-8", "replace")
                if (
                    message.get("type") == "message"
                    and channel in wanted
                    and isinstance(data, bytes)
                    and len(data) <= MAX_BLOB_BYTES
                ):
                    found[wanted[channel]] = data  # only the last one counts
                if taken >= DRAIN_MESSAGES or time.monotonic() >= until:
                    break  # the rest waits for the next call: the renewals come first
                message = pubsub.get_message(timeout=0)
            return found
        except (RedisError, OSError) as exc:
            self.reset_pubsub()
            raise PubSubLost(f"pub/sub: {describe_error(exc)}") from None

    def take_rejoined(self) -> set[str]:
        """The identities subscribed again since the last call: read their token key once."""
        rejoined, self.rejoined = self.rejoined, set()
        return rejoined

    def reset_pubsub(self) -> None:
        self.lost |= self.subscribed
        pubsub, self.pubsub, self.subscribed = self.pubsub, None, set()
        if pubsub is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close: dropped
                pubsub.close()

    def close(self) -> None:
        self.reset_pubsub()
        for client in (self.client, self.subscriber):
            with contextlib.suppress(Exception):
                client.close()
        if self.sentinel is not None:
            with contextlib.suppress(Exception):
                self.sentinel.close()
