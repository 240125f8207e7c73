"""Fleet mode's decisions, as pure functions: what a shared token is, whether a host may
use the one it read from Redis, and how long a follower waits for its leader.

The IO (Redis, AES-GCM) is :mod:`tokend.io.fleet_store` and :mod:`tokend.io.fleet_crypto`;
the daemon's side is :mod:`tokend.daemon.fleet`. Everything here takes the clock as an
argument, so every rule is tested without Redis and without sleeping.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from tokend.core import policy
from tokend.core.tokens import Token

PAYLOAD_VERSION = 3  # 3: carries ``stamped`` (Redis's TIME when published) with ``remaining``
MAX_BLOB_BYTES = 16 * 1024
"""The largest blob a host reads or accepts (a sealed token is ~300 bytes plus the token):
anything bigger in the token key or on the channel is refused unread."""
LOOK_SLACK = 0.05
"""How long after the leader's lease would lapse a waiting follower looks again."""
STAMP_SLACK = 1.0
"""A publication stamped this much later than Redis's clock now says is refused: Redis's
clock went back (or it is another Redis), and its age cannot be known."""


class Role(StrEnum):
    """What a daemon is for one credential, as ``tokend status`` shows it."""

    LEADER = "leader"  # holds the lease: asks the identity provider, publishes
    FOLLOWER = "follower"  # takes the leader's token from Redis
    STANDALONE = "standalone"  # Redis unreachable (or the shared token unusable): on its own


class FleetEvent(StrEnum):
    """What the metrics count."""

    LEADER_CHANGE = "leader_change"  # this daemon took or lost a lease
    FALLBACK = "fallback"  # Redis became unreachable: every credential on its own
    RECEIVED = "received"  # a token from the fleet went into the sinks
    FAILOVER = "failover"  # a fail-over episode began (READONLY, MASTERDOWN, LOADING, reset, timeout)


class Fault(StrEnum):
    """The kind of a Redis failure, as far as a fail-over is concerned (:func:`fault_of`)."""

    READONLY = "readonly"  # the node we write to is a replica now: promoted elsewhere, or demoted
    MASTERDOWN = "masterdown"  # a replica that lost its primary refuses to answer
    LOADING = "loading"  # a restarted (or newly promoted) node still loading its data
    RESET = "reset"  # the connection was refused, reset or closed: the primary died or moved
    TIMEOUT = "timeout"  # no answer in time: the primary cut off (or paused)
    OTHER = "other"  # anything else (NOPERM, a wrong password): not a fail-over


@dataclass(frozen=True, slots=True)
class FaultMeaning:
    """What a Redis failure means for the lease and the token (:func:`meaning`)."""

    what: str  # what it says about Redis, for the one log line of the episode
    failover: bool  # part of a fail-over episode (counted once per episode as ``failover``)
    needs_write: bool  # the episode ends only when a write is accepted, not when PING answers
    lease: str  # what becomes of the leases we hold, for the log and the docs
    token: str  # what the credentials do meanwhile


LEASES_DROPPED = (
    "dropped: a lease we cannot renew may be another's on the new primary; "
    "left unrenewed, it lapses within one lease"
)


def fault_of(error_class: str, message: str) -> Fault:
    """The kind of a Redis failure, from the exception's class name and its message (the
    first word of an error reply is its code: ``READONLY You can't write...``). Pure: the
    IO side passes ``type(exc).__name__`` and ``str(exc)``."""
    code = message.strip().split(" ", 1)[0].upper() if message.strip() else ""
    if code == "READONLY" or error_class == "ReadOnlyError" or "previous master is now a" in message:
        # The last: redis-py's Sentinel pool turns READONLY into a ConnectionError of its own.
        return Fault.READONLY
    if code == "MASTERDOWN" or error_class == "MasterDownError":
        return Fault.MASTERDOWN
    if code == "LOADING" or error_class == "BusyLoadingError":
        return Fault.LOADING
    if "Timeout" in error_class or "timed out" in message.lower():
        return Fault.TIMEOUT
    if error_class in {
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "BrokenPipeError",
        "ConnectionAbortedError",
        "MasterNotFoundError",
    }:
        return Fault.RESET
    return Fault.OTHER


def meaning(fault: Fault) -> FaultMeaning:
    """What each kind of failure means for the lease and the token.

    Every one drops the leases we hold (we cannot renew them, and after a fail-over the
    lease we wrote may be lost, or another's) and sends every credential on its own until
    Redis answers: availability first, at most one extra request per identity. A
    ``READONLY`` or ``MASTERDOWN`` answer is a fail-over in progress, not a dead Redis and
    not a lost lease to take again at once: ``PING`` still answers there, so the episode
    ends only when a write is accepted (else each PING that answers would start a new
    episode, and a log line, at every look)."""
    if fault in (Fault.READONLY, Fault.MASTERDOWN):
        what = "Redis refuses writes: a fail-over in progress"
        return FaultMeaning(what, True, True, LEASES_DROPPED, "on its own until a primary accepts writes")
    if fault is Fault.LOADING:
        what = "Redis is loading its data: a restart or a fail-over"
        return FaultMeaning(what, True, True, LEASES_DROPPED, "on its own until the node has loaded its data")
    if fault in (Fault.RESET, Fault.TIMEOUT):
        what = "Redis unreachable: the primary gone, moved or cut off (an outage or a fail-over)"
        return FaultMeaning(what, True, False, LEASES_DROPPED, "on its own until a primary answers")
    return FaultMeaning("Redis unreachable", False, False, LEASES_DROPPED, "on its own until Redis answers")


