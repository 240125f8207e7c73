"""tokend/core/token_request.py: the token request as data, built in a ``Style`` (client
authentication and body format, or a key-based method), with no server and no clock."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, unquote, unquote_plus

import pytest

from tokend import __version__
from tokend.core.token_request import (
    Style,
    TokenRequest,
    basic_credentials,
    basic_encoding_changes,
    build_request,
    json_params,
)

from .support.protocol import ASSERTION, CLIENT_ID, SECRET, URL, build, cred


def basic_pair(request: TokenRequest) -> tuple[str, str]:
    """What a server that form-decodes Basic credentials reads (as tests/conftest.Seen)."""
    user, _, password = base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
    return unquote_plus(user), unquote_plus(password)


def form(request: TokenRequest) -> dict[str, str]:
    return dict(parse_qsl(request.body.decode("ascii")))


# --------------------------------------------------------------------------- the request


def test_form_with_basic_auth_as_rfc_6749_says() -> None:
    request = build(cred(scope=("read", "write"), extra_params=(("audience", "https://api"),)))
    assert request.url == URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == f"tokend/{__version__}"
    assert request.headers["Cache-Control"] == "no-store"
    assert basic_pair(request) == (CLIENT_ID, SECRET)
    assert form(request) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api",
    }


def test_json_with_body_auth_as_eventbookings_wants() -> None:
    request = build(cred(), Style("body", "json"))
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert json.loads(request.body) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }


def test_form_with_body_auth() -> None:
    request = build(cred(), Style("body", "form"))
    assert form(request) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    assert "Authorization" not in request.headers


def test_basic_percent_encodes_a_space_as_20_not_plus() -> None:
    """%20 reads back as a space whether the server form-decodes or URL-decodes (Authlib)."""
    value = basic_credentials(CLIENT_ID, SECRET).removeprefix("Basic ")
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert password == "s3cr%3At%26%2B%3D%20%25" and user == "app%20id%3A%C3%BC"
    assert unquote(password) == unquote_plus(password) == SECRET


@pytest.mark.parametrize(
    ("client_id", "client_secret", "changes"),
    [
        ("plain", "plainsecret", False),
        ("a-b_c.d~e", "X9", False),
        (CLIENT_ID, "plain", True),
        ("a", "b c", True),
    ],
)
def test_basic_encoding_changes(client_id: str, client_secret: str, changes: bool) -> None:
    assert basic_encoding_changes(client_id, client_secret) is changes


def test_a_list_in_extra_params_is_sent_repeated_in_a_form_and_as_an_array_in_json() -> None:
    params = (("audience", "api"), ("resource", "https://a"), ("resource", "https://b"))
    sent = parse_qsl(build(cred(extra_params=params)).body.decode())
    assert sent.count(("resource", "https://b")) == 1
    assert [v for k, v in sent if k == "resource"] == ["https://a", "https://b"]
    body = json.loads(build(cred(extra_params=params), Style("basic", "json")).body)
    assert body["resource"] == ["https://a", "https://b"] and body["audience"] == "api"


def test_json_params_makes_a_repeated_name_an_array() -> None:
    assert json_params([("a", "1"), ("b", "2"), ("b", "3")]) == {"a": "1", "b": ["2", "3"]}


def test_the_refresh_grant_sends_the_refresh_token_and_no_scope() -> None:
    c = cred(scope=("read",), extra_params=(("audience", "api"),))
    request = build(c, refresh_token="rt-old")
    assert form(request) == {"grant_type": "refresh_token", "refresh_token": "rt-old"}
    assert basic_pair(request) == (CLIENT_ID, SECRET)


# --------------------------------------------------------------------------- key-based client auth


def test_private_key_jwt_sends_the_assertion_and_no_secret() -> None:
    request = build_request(
        cred(client_auth="private_key_jwt", client_secret=None),
        client_id=CLIENT_ID,
        client_secret=None,
        style=Style("private_key_jwt", "form"),
        client_assertion=ASSERTION,
    )
    params = dict(parse_qsl(request.body.decode()))
    assert params == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": ASSERTION,
    }
    assert "Authorization" not in request.headers


def test_tls_client_auth_sends_only_the_client_id_to_the_discovered_endpoint() -> None:
    request = build_request(
        cred(client_auth="tls_client_auth", client_secret=None, token_url=None),
        client_id=CLIENT_ID,
        client_secret=None,
        style=Style("tls_client_auth", "form"),
        token_url="https://mtls.idp.example/token",
    )
    assert dict(parse_qsl(request.body.decode())) == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
    }
    assert request.url == "https://mtls.idp.example/token" and "Authorization" not in request.headers
