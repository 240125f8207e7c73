"""core/dpop: what a DPoP proof says (RFC 9449 §4.2), the key's thumbprint (RFC 7638), which
algorithm a key is made for, and which answers are a server's "use this nonce" (§8, §9)."""

from __future__ import annotations

import random
import string

import pytest

from tokend.core.dpop import (
    DpopError,
    access_token_hash,
    bound_type_ok,
    choose_alg,
    jwk_thumbprint,
    nonce_request,
    proof_claims,
    proof_header,
    target_uri,
    valid_nonce,
)


class Headers(dict[str, str]):
    """Case-insensitive, as requests' and aiohttp's header mappings are."""

    def __init__(self, **items: str) -> None:
        super().__init__({k.lower(): v for k, v in items.items()})

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


def test_the_thumbprint_is_rfc_7638s_example() -> None:
    # RFC 7638 §3.1: the RSA key and its thumbprint, as the RFC prints them.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
            "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvz"
            "qY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZ"
            "u0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_thumbprint_uses_only_the_required_members() -> None:
    ec = {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}
    assert jwk_thumbprint(ec) == jwk_thumbprint({**ec, "kid": "k", "use": "sig"})
    assert jwk_thumbprint(ec) != jwk_thumbprint({**ec, "y": "c"})


def test_a_key_without_its_members_has_no_thumbprint() -> None:
    with pytest.raises(DpopError, match="lacks y"):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "a"})
    with pytest.raises(DpopError, match="type 'oct'"):
        jwk_thumbprint({"kty": "oct", "k": "secret"})


def test_htu_drops_the_query_and_fragment_and_lowers_scheme_and_host() -> None:
    assert target_uri("HTTPS://API.Example.com/v1/x?token=1#f") == "https://api.example.com/v1/x"
    assert target_uri("http://127.0.0.1:8080") == "http://127.0.0.1:8080/"
    with pytest.raises(DpopError):
        target_uri("ftp://example.com/")


def test_a_proof_names_the_request_and_at_a_resource_server_the_token() -> None:
    claims = proof_claims("post", "https://idp/token?x=1", now=1000.9, jti="j")
    assert claims == {"htm": "POST", "htu": "https://idp/token", "iat": 1000, "jti": "j"}
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"  # RFC 9449 §7.1's example and its ath
    at_resource = proof_claims("GET", "https://api/x", now=1, jti="k", access_token=token, nonce="n1")
    assert at_resource["ath"] == access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    assert at_resource["nonce"] == "n1"


def test_the_header_carries_the_public_key_and_never_a_private_member() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}
    assert proof_header("ES256", jwk) == {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    with pytest.raises(DpopError):
        proof_header("ES256", {**jwk, "d": "private"})


def test_the_algorithm_is_the_first_tokend_prefers_that_the_server_lists() -> None:
    assert choose_alg(None, None) == "ES256"
    assert choose_alg(None, ("RS256", "EdDSA")) == "EdDSA"
    assert choose_alg(None, ("Ed25519",)) == "EdDSA"  # oidc-provider's fully specified name
    assert choose_alg("RS256", None) == "RS256"
    with pytest.raises(DpopError, match="not among"):
        choose_alg("RS256", ("ES256",))
    with pytest.raises(DpopError, match="names none"):
        choose_alg(None, ("HS256", "PS512"))


def test_a_nonce_is_asked_for_by_a_400_at_the_token_endpoint_or_a_dpop_401() -> None:
    nonce = Headers(**{"DPoP-Nonce": "abc.123_~"})
    assert nonce_request(400, nonce, "use_dpop_nonce") == "abc.123_~"
    assert nonce_request(400, nonce, "invalid_client") is None
    assert nonce_request(400, Headers(), "use_dpop_nonce") is None
    challenge = Headers(
        **{"DPoP-Nonce": "n", "WWW-Authenticate": 'DPoP error="use_dpop_nonce", algs="ES256"'}
    )
    assert nonce_request(401, challenge) == "n"
    bearer = Headers(**{"DPoP-Nonce": "n", "WWW-Authenticate": 'Bearer error="use_dpop_nonce"'})
    assert nonce_request(401, bearer) is None
    other = Headers(**{"DPoP-Nonce": "n", "WWW-Authenticate": 'DPoP error="invalid_token"'})
    assert nonce_request(401, other) is None


def test_what_is_not_a_nonce_is_never_carried_into_a_proof() -> None:
    assert valid_nonce("ok-nonce") == "ok-nonce"
    for bad in ("", 'q"uote', "back\\slash", "spa ce", "new\nline", "x" * 513, "\u00e9"):
        assert valid_nonce(bad) is None
    rng = random.Random(9449)
    for _ in range(2000):
        text = "".join(rng.choice(string.printable + "\u00e9\x00") for _ in range(rng.randrange(0, 40)))
        kept = valid_nonce(text)
        assert kept is None or (kept == text and '"' not in text and " " not in text and text.isascii())


def test_a_dpop_request_refuses_a_silent_downgrade_to_bearer_unless_allowed() -> None:
    assert bound_type_ok("DPoP", dpop=True, allow_bearer=False)
    assert bound_type_ok("dpop", dpop=True, allow_bearer=False)
    assert not bound_type_ok("Bearer", dpop=True, allow_bearer=False)
    assert bound_type_ok("Bearer", dpop=True, allow_bearer=True)
    assert not bound_type_ok("DPoP", dpop=False, allow_bearer=False)  # a token it cannot use
    assert bound_type_ok("Bearer", dpop=False, allow_bearer=False)