@dataclass(frozen=True, slots=True)
class Shared:
    """What a host reads from Redis once decrypted: what a sink holds, the identity it is
    for and the host that issued it. Never a refresh token, never a secret."""

    identity: str
    token: Token
    issuer_host: str
    # Seconds the token had left when published, by the leader's clock (None: not known
    # yet; encoded as its whole lifetime, an upper bound).
    remaining: float | None = None
    # Redis's own clock (TIME) when it was published: every host reads the same clock, so
    # a follower knows a publication's age whatever its own clock says (None: not stamped
    # yet; :func:`encode` refuses it).
    stamped: float | None = None


def encode(shared: Shared) -> bytes:
    """The plaintext that gets encrypted (the refresh token is left out here, once)."""
    t = shared.token
    if shared.stamped is None:
        raise ValueError("a publication needs Redis's time")
    return json.dumps(
        {
            "v": PAYLOAD_VERSION,
            "identity": shared.identity,
            "access_token": t.access_token,
            "token_type": t.token_type,
            "expires_at": t.expires_at,
            "obtained_at": t.obtained_at,
            "scope": t.scope,
            "issuer_host": shared.issuer_host,
            "remaining": t.lifetime if shared.remaining is None else shared.remaining,
            "stamped": shared.stamped,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def decode(raw: bytes) -> Shared:
    """Raises ValueError on anything :func:`encode` did not write (the token's own checks
    included: a token no sink can carry is refused here)."""
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict) or data.get("v") != PAYLOAD_VERSION:
        raise ValueError("unknown payload version")
    identity, host = data.get("identity"), data.get("issuer_host")
    if not isinstance(identity, str) or not isinstance(host, str):
        raise ValueError("bad identity or issuer host")
    remaining, stamped = data.get("remaining"), data.get("stamped")
    if not is_number(remaining):
        raise ValueError("bad remaining lifetime")
    if not is_number(stamped):
        raise ValueError("no time stamp from Redis")
    fields = {k: data.get(k) for k in ("access_token", "token_type", "expires_at", "obtained_at", "scope")}
    return Shared(identity, Token.from_dict(fields), host, float(remaining), float(stamped))


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (not a bool, not NaN or infinite)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and value == value
        and abs(value) != float("inf")
    )


def localize(shared: Shared, now: float, *, redis_now: float, ttl: float | None = None) -> Shared:
    """The shared token on this host's clock, its age judged by Redis's clock alone.

    The leader stamps a publication with Redis's ``TIME`` (``stamped``) and the life the
    token had left then (``remaining``: a duration, which no clock offset skews). The
    follower reads Redis's ``TIME`` too (``redis_now``), so the life left now is
    ``remaining - (redis_now - stamped)``, whatever either host's clock says: an old blob
    replayed (on the channel, or SET again with a new PX by someone with Redis write
    access) is as old as it really is, on a host whose clock is behind as on any other.
    The stamp is sealed with the token, so it cannot be altered. When read with GET,
    ``ttl`` (the token key's PTTL) may only shorten it. The leader's absolute
    ``expires_at`` is not used: it is on the leader's clock, and comparing it with ours
    is what a skew breaks. The time obtained is moved with the expiry (the lifetime is
    the leader's). Raises ValueError for a stamp later than Redis's clock now (by more
    than :data:`STAMP_SLACK`): its age cannot be known."""
    token = shared.token
    if shared.stamped is None:
        raise ValueError("no time stamp from Redis")
    age = redis_now - shared.stamped
    if age < -STAMP_SLACK:
        raise ValueError(f"it was stamped {-age:.1f}s in the future by Redis's clock")
    remaining = token.lifetime if shared.remaining is None else min(shared.remaining, token.lifetime)
    expires = now + remaining - max(0.0, age)
    if ttl is not None:
        expires = min(expires, now + ttl)
    local = dataclasses.replace(token, expires_at=expires, obtained_at=expires - token.lifetime)
    return dataclasses.replace(shared, token=local)


NOT_NEWER = "it is not newer than ours"
READ_BACK_SLACK = 1.0
"""Our own token read back (PTTL) may come out this much later: still ours."""


