"""Key-based client authentication, the pure part: which JWS algorithm a private key signs
a client assertion with, and the assertion's claims (RFC 7523). Reading the key and
signing is :mod:`tokend.io.assertion`'s.
"""

from __future__ import annotations

from collections.abc import Mapping

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
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
