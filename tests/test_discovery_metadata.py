"""tokend/core/discovery.py: where an issuer's metadata is looked for, judging a metadata
document for the configured issuer, when it is stale, and what it warns of, as data.
Fetching and keeping the metadata (tokend/io/discovery.py) is tests/test_discovery.py's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokend.config.schema import CLIENT_AUTHS
from tokend.core.discovery import (
    AUTH_METHOD_NAMES,
    DISCOVERY_MAX_AGE,
    BadMetadata,
    Discovered,
    discovery_warnings,
    metadata_is_stale,
    parse_metadata,
    well_known_urls,
)

NOW = 1_700_000_000.0


def metadata(issuer: str, token_endpoint: str, **more: Any) -> dict[str, Any]:
    return {"issuer": issuer, "token_endpoint": token_endpoint, **more}


# --------------------------------------------------------------------------- where and whose


def test_where_the_metadata_is_looked_for() -> None:
    assert well_known_urls("https://idp.example") == (
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    )
    assert well_known_urls("https://idp.example/realms/a/") == (
        "https://idp.example/realms/a/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server/realms/a",
        "https://idp.example/realms/a/.well-known/oauth-authorization-server",
    )


def test_the_issuer_must_match_exactly() -> None:
    issuer = "https://idp.example/realms/a"
    assert (
        parse_metadata(metadata(issuer, "https://idp.example/t"), issuer).token_endpoint
        == "https://idp.example/t"
    )
    for other in (issuer + "/", "https://IDP.example/realms/a", None, 7):
        with pytest.raises(BadMetadata, match="the metadata is for issuer"):
            parse_metadata(metadata(other, "https://idp.example/t"), issuer)  # type: ignore[arg-type]
    with pytest.raises(BadMetadata, match="no token_endpoint"):
        parse_metadata({"issuer": issuer}, issuer)
    with pytest.raises(BadMetadata, match="not a JSON object"):
        parse_metadata([issuer], issuer)


def test_a_client_certificate_uses_the_mtls_alias() -> None:
    issuer = "https://idp.example"
    found = parse_metadata(
        metadata(
            issuer, f"{issuer}/token", mtls_endpoint_aliases={"token_endpoint": "https://mtls.idp.example/t"}
        ),
        issuer,
    )
    assert found.endpoint(mtls=True) == "https://mtls.idp.example/t"
    assert found.endpoint(mtls=False) == f"{issuer}/token"
    assert (
        parse_metadata(metadata(issuer, f"{issuer}/token"), issuer).endpoint(mtls=True) == f"{issuer}/token"
    )


# --------------------------------------------------------------------------- what is kept of it


def test_metadata_names_are_printable_ascii_and_bounded() -> None:
    """``check --online`` prints token_endpoint_auth_methods_supported: an entry with a
    terminal escape (or any non-ASCII, control or blank) is dropped, and at most 32 kept."""
    from tokend.core.discovery import MAX_METADATA_NAMES, parse_metadata

    issuer = "https://idp.example"
    listed = [
        "private_key_jwt",
        "\x1b]0;owned\x07",
        "tls\x1b[2J",
        "a b",
        "",
        "\uff50kj",
        7,
        "x" * 65,
        "RS256",
    ]
    found = parse_metadata(
        {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/t",
            "token_endpoint_auth_methods_supported": listed + [f"m{i}" for i in range(100)],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "\x9b31m"],
        },
        issuer,
    )
    assert found.auth_methods is not None and len(found.auth_methods) == MAX_METADATA_NAMES == 32
    assert found.auth_methods[:3] == ("private_key_jwt", "RS256", "m0")
    assert found.signing_algs == ("ES256",)


def test_an_mtls_alias_that_is_no_url_string_is_ignored() -> None:
    issuer = "https://idp.example"
    for aliases in ({"token_endpoint": ""}, {"token_endpoint": 7}, ["https://mtls.idp.example/t"], "x"):
        found = parse_metadata(metadata(issuer, f"{issuer}/t", mtls_endpoint_aliases=aliases), issuer)
        assert found.mtls_token_endpoint is None and found.endpoint(mtls=True) == f"{issuer}/t"


def test_lists_that_are_not_lists_are_unknown_and_an_empty_list_is_empty() -> None:
    issuer = "https://idp.example"
    unknown = parse_metadata(
        metadata(issuer, f"{issuer}/t", token_endpoint_auth_methods_supported="x"), issuer
    )
    assert unknown.auth_methods is None and unknown.signing_algs is None
    empty = parse_metadata(metadata(issuer, f"{issuer}/t", token_endpoint_auth_methods_supported=[]), issuer)
    assert empty.auth_methods == ()


@pytest.mark.parametrize(
    "found",
    [
        Discovered("https://i", "https://i/t"),
        Discovered(
            "https://i/realm",
            "https://i/realm/t",
            mtls_token_endpoint="https://mtls.i/t",
            auth_methods=("private_key_jwt", "tls_client_auth"),
            signing_algs=(),
        ),
    ],
)
def test_what_is_kept_reads_back_as_it_was_judged(found: Discovered) -> None:
    """The metadata cache holds ``to_dict()`` as JSON and judges it again when read."""
    assert parse_metadata(json.loads(json.dumps(found.to_dict())), found.issuer) == found


# --------------------------------------------------------------------------- when it is stale


def test_metadata_is_fresh_for_a_day_from_when_it_was_fetched() -> None:
    assert not metadata_is_stale(NOW, NOW)
    assert not metadata_is_stale(NOW, NOW + DISCOVERY_MAX_AGE - 1)
    assert metadata_is_stale(NOW, NOW + DISCOVERY_MAX_AGE)
    assert DISCOVERY_MAX_AGE == 86400


def test_metadata_fetched_in_the_future_is_stale() -> None:
    """A clock that was wrong when it was fetched: never trusted for a day from then."""
    assert metadata_is_stale(NOW + 1, NOW)


# --------------------------------------------------------------------------- what it warns of


def test_warnings_for_what_the_metadata_does_not_list() -> None:
    found = Discovered("https://i", "https://i/t", auth_methods=("private_key_jwt",), signing_algs=("RS256",))
    assert discovery_warnings(found, "private_key_jwt", "RS256") == []
    assert len(discovery_warnings(found, "private_key_jwt", "ES256")) == 1
    assert "client_secret_basic or client_secret_post" in discovery_warnings(found, "auto")[0]
    assert discovery_warnings(Discovered("https://i", "https://i/t"), "basic") == []  # nothing listed


def test_every_client_auth_has_its_metadata_names() -> None:
    """A new client_auth needs its name in AUTH_METHOD_NAMES, or discovery would warn
    that the issuer does not list a method called by tokend's own word for it."""
    assert set(AUTH_METHOD_NAMES) == set(CLIENT_AUTHS)
    listed = Discovered("https://i", "https://i/t", auth_methods=("client_secret_post",))
    assert discovery_warnings(listed, "body") == [] and discovery_warnings(listed, "auto") == []
    (warning,) = discovery_warnings(listed, "basic")
    assert "client_secret_basic" in warning and "(client_secret_post)" in warning


def test_an_empty_list_warns_of_none_supported() -> None:
    nothing = Discovered("https://i", "https://i/t", auth_methods=(), signing_algs=())
    method, alg = discovery_warnings(nothing, "basic", "RS256")
    assert method.endswith("token_endpoint_auth_methods_supported (none)")
    assert alg.endswith("token_endpoint_auth_signing_alg_values_supported (none)")
