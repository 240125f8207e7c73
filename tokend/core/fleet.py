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
from typing import Any

from tokend.core import policy
from tokend.core.tokens import Token

PAYLOAD_VERSION = 2  # 2: carries ``remaining`` (the lifetime left, by the leader's clock)
MAX_BLOB_BYTES = 16 * 1024
"""The largest blob a host reads or accepts (a sealed token is ~300 bytes plus the token):
anything bigger in the token key or on the channel is refused unread."""
LOOK_SLACK = 0.05
"""How long after the leader's lease would lapse a waiting follower looks again."""


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


def encode(shared: Shared) -> bytes:
    """The plaintext that gets encrypted (the refresh token is left out here, once)."""
    t = shared.token
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
    remaining = data.get("remaining")
    if isinstance(remaining, bool) or not isinstance(remaining, int | float) or remaining != remaining:
        raise ValueError("bad remaining lifetime")
    fields = {k: data.get(k) for k in ("access_token", "token_type", "expires_at", "obtained_at", "scope")}
    return Shared(identity, Token.from_dict(fields), host, float(remaining))


def localize(shared: Shared, now: float, *, ttl: float | None = None) -> Shared:
    """The shared token on this host's clock. Its expiry travels two ways: the leader's
    absolute ``expires_at`` (its clock) and what was left of it (``remaining`` when
    published; ``ttl``, the token key's PTTL, when read with GET: the key expires with the
    token, on Redis's clock). The expiry used is the earliest of the three, and the time
    obtained is moved with it (the lifetime is the leader's, which no clock skews). So a
    leader whose clock runs ahead can never lengthen a token, one that runs behind only
    shortens it, and an old blob replayed on the channel keeps its old expiry."""
    token = shared.token
    expires = token.expires_at if shared.remaining is None else min(token.expires_at, now + shared.remaining)
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
