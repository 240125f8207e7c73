"""tokend/core/scrub.py: every form a secret takes in a request, and the server's text
made one bounded line with none of them in it, not even cut short."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest

from tokend.core.scrub import scrub, secret_forms
from tokend.core.token_request import Style, TokenRequest
from tokend.core.token_response import classify_failure

from .support.protocol import ASSERTION, NOW, SECRET, URL, build, cred, secret_forms_of

# --------------------------------------------------------------------------- the forms of a secret


def test_secret_forms_cover_every_encoding_longest_first() -> None:
    request = build(cred())
    forms = secret_forms((SECRET, ""), request)
    for form_ in secret_forms_of(SECRET, request.headers["Authorization"]):
        assert form_ in forms
    assert list(forms) == sorted(forms, key=len, reverse=True)
    assert "" not in forms and secret_forms(("",)) == ()


# --------------------------------------------------------------------------- scrubbing


def test_scrub_makes_one_bounded_line() -> None:
    assert scrub("a\nb\t\x00c   d", ()) == "a b c d"
    assert scrub("x" * 400, (), limit=10) == "x" * 10 + "…"


def test_scrub_redacts_before_the_cut_and_at_it() -> None:
    assert scrub("the secret is hunter22!", ("hunter22",)) == "the secret is [redacted]!"
    # the server cut its own echo short: the first characters of a secret go too
    assert scrub("the secret is hunt", ("hunter22",)) == "the secret is [redacted]"
    # replaced before the cut: the cut may halve the marker, never the secret
    assert scrub("x" * 95 + "hunter22" + "y" * 50, ("hunter22",), limit=100) == "x" * 95 + "[reda…"


# --------------------------------------------------------------------------- what a server echoes


def echo_text(style: str, request: TokenRequest, secret: str = "") -> str:
    """An IdP in debug mode: its error text repeats what it was sent."""
    raw = request.body.decode()
    return {
        "html": f"<html><p>client secret {html.escape(secret)} is wrong; body {html.escape(raw)}</p></html>",
        "headers": f"bad client; headers were {dict(request.headers)}",
        "body": f"bad request body: {raw}",
        "json": json.dumps({"error": "invalid_client", "error_description": f"got {raw}"}),
        # a long prefix pushes the secret right over the cut at the length limit
        "cut": "x" * 100 + raw + "y" * 400,
    }[style]


@pytest.mark.parametrize("auth", ["basic", "body"])
@pytest.mark.parametrize("style", ["headers", "body", "json", "cut", "html"])
def test_no_form_of_the_secret_survives_an_echo(auth: Any, style: str) -> None:
    secret = 'p@ss w0rd+/ü"x'
    request = build(
        cred(), Style(auth, "json" if style == "json" else "form"), client_id="app", client_secret=secret
    )
    error = classify_failure(
        401, {}, echo_text(style, request, secret).encode(), now=NOW, secrets=secret_forms((secret,), request)
    )
    message = str(error)
    for form_ in secret_forms_of(secret, request.headers.get("Authorization", "")):
        for size in range(4, len(form_) + 1):  # no piece of it either, at the cut or elsewhere
            assert form_[:size] not in message, (form_[:size], message)


def test_a_secret_echoed_by_the_server_is_redacted() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": f"secret {SECRET} is wrong"}).encode()
    error = classify_failure(401, {}, body, now=NOW, secrets=secret_forms((SECRET,)))
    assert SECRET not in str(error) and "[redacted]" in str(error)


def test_an_echoed_assertion_is_scrubbed() -> None:
    request = TokenRequest(URL, {}, b"")
    body = json.dumps({"error": "invalid_client", "error_description": f"bad assertion {ASSERTION}"}).encode()
    error = classify_failure(401, {}, body, now=NOW, secrets=secret_forms(("", "", ASSERTION), request))
    assert ASSERTION not in str(error) and "[redacted]" in str(error)
