"""When a token is due: table-driven, with an explicit clock and jitter, no sleeping."""

from __future__ import annotations

import pytest

from tokend.core import policy
from tokend.core.policy import (
    backoff_delay,
    is_fresh,
    is_valid,
    next_attempt,
    refresh_due_at,
    retry_delay,
)
from tokend.core.tokens import Token

T0 = 1_800_000_000.0


def tok(lifetime: float) -> Token:
    return Token("t", T0 + lifetime, T0)


@pytest.mark.parametrize(
    ("lifetime", "refresh_at", "margin", "jitter", "due_after"),
    [
        (3600, 0.8, 60, 0, 2880),  # an hour: at 80 %
        (3600, 0.8, 60, 1, 3060),  # +5 % jitter
        (3600, 0.8, 60, -1, 2700),  # -5 % jitter
        (3600, 0.95, 300, 1, 3300),  # margin wins over a late fraction
        (300, 0.8, 60, 0, 240),  # margin and fraction meet
        (300, 0.9, 60, 0, 240),  # margin caps it
        (60, 0.8, 60, 0, 30),  # lifetime shorter than twice the margin: half of it
        (2, 0.8, 60, 0, 1),  # a 2-second token: one second
        (1, 0.8, 0, 0, 0.8),  # no margin asked for
        (86400 * 30, 0.8, 60, 0, 86400 * 24),  # a month-long token
    ],
)
def test_due_time(lifetime: float, refresh_at: float, margin: float, jitter: float, due_after: float) -> None:
    due = refresh_due_at(tok(lifetime), refresh_at=refresh_at, min_ttl_margin=margin, jitter=jitter)
    assert due - T0 == pytest.approx(due_after)


@pytest.mark.parametrize("lifetime", [1, 2, 10, 59, 61, 121, 3600, 86400 * 366])
@pytest.mark.parametrize("jitter", [-1, -0.3, 0, 0.5, 1])
def test_due_is_always_before_expiry_and_after_issue(lifetime: float, jitter: float) -> None:
    t = tok(lifetime)
    due = refresh_due_at(t, refresh_at=0.95, min_ttl_margin=60, jitter=jitter)
    assert T0 < due < t.expires_at


def test_fresh_until_due_valid_until_expiry() -> None:
    t = tok(100)
    assert is_fresh(t, T0 + 49, refresh_at=0.8, min_ttl_margin=60)
    assert not is_fresh(t, T0 + 50, refresh_at=0.8, min_ttl_margin=60)
    assert is_valid(t, T0 + 99.9) and not is_valid(t, T0 + 100)


@pytest.mark.parametrize(
    ("failures", "random", "expected"),
    [
        (1, 0.999, 0.999),
        (2, 0.5, 1.0),
        (3, 1.0, 4.0),
        (9, 1.0, 256.0),
        (10, 1.0, 300.0),
        (10_000, 1.0, 300.0),
        (1, 0.0, 0.1),
        (5, 0.25, 4.0),
    ],
)
def test_backoff_is_full_jitter_up_to_the_cap(failures: int, random: float, expected: float) -> None:
    assert backoff_delay(failures, random) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "random", "retryable", "retry_after", "expected"),
    [
        (1, 0.5, True, None, 0.5),
        (1, 0.5, True, 30.0, 30.0),  # the server asked for longer: wait
        (6, 1.0, True, 2.0, 32.0),  # the server asked for less: backoff still applies
        (1, 0.5, False, None, 300.0),  # invalid_client and friends: at the cap
        (1, 0.5, True, 86400.0, 3600.0),  # Retry-After is honoured up to an hour
    ],
)
def test_retry_delay(
    failures: int, random: float, retryable: bool, retry_after: float | None, expected: float
) -> None:
    assert retry_delay(failures, random, retryable=retryable, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(failures=0, token_due=T0 + 100), T0 + 100),  # success: at the due time
        (dict(failures=0, token_due=T0 - 5), T0 + 0.1),  # already due: at once
        (dict(failures=1, token_due=None, random=0.5), T0 + 0.5),  # request failed: backoff
        (dict(failures=3, token_due=None, retry_after=60.0), T0 + 60),  # ...or what the server asks
        (dict(failures=1, token_due=None, retryable=False), T0 + 300),  # unfixable: at the cap
        (dict(failures=9, token_due=T0 + 10), T0 + 10),  # sink failed: not past due
        (dict(failures=1, token_due=T0 + 100, random=0.5), T0 + 0.5),  # sink failed: retry soon
    ],
)
def test_next_attempt(kw: dict[str, object], expected: float) -> None:
    assert next_attempt(T0, **kw) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("failures", [1, 3, 5, 8, 20, 60])
