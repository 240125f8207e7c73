"""tokend/core/assertion.py: the JWS algorithm a private key signs a client assertion
with, and the assertion's claims (RFC 7523), as data. Reading keys and signing with them
(tokend/io/assertion.py) is tests/test_keyauth.py's, which also holds the natural
algorithm of each kind of key."""

from __future__ import annotations

import pytest

from tokend.core.assertion import ASSERTION_LIFETIME, KeyMismatch, assertion_claims, signing_alg

# Every algorithm tokend signs with, and the key it needs (RFC 7518 §3; EdDSA RFC 8037).
KEYS = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


# --------------------------------------------------------------------------- the algorithm


@pytest.mark.parametrize("alg", KEYS)
def test_a_configured_alg_is_used_with_the_key_it_needs(alg: str) -> None:
    family, curve = KEYS[alg]
    assert signing_alg(family, curve, alg) == alg


@pytest.mark.parametrize("alg", KEYS)
def test_a_configured_alg_is_refused_with_every_other_kind_of_key(alg: str) -> None:
    for family, curve in set(KEYS.values()) - {KEYS[alg]}:
        with pytest.raises(KeyMismatch, match=f"signing_alg {alg} cannot be used with"):
            signing_alg(family, curve, alg)


def test_an_ec_alg_needs_its_curve_and_nothing_else_does() -> None:
    """ES256 is P-256 only (RFC 7518 §3.4); an RSA alg does not care what curve is passed."""
    with pytest.raises(KeyMismatch, match="an EC key on P-384"):
        signing_alg("EC", "P-384", "ES256")
    with pytest.raises(KeyMismatch, match="an EC key on secp256k1"):
        signing_alg("EC", "secp256k1", "ES256")
    assert signing_alg("RSA", None, "PS512") == "PS512"


def test_an_unknown_alg_is_refused_for_every_key() -> None:
    for family, curve in set(KEYS.values()):
        with pytest.raises(KeyMismatch, match="signing_alg HS256 cannot be used"):
            signing_alg(family, curve, "HS256")  # a shared-secret MAC is no key signature


def test_the_refusal_names_the_kind_of_key_and_nothing_of_it() -> None:
    for family, curve, kind in (
        ("RSA", None, "RSA key"),
        ("EC", "P-256", "EC key on P-256"),
        ("OKP", None, "OKP key"),
    ):
        with pytest.raises(KeyMismatch) as info:
            signing_alg(family, curve, "none")
        assert str(info.value).startswith("signing_alg none cannot be used with a")
        assert str(info.value).endswith(f" {kind}")
    assert issubclass(KeyMismatch, ValueError)  # the config reports it as a one-line error


def test_an_ec_key_on_a_curve_without_an_alg_is_refused_naming_the_curve() -> None:
    with pytest.raises(KeyMismatch, match=r"no JWS algorithm signs with an? EC key on brainpoolP256r1"):
        signing_alg("EC", "brainpoolP256r1", None)
    with pytest.raises(KeyMismatch, match="on this curve"):
        signing_alg("EC", None, None)


# --------------------------------------------------------------------------- the claims


def test_the_claims_are_issued_by_and_about_the_client_for_the_audience() -> None:
    claims = assertion_claims("client-1", "https://idp.example/token", now=1_700_000_000.0, jti="j-1")
    assert claims == {
        "iss": "client-1",
        "sub": "client-1",
        "aud": "https://idp.example/token",
        "jti": "j-1",
        "iat": 1_700_000_000,
        "nbf": 1_700_000_000,
        "exp": 1_700_000_000 + ASSERTION_LIFETIME,
    }


def test_the_claims_are_whole_seconds_and_short_lived() -> None:
    """JWT NumericDates as integers, never later than now (the fraction is dropped), and a
    lifetime of at most five minutes."""
    claims = assertion_claims("c", "a", now=1_700_000_000.9, jti="j")
    assert claims["iat"] == claims["nbf"] == 1_700_000_000 and type(claims["iat"]) is int
    assert claims["exp"] == 1_700_000_000 + ASSERTION_LIFETIME and 0 < ASSERTION_LIFETIME <= 300


# --------------------------------------------------------------------------- the platform's JWT


def _jwt(payload: object, header: object = None) -> str:
    import base64
    import json

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header or {'alg': 'RS256'})}.{part(payload)}.c2lnbmF0dXJl"


def test_a_platform_jwt_is_judged_by_its_exp_with_a_small_skew() -> None:
    from tokend.core.assertion import ASSERTION_SKEW, assertion_expired, expires_before
    from tokend.core.assertion import judge_platform_assertion as judge

    judged = judge(_jwt({"sub": "x", "exp": 1000}) + "\n")  # a trailing newline is fine
    assert judged.exp == 1000 and "c2ln" not in repr(judged)  # never in a repr
    assert not assertion_expired(judged, 1000 - ASSERTION_SKEW - 1)
    assert assertion_expired(judged, 1000 - ASSERTION_SKEW)
    assert expires_before(judged, 1000) and not expires_before(judged, 999)
    timeless = judge(_jwt({"sub": "x"}))
    assert (
        timeless.exp is None
        and not assertion_expired(timeless, 10**12)
        and not expires_before(timeless, 10**12)
    )


def test_the_platform_jwt_parser_never_raises_but_its_own_error_and_never_quotes_its_input() -> None:
    """Fuzz: truncations, byte flips and inserted characters of a valid JWT, and JSON of
    every type in each part, give a PlatformAssertion or a MalformedAssertion."""
    import random

    from tokend.core.assertion import MalformedAssertion, PlatformAssertion, judge_platform_assertion

    rng = random.Random(7523)
    valid = _jwt({"sub": "system:serviceaccount:ns:sa", "exp": 1_900_000_000, "aud": ["a"]})
    alphabet = 'A-_.=+/ \n\t\x00é{}"[]0123456789eyJ'
    cases = [valid[: rng.randrange(len(valid))] for _ in range(200)]
    for _ in range(400):
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        cases.append("".join(chars))
    for value in (None, True, 1.5, -1, 2**63, "x", [], [1], {"exp": "soon"}, {"exp": True}, {"exp": 1e300}):
        cases += [_jwt(value), _jwt({"exp": 1}, value)]
    for case in cases:
        try:
            judged = judge_platform_assertion(case)
        except MalformedAssertion as exc:
            text = str(exc)
            assert "\n" not in text and len(text) < 120, text
            assert not any(len(part) > 8 and part in text for part in case.split(".")), (case, text)
        else:
            assert isinstance(judged, PlatformAssertion)
            assert judged.exp is None or 0 < judged.exp < 2**40
