"""The token cache: private, atomic, keyed by what makes tokens interchangeable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tokend.config import parse
from tokend.state import CacheEntry, TokenCache, cache_key
from tokend.token import Token

CRED = parse('[credentials.api]\ntoken_url = "https://i/t"\nclient_id = "id"\nclient_secret = "s"\n',
             Path("/t.toml"), environ={}).credentials["api"]


def test_round_trip_is_private(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "state")
    entry = CacheEntry(Token("abc", 200.0, 100.0, refresh_token="r"), "json")
    cache.save("k", entry, cred=CRED, client_id="id")
    assert cache.load("k") == entry
    assert os.stat(cache.path("k")).st_mode & 0o777 == 0o600
    assert os.stat(cache.directory).st_mode & 0o777 == 0o700


def test_a_corrupt_entry_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.directory.mkdir()
    cache.path("k").write_text("{not json")
    assert cache.load("k") is None
    assert cache.load("absent") is None


def test_key_follows_endpoint_client_scope_and_params_not_the_name_or_secret() -> None:
    key = cache_key(CRED, "id")
    assert cache_key(dataclasses.replace(CRED, name="renamed"), "id") == key
    assert cache_key(dataclasses.replace(CRED, client_secret=CRED.client_id), "id") == key
    assert cache_key(CRED, "other-id") != key
    assert cache_key(dataclasses.replace(CRED, token_url="https://j/t"), "id") != key
    assert cache_key(dataclasses.replace(CRED, scope=("a",)), "id") != key
    assert cache_key(dataclasses.replace(CRED, extra_params=(("audience", "x"),)), "id") != key