@pytest.mark.parametrize("random", [0.0, 0.37, 0.999])
def test_without_a_valid_token_a_retryable_failure_is_retried_within_ten_seconds(
    failures: int, random: float
) -> None:
    """After an outage long enough for the last token to expire, readers must not wait for
    a 5-minute backoff to learn that the IdP is back."""
    delay = policy.retry_delay(failures, random, retryable=True, has_token=False)
    assert policy.MIN_DELAY <= delay <= policy.NO_TOKEN_CAP
    with_token = policy.retry_delay(failures, random, retryable=True, has_token=True)
    assert delay <= max(with_token, policy.MIN_DELAY)  # never later than with a token


def test_without_a_token_the_jitter_still_spreads_a_fleet() -> None:
    delays = {policy.retry_delay(10, r / 10, retryable=True, has_token=False) for r in range(10)}
    assert len(delays) == 10 and max(delays) > 8 and min(delays) < 1


def test_without_a_token_retry_after_and_unfixable_errors_keep_their_delays() -> None:
    assert policy.retry_delay(9, 0.5, retryable=True, retry_after=60, has_token=False) == 60
    assert policy.retry_delay(9, 0.5, retryable=False, has_token=False) == policy.BACKOFF_CAP


def test_next_attempt_without_a_token_uses_the_short_cap() -> None:
    when = policy.next_attempt(1000.0, failures=12, token_due=None, random=1.0, has_token=False)
    assert when == 1000.0 + policy.NO_TOKEN_CAP


@pytest.mark.parametrize(
    ("lifetime", "floor"),
    [(0.001, 5.0), (0.5, 5.0), (0.999, 5.0), (1.0, policy.MIN_DELAY), (3600, policy.MIN_DELAY)],
)
def test_refresh_floor_holds_back_an_idp_issuing_sub_second_tokens(lifetime: float, floor: float) -> None:
    assert policy.refresh_floor(lifetime) == floor


def test_a_millisecond_token_is_not_refreshed_nine_times_a_second() -> None:
    now = 1000.0
    token = Token("t", expires_at=now + 0.001, obtained_at=now)
    due = policy.refresh_due_at(token, refresh_at=0.8, min_ttl_margin=60)
    when = policy.next_attempt(
        now, failures=0, token_due=due, min_interval=policy.refresh_floor(token.lifetime)
    )
    assert when == now + policy.MIN_REFRESH_INTERVAL
    # ...while a 2-second token keeps its own due time
    short = Token("t", expires_at=now + 2, obtained_at=now)
    due = policy.refresh_due_at(short, refresh_at=0.6, min_ttl_margin=0)
    assert (
        policy.next_attempt(now, failures=0, token_due=due, min_interval=policy.refresh_floor(short.lifetime))
        == due
    )


def test_a_token_stamped_ahead_of_this_clock_is_neither_fresh_nor_valid() -> None:
    """Obtained while the wall clock was two hours fast: its real expiry is unknown."""
    now = T0
    ahead = Token("t", expires_at=now + 7200 + 600, obtained_at=now + 7200)
    assert not is_fresh(ahead, now, refresh_at=0.8, min_ttl_margin=60)
    assert not is_valid(ahead, now)
    slightly = Token("t", expires_at=now + 30 + 600, obtained_at=now + 30)  # within the slack
    assert is_fresh(slightly, now, refresh_at=0.8, min_ttl_margin=60)
