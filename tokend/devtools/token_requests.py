"""Reading a token request as an identity provider does: its dialect, its parameters and
its Basic credentials. One decoder for both of tokend's own fake identity providers (the
demo's, ``tokend.devtools.idp``, and the tests' endpoint), so that they cannot come to
disagree about what tokend sent; the third-party servers in the tests stay the
independent check."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, unquote_plus

Wire = str  # "form" or "json"


def decode_body(content_type: str, body: bytes) -> tuple[Wire, dict[str, str] | None]:
    """The body's dialect and parameters (None when it cannot be read): JSON when the
    content type says so, else a UTF-8 form whose blank values are kept."""
    wire = "json" if content_type.split(";")[0].strip().lower() == "application/json" else "form"
    try:
        if wire == "json":
            data = json.loads(body or b"{}")
            return wire, ({str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None)
        return wire, dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):
        return wire, None


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """The client id and secret of an ``Authorization: Basic`` header, each form-urlencoded
    before base64 as RFC 6749 §2.3.1 says; None for another scheme or a broken value."""
    if not authorization.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(authorization[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote_plus(user), unquote_plus(password)
