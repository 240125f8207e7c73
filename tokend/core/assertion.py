"""Key-based client authentication, the pure part: which JWS algorithm a private key signs
a client assertion with, and the assertion's claims (RFC 7523); and judging a JWT the
platform wrote for tokend to send (``client_assertion_file``): its shape and its ``exp``.
Reading the key and signing is :mod:`tokend.io.assertion`'s, reading the platform's file
:mod:`tokend.io.platform_token`'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
ASSERTION_LIFETIME = 60  # seconds; RFC 7523 wants it short, the issue at most 5 minutes


class KeyMismatch(ValueError):
    """A signing algorithm that the key cannot sign with (the message names neither key nor content)."""


# The family each algorithm needs, and for EC the curve: ES256 is P-256 only (RFC 7518 §3.4).
_ALG_FAMILY: Mapping[str, tuple[str, str | None]] = {
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
_DEFAULT_ALG: Mapping[tuple[str, str | None], str] = {
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
}


def signing_alg(family: str, curve: str | None, configured: str | None) -> str:
    """The JWS algorithm for a key of ``family`` ("RSA", "EC", "OKP") and ``curve``
    (P-256, P-384, P-521 for EC): the configured one if the key can sign with it, else
    the key's natural one (RS256, ES256/ES384/ES512 by curve, EdDSA). Raises KeyMismatch."""
    if configured is not None:
        want_family, want_curve = _ALG_FAMILY.get(configured, ("?", None))
        if want_family != family or (want_curve is not None and want_curve != curve):
            key = f"an {family} key" if family in ("RSA", "EC") else f"a {family} key"
            if curve is not None:
                key += f" on {curve}"
            raise KeyMismatch(f"signing_alg {configured} cannot be used with {key}")
        return configured
    if family == "RSA":
        return "RS256"
    if family == "OKP":
        return "EdDSA"
    alg = _DEFAULT_ALG.get((family, curve))
    if alg is None:
        raise KeyMismatch(f"no JWS algorithm signs with a {family} key on {curve or 'this curve'}")
    return alg


def assertion_claims(client_id: str, audience: str, *, now: float, jti: str) -> dict[str, object]:
    """RFC 7523 §3 claims of a client assertion: issued by and about the client, for the
    token endpoint (or the audience the IdP asks for), once (``jti``), briefly."""
    issued = int(now)
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }


GRANT_LIFETIME = 300  # seconds: a JWT-bearer grant's life (RFC 7523 §3; Google allows an hour)


def grant_claims(
    issuer: str, subject: str, audience: str, *, now: float, jti: str, scope: str | None = None
) -> dict[str, object]:
    """RFC 7523 §2.1 / §3 claims of a JWT used as the grant itself: issued by the client
    (a service account), about ``subject`` (itself, or a user it acts for), for the token
    endpoint; ``scope`` as a claim where the provider wants it there (Google)."""
    issued = int(now)
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "jti": jti,
        "iat": issued,
        "exp": issued + GRANT_LIFETIME,
    }
    if scope is not None:
        claims["scope"] = scope
    return claims


# --------------------------------------------------------------------------- the platform's JWT

ASSERTION_SKEW = 10  # seconds: a JWT this close to its `exp` counts as expired (clocks differ)
MAX_ASSERTION_BYTES = 16 * 1024  # a projected service-account token is 1-2 KiB


class MalformedAssertion(ValueError):
    """A client assertion file that does not hold one JWT (the message never quotes it)."""


@dataclass(frozen=True)
class PlatformAssertion:
    """A JWT the platform wrote (a projected service-account token, say), as read: the
    compact form to send and its ``exp``, the one claim tokend judges (the IdP judges the rest)."""

    value: str = field(repr=False)
    exp: int | None


def judge_platform_assertion(text: str) -> PlatformAssertion:
    """The JWT in a client assertion file: one line of three base64url parts (a trailing
    newline allowed), a JSON header and payload, an integer ``exp`` if any. Raises
    MalformedAssertion saying what is wrong, never showing the content."""
    value = text.strip()
    if not value:
        raise MalformedAssertion("is empty")
    if any(ch.isspace() for ch in value) or not value.isascii():
        raise MalformedAssertion("holds more than one JWT or stray characters, not one compact JWT")
    parts = value.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise MalformedAssertion(f"is not a compact JWT (three dot-separated parts; found {len(parts)})")
    for name, part in (("header", parts[0]), ("payload", parts[1])):
        if not BASE64URL.fullmatch(part):
            raise MalformedAssertion(f"is not a JWT: its {name} is not base64url")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise MalformedAssertion("is not a JWT: its header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise MalformedAssertion("is not a JWT: its header or payload is not a JSON object")
    exp = payload.get("exp")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 < exp < 2**40):
        raise MalformedAssertion("is not a usable JWT: its exp is not a number of seconds")
    return PlatformAssertion(value, None if exp is None else int(exp))


def assertion_expired(assertion: PlatformAssertion, now: float, skew: float = ASSERTION_SKEW) -> bool:
    """Whether the JWT is past (or within ``skew`` of) its ``exp``: not worth sending, the
    IdP would refuse it (Entra ID's AADSTS700024)."""
    return assertion.exp is not None and now >= assertion.exp - skew


def expires_before(assertion: PlatformAssertion, when: float) -> bool:
    """Whether the JWT runs out before ``when`` (the next planned refresh): worth a warning,
    since that refresh needs the platform to have written a fresh one by then."""
    return assertion.exp is not None and assertion.exp <= when
