"""What a token may contain, and how it is named in logs."""

from __future__ import annotations

import pytest

from tokend.core.tokens import Token, fingerprint, unsafe_reason


@pytest.mark.parametrize("value", ["abc", "eyJ.a-b_c~d+e/f==", "0123456789abcdef", "a" * 4096])
def test_bearer_tokens_are_safe(value: str) -> None:
    assert unsafe_reason(value) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("a b", "whitespace"),
        ("a\nb", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control"),
        ("tök", "non-ASCII"),
        ("a'b", "'"),
        ('a"b', '"'),
        ("a\\b", "\\"),
        ("a$b", "$"),
        ("a`b", "`"),
        ("a" * 70000, "longer"),
    ],
)
def test_tokens_no_sink_can_carry_are_refused(value: str, fragment: str) -> None:
    reason = unsafe_reason(value)
    assert reason is not None and fragment in reason


def test_fingerprint_is_short_stable_and_not_the_token() -> None:
    assert fingerprint("secret-token") == fingerprint("secret-token")
    assert fingerprint("secret-token") != fingerprint("secret-tokem")
    assert "secret" not in fingerprint("secret-token")
    assert len(fingerprint("x")) == len("sha256:") + 10


def test_repr_never_shows_the_token_or_refresh_token() -> None:
    t = Token("the-access-token", 2.0, 1.0, refresh_token="the-refresh-token")
    assert "the-access-token" not in repr(t) and "the-refresh-token" not in repr(t)


def test_round_trip_and_rejection_of_tampered_cache_data() -> None:
    t = Token("abc", 200.0, 100.0, "Bearer", "s", "r")
    assert Token.from_dict(t.to_dict()) == t
    bad: object
    for bad in (
        {**t.to_dict(), "access_token": "a b"},
        {**t.to_dict(), "expires_at": 50},
        {**t.to_dict(), "expires_at": "x"},
        [],
        None,
    ):
        with pytest.raises(ValueError):
            Token.from_dict(bad)
