"""Find a credential and its cached token with nothing but the standard library.

This is ``tokend token``'s fast path: no logging, no requests, no scheduler. Only when the
cache has no fresh token does the caller import the machinery that asks the IdP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tokend.config import Config, ConfigError, CredentialConfig
from tokend.core import policy
from tokend.core.tokens import Token
from tokend.io.cache import TokenCache, cache_key
from tokend.io.secret_sources import read_secret


class UsageError(Exception):
    """The command line names something that is not there."""


def select(config: Config, names: Sequence[str]) -> list[CredentialConfig]:
    if not config.credentials:
        # Almost surely the wrong file (or an empty one): a config error, not a usage one.
        raise ConfigError(config.path, "no credentials configured; is this the right file?")
    unknown = [n for n in names if n not in config.credentials]
    if unknown:
        known = ", ".join(config.credentials) or "none"
        raise UsageError(f"no credential named {', '.join(unknown)} in {config.path} (known: {known})")
    return [config.credentials[n] for n in names] if names else list(config.credentials.values())


def cached_token(config: Config, cred: CredentialConfig) -> Token | None:
    """The cached token while it is fresh, else None."""
    client_id = read_secret(cred, cred.client_id)
    entry = TokenCache(config.state_dir).load(cache_key(cred, client_id))
    if entry is not None and policy.is_fresh(
        entry.token, time.time(), refresh_at=cred.refresh_at, min_ttl_margin=cred.min_ttl_margin
    ):
        return entry.token
    return None
