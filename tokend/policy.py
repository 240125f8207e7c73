"""When a token is due for refresh: pure functions of the token, the settings and the clock.

Nothing here reads a clock or a random source itself; callers pass them in, so tests can
drive every case without sleeping.
"""

from __future__ import annotations

from tokend.token import Token

JITTER_FRACTION = 0.05
"""Due times are spread by ±5 % of the lifetime so a fleet started together does not
stampede the identity provider at the same second."""


def refresh_due_at(
    token: Token,
    *,
    refresh_at: float,
    min_ttl_margin: float,
    jitter: float = 0.0,
) -> float:
    """The unix time at which ``token`` should be replaced.

    ``jitter`` is a number in [-1, 1] (from the caller's random source; 0 for none). The
    result is never later than ``min_ttl_margin`` before expiry; when the lifetime is too
    short for that margin, never later than half the lifetime.
    """
    lifetime = token.lifetime
    due = token.obtained_at + lifetime * (refresh_at + JITTER_FRACTION * jitter)
    margin = min_ttl_margin if min_ttl_margin < lifetime / 2 else lifetime / 2
    return min(due, token.expires_at - margin)


def is_fresh(token: Token, now: float, *, refresh_at: float, min_ttl_margin: float) -> bool:
    """Whether a cached token may be handed out again instead of asking the IdP.

    A token the daemon would already replace is not fresh: a script started now should not
    get a token that runs out in the middle of its work.
    """
    due = refresh_due_at(token, refresh_at=refresh_at, min_ttl_margin=min_ttl_margin)
    return now < due


def is_valid(token: Token, now: float) -> bool:
    """Still accepted by the API (not yet expired)."""
    return now < token.expires_at
