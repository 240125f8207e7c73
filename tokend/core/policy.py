"""When a token is due for refresh: pure functions of the token, the settings and the clock.

Nothing here reads a clock or a random source itself; callers pass them in, so tests can
drive every case without sleeping.
"""

from __future__ import annotations

from tokend.core.limits import FUTURE_SLACK
from tokend.core.tokens import Token

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


def from_the_future(token: Token, now: float) -> bool:
    return token.obtained_at > now + FUTURE_SLACK


def is_fresh(token: Token, now: float, *, refresh_at: float, min_ttl_margin: float) -> bool:
    """Whether a cached token may be handed out again instead of asking the IdP.

    A token the daemon would already replace is not fresh: a script started now should not
    get a token that runs out in the middle of its work.
    """
    due = refresh_due_at(token, refresh_at=refresh_at, min_ttl_margin=min_ttl_margin)
    return now < due and not from_the_future(token, now)


def is_valid(token: Token, now: float) -> bool:
    """Still accepted by the API (not yet expired), as far as this clock can tell."""
    return now < token.expires_at and not from_the_future(token, now)


BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
NO_TOKEN_CAP = 10.0
"""While readers have no valid token, a retryable failure is retried within 10 s: after a
long outage the first good answer must reach them soon, not up to 5 minutes later."""
MIN_DELAY = 0.1
MIN_REFRESH_INTERVAL = 5.0
MIN_SANE_LIFETIME = 1.0
"""A token valid for less than a second comes from a broken identity provider: asking it
again at each due time meant nine requests a second per credential. Such tokens are
replaced at most every :data:`MIN_REFRESH_INTERVAL`; tokens of a second or more (short
lifetimes are real in tests and some setups) keep their own due times."""


def refresh_floor(lifetime: float) -> float:
    """The least time between two successful refreshes of a token of this lifetime."""
    return MIN_REFRESH_INTERVAL if lifetime < MIN_SANE_LIFETIME else MIN_DELAY


MAX_RETRY_AFTER = 3600.0


def backoff_delay(failures: int, random: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^(n-1))].

    ``random`` is a number in [0, 1) from the caller's source. Full jitter spreads a fleet
    that failed together across the whole window instead of retrying in lockstep.
    """
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** min(max(failures - 1, 0), 30)))
    return max(MIN_DELAY, ceiling * random)


def retry_delay(
    failures: int, random: float, *, retryable: bool, retry_after: float | None = None, has_token: bool = True
) -> float:
    """How long to wait after the ``failures``-th failure in a row.

    An error no retry can fix (bad client, bad scope) is retried at the cap, so a fix at
    the identity provider is picked up without hammering it. A retryable one backs off
    with full jitter, within :data:`NO_TOKEN_CAP` while readers have no valid token
    (``has_token`` false). ``Retry-After`` is honoured (up to an hour, so a hostile header
    cannot park a credential for good).
    """
    if not retryable:
        delay = BACKOFF_CAP
    elif has_token:
        delay = backoff_delay(failures, random)
    else:
        delay = max(MIN_DELAY, min(NO_TOKEN_CAP, backoff_delay(failures, 1.0)) * random)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def next_attempt(
    now: float,
    *,
    failures: int,
    token_due: float | None,
    retryable: bool = True,
    retry_after: float | None = None,
    random: float = 1.0,
    has_token: bool = True,
    min_interval: float = MIN_DELAY,
) -> float:
    """When to run a credential again.

    ``token_due`` is the due time of the token in the sinks, or None when a new token is
    needed now (the request failed). After a success that is the due time, but never
    sooner than ``min_interval`` (see :func:`refresh_floor`). After a failure it is the backoff, except
    that a failed sink with a good token never waits past the token's own due time.
    ``has_token``: whether readers still have a valid token (see :func:`retry_delay`).
    """
    if failures == 0:
        return max(now + min_interval, token_due if token_due is not None else now)
    retry_at = now + retry_delay(
        failures, random, retryable=retryable, retry_after=retry_after, has_token=has_token
    )
    if token_due is not None:
        return min(retry_at, max(token_due, now + MIN_DELAY))
    return retry_at