def judge(
    shared: Shared,
    *,
    identity: str,
    ours: Token | None,
    now: float,
    refresh_at: float,
    min_ttl_margin: float,
) -> str | None:
    """Why a token read from the fleet must not be used, or None to use it.

    ``shared`` is on this host's clock (:func:`localize`). Used only when it is for this
    identity, not expired (a sink never receives an expired token), not stamped in the
    future (a clock we cannot trust), fresh by the credential's own policy (``refresh_at``,
    ``min_ttl_margin``: a replayed old blob, or one about to expire, would be replaced at
    once, so it is never adopted) and newer than the one this host holds: "newer" is a
    later expiry, so two leaders at once (a lease race, a paused VM) can only hand out
    good tokens, never go backwards.
    """
    token = shared.token
    if shared.identity != identity:
        return "it is for another identity"
    if not policy.is_valid(token, now):
        return "it has expired" if now >= token.expires_at else "it was stamped in the future"
    if (
        ours is not None
        and policy.is_valid(ours, now)
        and (
            token.expires_at <= ours.expires_at
            or (
                token.access_token == ours.access_token
                and token.expires_at <= ours.expires_at + READ_BACK_SLACK
            )
        )
    ):
        # First: the usual answer (our own token, read back), said quietly. The same token
        # read back by GET may come out a few ms "later" (its PTTL against the time left
        # when it was published): it is still ours, not a newer one.
        return NOT_NEWER
    if not policy.is_fresh(token, now, refresh_at=refresh_at, min_ttl_margin=min_ttl_margin):
        return "it is already due for refresh (an old token, or about to expire)"
    return None


def follow_deadline(ours: Token, *, refresh_at: float, min_ttl_margin: float, timeout: float) -> float:
    """The last moment a follower keeps ``ours`` waiting for its leader. It keeps back the
    credential's own margin (``min_ttl_margin``), and never less than one request's
    ``timeout``: a leader that never delivers must leave the follower time to ask the
    identity provider itself before its token expires, even with ``min_ttl_margin = 0``.
    For tokens too short for that, half of what ``refresh_at`` leaves, so the deadline is
    never before the token's unjittered due time. The jitter may pass it (a follower's is
    the late half, +5 % of the lifetime: with ``refresh_at`` above 0.9 and a small margin
    that lands after the deadline, at the expiry), so the runner caps a follower's due
    time at this deadline."""
    keep = min(max(min_ttl_margin, timeout), ours.lifetime * (1 - refresh_at) / 2)
    return ours.expires_at - keep


def may_follow(
    ours: Token | None, now: float, *, refresh_at: float, min_ttl_margin: float, timeout: float
) -> bool:
    """Whether a follower keeps its token and waits for the leader (see :func:`follow_deadline`)."""
    if ours is None or not policy.is_valid(ours, now):
        return False
    return now < follow_deadline(ours, refresh_at=refresh_at, min_ttl_margin=min_ttl_margin, timeout=timeout)


def follow_until(
    now: float,
    *,
    lease: float,
    lease_left: float | None,
    ours: Token | None,
    refresh_at: float,
    min_ttl_margin: float,
    timeout: float,
) -> float:
    """When a follower that found the lease held looks at Redis again by itself (the
    leader's publication normally wakes it sooner): just after the lease would lapse
    (``lease_left``, the lease key's PTTL; a full lease when unknown), so a dead leader is
    replaced within its lease; and no later than our token's :func:`follow_deadline`."""
    wait = lease if lease_left is None else min(lease, max(0.0, lease_left))
    look = now + wait + LOOK_SLACK
    if ours is not None:
        deadline = follow_deadline(
            ours, refresh_at=refresh_at, min_ttl_margin=min_ttl_margin, timeout=timeout
        )
        look = min(look, deadline)
    return max(now + policy.MIN_DELAY, look)


def wait_budget(*, lease: float, timeout: float) -> float:
    """The longest a host without any valid token waits for the fleet's leader, in total,
    counted from when it first needed the token, whatever the lease key shows meanwhile.

    A leader that holds the lease is asking the identity provider (its listener renews the
    lease while the request is out): it delivers within one request's ``timeout``, even
    when the provider answers more slowly than the lease lasts (so a cold start with a
    slow provider costs it one request, not one per host). A leader that died lets its
    lease lapse within ``lease``; the host that takes it over then asks, within
    ``timeout``. So ``lease + timeout`` covers both; past it the host asks the identity
    provider itself. Nobody who can set the lease key (a new holder at every look, PX
    400 every 200 ms) can make the wait longer."""
    return lease + timeout


def jitter_for(role: Role | None, jitter: float) -> float:
    """The leader refreshes in the early half of the jitter window, followers in the late
    half: the leader's token is published before a follower comes due, so followers read
    Redis only when the leader is late (or gone)."""
    if role is Role.LEADER:
        return -abs(jitter)
    if role is Role.FOLLOWER:
        return abs(jitter)
    return jitter


def redis_keys(prefix: str, identity: str) -> tuple[str, str, str]:
    """The lease key, the token key and the channel of one identity: all under
    ``{prefix}:`` (an ACL grants ``~{prefix}:*`` and ``&{prefix}:*``)."""
    return f"{prefix}:lease:{identity}", f"{prefix}:token:{identity}", f"{prefix}:rotated:{identity}"
