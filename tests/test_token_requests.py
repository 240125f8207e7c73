"""tokend/devtools/token_requests.py: how tokend's own fake identity providers read a
token request. Both use this one decoder, so they read what tokend sends the same way."""

from __future__ import annotations

import base64

from tokend.devtools.token_requests import basic_credentials, decode_body


def test_a_form_is_utf8_with_its_blank_values_kept() -> None:
    wire, params = decode_body(
        "application/x-www-form-urlencoded", b"grant_type=client_credentials&scope=&client_secret=s%C3%A9"
    )
    assert wire == "form" and params == {
        "grant_type": "client_credentials",
        "scope": "",
        "client_secret": "sé",
    }
    assert decode_body("application/x-www-form-urlencoded", b"\xff=1") == ("form", None)


def test_json_is_read_by_its_content_type_and_must_be_an_object() -> None:
    assert decode_body("application/json; charset=utf-8", b'{"a": 1}') == ("json", {"a": "1"})
    assert decode_body("Application/JSON", b"[1]") == ("json", None)
    assert decode_body("application/json", b"{") == ("json", None)
    assert decode_body("application/json", b"") == ("json", {})


def test_basic_credentials_are_form_decoded_after_base64() -> None:
    value = base64.b64encode(b"my%20client:p%3Ass+word").decode()
    assert basic_credentials(f"Basic {value}") == ("my client", "p:ss word")
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None
