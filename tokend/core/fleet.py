"""Fleet mode's decisions, as pure functions: what a shared token is, whether a host may
use the one it read from Redis, and how long a follower waits for its leader.

The IO (Redis, AES-GCM) is :mod:`tokend.io.fleet_store` and :mod:`tokend.io.fleet_crypto`;
the daemon's side is :mod:`tokend.daemon.fleet`. Everything here takes the clock as an
argument, so every rule is tested without Redis and without sleeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokend.core import policy
from tokend.core.tokens import Token

PAYLOAD_VERSION = 1


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
    fields = {k: data.get(k) for k in ("access_token", "token_type", "expires_at", "obtained_at", "scope")}
    return Shared(identity, Token.from_dict(fields), host)


def judge(shared: Shared, *, identity: str, ours: Token | None, now: float) -> str | None:
    """Why a token read from the fleet must not be used, or None to use it.

    Used only when it is for this identity, not expired (a sink never receives an
    expired token), not stamped in the future (a clock we cannot trust) and newer than the
    one this host holds: "newer" is a later expiry, so two leaders at once (a lease race,
    a paused VM) can only hand out good tokens, never go backwards.
    """
    token = shared.token
    if shared.identity != identity:
        return "it is for another identity"
    if not policy.is_valid(token, now):
        return "it has expired" if now >= token.expires_at else "it was stamped in the future"
    if ours is not None and policy.is_valid(ours, now) and token.expires_at <= ours.expires_at:
        return "it is not newer than ours"
    return None


def follow_until(now: float, *, lease: float, ours: Token | None) -> float:
    """When a follower that found the lease held looks at Redis again by itself (the
    leader's publication normally wakes it sooner): within half a lease, so a dead
    leader's lease is taken over soon after it runs out, and before our token expires."""
    look = now + lease / 2
    if ours is not None and ours.expires_at > now:
        look = min(look, now + max(policy.MIN_DELAY, (ours.expires_at - now) / 2))
    return max(now + policy.MIN_DELAY, look)


def may_follow(ours: Token | None, now: float, *, lease: float) -> bool:
    """Whether a follower keeps its token and waits for the leader: only while that token
    has more than half a lease to live. A leader that never delivers (hung, or a lease
    held by someone who never publishes) then costs each follower its own request before
    its token runs out, never an expired token in a sink."""
    return ours is not None and ours.expires_at - now > lease / 2


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
