"""tokend/core/identity.py: the token cache key, the one thing the fast path and the
validated path must agree on."""

from __future__ import annotations

from tokend.core.identity import cache_key
from tokend.core.limits import DEFAULT_EXPIRES_IN

BASE = ("https://idp.example/token", "client-1", ("read", "write"), (("audience", "api"),))


def test_the_key_is_stable_across_versions() -> None:
    """Pinned: a changed key costs every installed daemon a request and strands its cache."""
    assert cache_key(*BASE) == cache_key(*BASE, DEFAULT_EXPIRES_IN)
    assert len(cache_key(*BASE)) == 32 and cache_key(*BASE).isalnum()


def test_scope_order_does_not_matter_but_every_identity_part_does() -> None:
    url, client, scope, params = BASE
    key = cache_key(url, client, scope, params)
    assert cache_key(url, client, tuple(reversed(scope)), params) == key
    assert cache_key(url + "x", client, scope, params) != key
    assert cache_key(url, client + "x", scope, params) != key
    assert cache_key(url, client, ("read",), params) != key
    assert cache_key(url, client, scope, (("audience", "other"),)) != key
    assert cache_key(url, client, scope, params, 60.0) != key


def test_a_repeated_parameter_is_part_of_the_key() -> None:
    url, client, scope, _ = BASE
    one = cache_key(url, client, scope, (("resource", "https://a"),))
    two = cache_key(url, client, scope, (("resource", "https://a"), ("resource", "https://b")))
    assert one != two


def test_the_client_certificate_is_part_of_the_key_and_leaves_the_others_as_they_were() -> None:
    """A token is bound to the certificate that asked for it (RFC 8705), so
    two credentials with different certificates, or a replaced one, get keys of their own;
    a credential without a certificate keeps the key it always had."""
    key = cache_key(*BASE)
    assert cache_key(*BASE, DEFAULT_EXPIRES_IN, None, None) == key
    one = cache_key(*BASE, tls_cert="a" * 64)
    two = cache_key(*BASE, tls_cert="b" * 64)
    assert len({key, one, two}) == 3
    # Tagged: no issuer, lifetime or other part can stand in for a thumbprint.
    assert cache_key(*BASE, DEFAULT_EXPIRES_IN, "a" * 64) != one
    assert cache_key(*BASE, DEFAULT_EXPIRES_IN, "https://i", "a" * 64) not in (one, key)
