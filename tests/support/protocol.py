"""What the tests of a token request share, with and without a server: the credential and
the client's values, building a request from them, every form a secret takes on the wire,
and the tables of answers (errors a retry cannot fix, errors worth retrying, malformed
success bodies) that tests/test_token_response.py judges as data and
tests/test_token_client.py as a real endpoint sends them."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from tokend.config import CredentialConfig, parse
from tokend.core.token_request import Style, TokenRequest, build_request

CLIENT_ID = "app id:ü"
SECRET = "s3cr:t&+= %"  # every character RFC 6749 §2.3.1 makes us encode
URL = "https://idp.example/connect/token"
NOW = 1_700_000_000.0
RFC_STYLE = Style("basic", "form")
ASSERTION = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"


def cred(url: str = URL, **changes: Any) -> CredentialConfig:
    base = parse(
        f'[credentials.api]\ntoken_url = "{url}"\nclient_id = "x"\nclient_secret = "y"\n',
        Path("/t/tokend.toml"),
        environ={},
    ).credentials["api"]
    return dataclasses.replace(base, **changes)


def build(
    c: CredentialConfig,
    style: Style = RFC_STYLE,
    *,
    client_id: str = CLIENT_ID,
    client_secret: str = SECRET,
    refresh_token: str | None = None,
) -> TokenRequest:
    return build_request(
        c, client_id=client_id, client_secret=client_secret, style=style, refresh_token=refresh_token
    )


def secret_forms_of(secret: str, basic: str) -> list[str]:
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        html.escape(secret),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        basic.removeprefix("Basic ").rstrip("="),
    ]


FATAL = [
    (401, {"error": "invalid_client", "error_description": "bad secret"}, "invalid_client"),
    (400, {"error": "unauthorized_client"}, "unauthorized_client"),
    (400, {"error": "invalid_scope"}, "invalid_scope"),
    (400, {"error": "unsupported_grant_type"}, "unsupported_grant_type"),
    (403, None, "Forbidden (HTTP 403)"),
    (404, None, "Not Found (HTTP 404)"),
]

RETRYABLE = [
    (500, None),
    (502, None),
    (503, None),
    (504, None),
    (429, None),
    (400, {"error": "temporarily_unavailable"}),
    (408, None),
]


def body_of(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body).encode()


MALFORMED = [
    (b"<html>Bad gateway</html>", "not JSON"),
    (b"", "empty body"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"token_type": "bearer"}', "no access_token"),
    (b'{"access_token": ""}', "no access_token"),
    (b'{"access_token": "a b"}', "whitespace"),
    (b'{"access_token": "a\\nb"}', "whitespace"),
    (b'{"access_token": "a\'b"}', "which no sink format"),
    (b'{"access_token": "a", "expires_in": 0}', "expires_in"),
    (b'{"access_token": "a", "expires_in": -5}', "expires_in"),
    (b'{"access_token": "a", "expires_in": "soon"}', "expires_in"),
    (b'{"access_token": "a", "expires_in": 1000000000000}', "expires_in"),
    (b'{"access_token": "a", "token_type": "two words"}', "token_type"),
    (b'{"access_token": "a", "token_type": "access_token"}', "token_type 'access_token' is not one"),
    (b'{"access_token": "a", "token_type": "mac"}', 'set token_type = "Bearer"'),
]
MALFORMED_IDS = [m[1] + str(i) for i, m in enumerate(MALFORMED)]
NOT_SECONDS: list[object] = ["²", "٣", " 12 3", True, float("nan"), 10**30]
