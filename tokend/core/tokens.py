"""The access token as tokend holds it, and the only way a token may appear in a log."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tokend.core.limits import MAX_TOKEN_CHARS

# Visible ASCII minus the characters that break one of the sink formats or their readers:
# quotes and backslash (env quoting, JSON, dotenv escapes), '$' and '`' (interpolating
# dotenv readers and careless shells). Bearer tokens (RFC 6750 b64token) never need them.
# Used with fullmatch: `$` also matches before a final "\n", which let "abc\n" through.
_SAFE_TOKEN = re.compile(r"[\x21-\x7e]+")
_UNSAFE_CHARS = frozenset("'\"\\$`")
_TOKEN_TYPE = re.compile(r"[A-Za-z0-9!#%&*+.^_|~-]{1,64}")


def fingerprint(secret: str) -> str:
    """A short, stable, one-way name for a token or secret: what logs say instead of it."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:10]


def unsafe_reason(token: str) -> str | None:
    """Why ``token`` cannot be written to every sink format verbatim, or None if it can."""
    if not token:
        return "is empty"
    if len(token) > MAX_TOKEN_CHARS:
        return f"is longer than {MAX_TOKEN_CHARS} characters"
    if not _SAFE_TOKEN.fullmatch(token):
        return "contains whitespace, control or non-ASCII characters"
    bad = sorted(_UNSAFE_CHARS.intersection(token))
    if bad:
        return f"contains {' '.join(bad)}, which no sink format can carry safely"
    return None


def authorization_scheme(token_type: str) -> str:
    """The scheme a token goes with in an Authorization header: RFC 6750 spells it
    "Bearer", servers often say "bearer"; any other type as the answer named it."""
    return "Bearer" if token_type.lower() == "bearer" else token_type


def valid_token_type(token_type: str) -> bool:
    return bool(_TOKEN_TYPE.fullmatch(token_type))


def valid_issued_token_type(value: object) -> bool:
    """A token type URI as a server may name it: printable ASCII, no spaces, 256 at most
    (it reaches a terminal in ``tokend status``)."""
    return isinstance(value, str) and 0 < len(value) <= 256 and all("!" <= c <= "~" for c in value)


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str = field(repr=False)
    expires_at: float  # unix seconds: request sent + expires_in
    obtained_at: float  # unix seconds the request was sent
    token_type: str = "Bearer"
    scope: str | None = None
    refresh_token: str | None = field(default=None, repr=False)
    issued_token_type: str | None = None  # RFC 8693 §2.2.1: what a token exchange issued

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.access_token)

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at,
            "obtained_at": self.obtained_at,
            "scope": self.scope,
            "refresh_token": self.refresh_token,
            **({"issued_token_type": self.issued_token_type} if self.issued_token_type else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Token:
        """Rebuild a cached token; raises ValueError on anything not written by to_dict."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        access = data.get("access_token")
        if not isinstance(access, str) or unsafe_reason(access):
            raise ValueError("bad access_token")
        expires_at, obtained_at = data.get("expires_at"), data.get("obtained_at")
        if not isinstance(expires_at, int | float) or not isinstance(obtained_at, int | float):
            raise ValueError("bad timestamps")
        if expires_at <= obtained_at:
            raise ValueError("expires before it was obtained")
        token_type = data.get("token_type", "Bearer")
        scope, refresh = data.get("scope"), data.get("refresh_token")
        if not isinstance(token_type, str) or not valid_token_type(token_type):
            raise ValueError("bad token_type")
        if scope is not None and not isinstance(scope, str):
            raise ValueError("bad scope")
        if refresh is not None and not isinstance(refresh, str):
            raise ValueError("bad refresh_token")
        issued = data.get("issued_token_type")
        if issued is not None and not valid_issued_token_type(issued):
            raise ValueError("bad issued_token_type")
        return cls(access, float(expires_at), float(obtained_at), token_type, scope, refresh, issued)
