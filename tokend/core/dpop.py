"""DPoP (RFC 9449), the pure part: what a proof says, the key's thumbprint, which algorithm,
and what a server's answer asks for.

A DPoP-bound token is worthless without the key: every use carries a fresh proof, a JWT
signed by the client's key over the request's method and URL (and, at a resource server,
the token's hash). Signing, and the key itself, are :mod:`tokend.io.dpop`'s; here is what
is decided:

- ``jwk_thumbprint``: RFC 7638, the SHA-256 of the public key's required members in
  lexicographic order with no whitespace. It is the token's ``cnf.jkt`` and part of the
  token's identity: a new key is a new token.
- ``target_uri``: ``htu``, the request's URL without query and fragment (RFC 9449 §4.2).
- ``proof_claims``/``proof_header``: §4.2's ``typ``, ``jwk``, ``htm``, ``htu``, ``iat``,
  ``jti`` and, where they apply, ``ath`` and ``nonce``.
- ``choose_alg``: what to sign with, from the server's ``dpop_signing_alg_values_supported``.
- ``nonce_request``: whether an answer is a server's "use this nonce" (§8 at the token
  endpoint, a 400 ``use_dpop_nonce``; §9 at a resource server, a 401 whose
  ``WWW-Authenticate: DPoP`` says ``error="use_dpop_nonce"``), and the nonce.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

PROOF_TYPE = "dpop+jwt"
KEY_DIR = "dpop"  # the state directory's subdirectory for the keys tokend makes
DEFAULT_ALG = "ES256"  # RFC 9449 names no default; ES256 is what every server here takes
# The algorithms tokend can make a key for and sign with, most preferred first: a server's
# list picks the first of these it names.
DPOP_ALGS: tuple[str, ...] = ("ES256", "ES384", "EdDSA", "RS256")
# Names servers use for the same algorithm (oidc-provider lists the fully specified
# "Ed25519" of draft-ietf-jose-fully-specified-algorithms beside "EdDSA").
ALG_ALIASES: Mapping[str, str] = {"Ed25519": "EdDSA"}
MAX_NONCE = 512  # characters: a nonce is an opaque token the server made; more is not one
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # NQCHAR of RFC 9449 §8.1, minus quote and backslash
_REQUIRED_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


class DpopError(ValueError):
    """A key, an algorithm or an answer DPoP cannot work with (the message holds no secret)."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638: the base64url SHA-256 of the JWK's required members, sorted, no whitespace."""
    kty = jwk.get("kty")
    members = _REQUIRED_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise DpopError(f"no thumbprint for a key of type {kty!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise DpopError(f"the public key lacks {', '.join(missing)}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(token: str) -> str:
    """``ath``: the base64url SHA-256 of the access token's ASCII bytes (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def target_uri(url: str) -> str:
    """``htu``: the URL a request goes to, without its query and fragment (§4.2), scheme and
    host in lower case as RFC 3986 §6.2.2.1 normalizes them (a server compares normalized)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("https", "http") or not parts.netloc:
        raise DpopError("a DPoP proof names an http(s) URL")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


def proof_header(alg: str, public_jwk: Mapping[str, object]) -> dict[str, object]:
    """The proof's JOSE header: its type, the algorithm, and the public key itself."""
    if any(m in public_jwk for m in ("d", "p", "q", "dp", "dq", "qi")):
        raise DpopError("a DPoP header carries the public key only")  # never a private member
    return {"typ": PROOF_TYPE, "alg": alg, "jwk": dict(public_jwk)}


def proof_claims(
    method: str,
    url: str,
    *,
    now: float,
    jti: str,
    access_token: str | None = None,
    nonce: str | None = None,
) -> dict[str, object]:
    """A proof's claims for one request: ``htm``, ``htu``, ``iat``, a fresh ``jti``; ``ath``
    when the request carries a token (at a resource server); ``nonce`` when a server gave one."""
    claims: dict[str, object] = {
        "htm": method.upper(),
        "htu": target_uri(url),
        "iat": int(now),
        "jti": jti,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


def choose_alg(configured: str | None, supported: tuple[str, ...] | None) -> str:
    """The algorithm a new key is made for: the configured one (which the server must list
    when it publishes a list), else the first of ``DPOP_ALGS`` the server lists, else ES256.
    Raises DpopError when the server lists none tokend can sign with."""
    offered = None if supported is None else {ALG_ALIASES.get(a, a) for a in supported}
    if configured is not None:
        if offered is not None and configured not in offered:
            raise DpopError(
                f"dpop_signing_alg {configured} is not among the server's "
                f"dpop_signing_alg_values_supported ({', '.join(sorted(offered)) or 'none'})"
            )
        return configured
    if offered is None:
        return DEFAULT_ALG
    for alg in DPOP_ALGS:
        if alg in offered:
            return alg
    raise DpopError(
        "the server's dpop_signing_alg_values_supported names none tokend signs with "
        f"({', '.join(DPOP_ALGS)})"
    )


def valid_nonce(value: str | None) -> str | None:
    """A server's nonce if it is one (printable, no quote, bounded), else None: a nonce is
    put into every later proof, so what is not one is not carried along."""
    if value is None or len(value) > MAX_NONCE or not _NONCE.fullmatch(value):
        return None
    return value


_CHALLENGE_ERROR = re.compile(r'(?:^|[\s,])error\s*=\s*"?use_dpop_nonce"?', re.IGNORECASE)


def nonce_request(status: int, headers: Mapping[str, str], error: str | None = None) -> str | None:
    """The nonce a server asks the next proof to carry, or None.

    At the token endpoint (§8) the answer is a 400 whose JSON ``error`` is
    ``use_dpop_nonce``; at a resource server (§9) a 401 with ``WWW-Authenticate: DPoP
    error="use_dpop_nonce"``. Either way the nonce is the ``DPoP-Nonce`` header. ``headers``
    is case-insensitive (requests' and aiohttp's mappings are)."""
    nonce = valid_nonce(headers.get("DPoP-Nonce"))
    if nonce is None:
        return None
    if status == 400 and error == "use_dpop_nonce":
        return nonce
    if status == 401:
        challenge = headers.get("WWW-Authenticate", "")
        if challenge[:5].lower() == "dpop " and _CHALLENGE_ERROR.search(challenge[5:]):
            return nonce
    return None


def error_code(body: bytes) -> str | None:
    """An error answer's ``error`` (RFC 6749 §5.2), if its body is a JSON object with one."""
    try:
        data = json.loads(body[:65536])
    except (ValueError, UnicodeDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None


def bound_type_ok(token_type: str, *, dpop: bool, allow_bearer: bool) -> bool:
    """Whether an answer's ``token_type`` fits what was asked: a DPoP request wants
    ``DPoP`` (a server that answers Bearer ignored the proof: a silent downgrade, refused
    unless the credential allows it); a request without DPoP never takes a DPoP token."""
    kind = token_type.lower()
    if dpop:
        return kind == "dpop" or (allow_bearer and kind == "bearer")
    return kind != "dpop"
