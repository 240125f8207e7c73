"""When a token is due: table-driven, with an explicit clock and jitter, no sleeping."""

from __future__ import annotations

import pytest

from tokend.policy import is_fresh, is_valid, refresh_due_at
from tokend.token import Token

T0 = 1_800_000_000.0


def tok(lifetime: float) -> Token:
    return Token("t", T0 + lifetime, T0)


@pytest.mark.parametrize(("lifetime", "refresh_at", "margin", "jitter", "due_after"), [
    (3600, 0.8, 60, 0, 2880),        # an hour: at 80 %
    (3600, 0.8, 60, 1, 3060),        # +5 % jitter
    (3600, 0.8, 60, -1, 2700),       # -5 % jitter
    (3600, 0.95, 300, 1, 3300),      # margin wins over a late fraction
    (300, 0.8, 60, 0, 240),          # margin and fraction meet
    (300, 0.9, 60, 0, 240),          # margin caps it
    (60, 0.8, 60, 0, 30),            # lifetime shorter than twice the margin: half of it
    (2, 0.8, 60, 0, 1),              # a 2-second token: one second
    (1, 0.8, 0, 0, 0.8),             # no margin asked for
    (86400 * 30, 0.8, 60, 0, 86400 * 24),  # a month-long token
])
def test_due_time(lifetime: float, refresh_at: float, margin: float, jitter: float,
                  due_after: float) -> None:
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
