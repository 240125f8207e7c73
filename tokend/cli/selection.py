"""Choosing credentials from a validated config, and its cached token: what ``fetch``,
``token``, ``exec`` and ``check`` share. The config machinery is imported only when called,
so that ``tokend token``'s fast path (:mod:`tokend.cli.fastpath`) never pays for it.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # not typing's: `tokend token`'s fast path imports this module too
if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokend.config import Config, CredentialConfig
    from tokend.core.tokens import Token


class UsageError(Exception):
    """The command line names something that is not there."""


def select(config: Config, names: Sequence[str]) -> list[CredentialConfig]:
    from tokend.config import ConfigError

    if not config.credentials:
        # Almost surely the wrong file (or an empty one): a config error, not a usage one.
        raise ConfigError(config.path, "no credentials configured; is this the right file?")
    unknown = [n for n in names if n not in config.credentials]
    if unknown:
        known = ", ".join(config.credentials) or "none"
        raise UsageError(f"no credential named {', '.join(unknown)} in {config.path} (known: {known})")
    return [config.credentials[n] for n in names] if names else list(config.credentials.values())


def bearer_usable(cred: CredentialConfig, command: str) -> None:
    """Refuse to hand a DPoP token to a program: bound to tokend's key, it is useless (and
    refused) without a fresh proof per request, which only tokend's proxy signs."""
    if cred.dpop:
        raise UsageError(
            f"{command}: credential {cred.name!r} has DPoP tokens (dpop = true), bound to tokend's key: "
            "a program reaches its API through the credential's proxy (docs/dpop.md)"
        )


def cached_token(config: Config, cred: CredentialConfig) -> Token | None:
    """The cached token while it is fresh, else None (from the validated config)."""
    from tokend.core import policy
    from tokend.io.cache import TokenCache
    from tokend.io.cache import cache_key as validated_key
    from tokend.io.secret_sources import read_secret

    client_id = read_secret(cred, cred.client_id)
    entry = TokenCache(config.state_dir).load(validated_key(cred, client_id))
    if entry is not None and policy.is_fresh(
        entry.token, time.time(), refresh_at=cred.refresh_at, min_ttl_margin=cred.min_ttl_margin
    ):
        return entry.token
    return None
