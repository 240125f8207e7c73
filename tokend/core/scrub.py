"""Server text fit for a log line: every form in which a secret of ours may come back in
it, and the text with each of them redacted, on one line, bounded. Pure."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from tokend.core.token_request import TokenRequest


def secret_forms(secrets: Iterable[str], request: TokenRequest | None = None) -> tuple[str, ...]:
    """Every form in which a secret of ours may come back in a server's error text:
    plain, URL-encoded both ways, JSON-escaped, HTML-escaped (an error page echoing the
    request), base64 (alone, and the whole Basic value). Longest first, so a form that
    contains another is replaced whole."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update(
            {
                secret,
                quote(secret, safe=""),
                quote_plus(secret, safe=""),
                quote(secret),
                quote_plus(secret),
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                html.escape(secret),
                html.escape(secret, quote=False),
                html.escape(quote_plus(secret, safe="")),
                base64.b64encode(secret.encode("utf-8")).decode("ascii").rstrip("="),
            }
        )
    authorization = request.headers.get("Authorization", "") if request is not None else ""
    if authorization.startswith("Basic "):
        forms.add(authorization[len("Basic ") :].rstrip("="))
    return tuple(sorted(forms, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str], limit: int = 300) -> str:
    """Server text fit for a log line: one line, bounded, and no secret of ours in it.

    ``secrets`` are the :func:`secret_forms`. They are replaced *before* the text is cut,
    so a cut can never leave half a secret; a text that ends in the first characters of
    one (an echo the server itself cut short) loses that end too.
    """
    forms = tuple(f for f in secrets if f)
    for form in forms:
        text = text.replace(form, "[redacted]")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    cut = len(text) > limit
    text = text[:limit]
    for form in forms:
        for size in range(min(len(form) - 1, len(text)), 3, -1):
            if text.endswith(form[:size]):
                text = text[:-size] + "[redacted]"
                break
    return text + "…" if cut else text
