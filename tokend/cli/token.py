"""``tokend token NAME`` when the fast path gave up: the validated config, the cached token
while it is fresh, else one refresh (sinks left alone); the token on stdout."""

from __future__ import annotations

import sys

from tokend.cli.console import setup_logging
from tokend.cli.selection import bearer_usable, cached_token, select
from tokend.config import Config, CredentialConfig
from tokend.core.exit_codes import ExitCode
from tokend.core.tokens import Token
from tokend.io.cache import TokenCache


def valid_token(config: Config, cred: CredentialConfig) -> Token | None:
    """A token for scripts: the cached one while fresh, else a new one (sinks untouched)."""
    token = cached_token(config, cred)
    if token is not None:
        return token
    setup_logging(config, quiet=True)

    from tokend.daemon.refresher import Refresher
    from tokend.io.token_client import TokenClient

    client = TokenClient()
    try:
        return Refresher(cred, TokenCache(config.state_dir)).refresh(client, write_sinks=False).token
    finally:
        client.close()


def cmd_token(config: Config, name: str) -> int:
    (cred,) = select(config, [name])
    bearer_usable(cred, "token")
    token = valid_token(config, cred)
    if token is None:
        return ExitCode.FAILED
    sys.stdout.write(token.access_token + "\n")
    return ExitCode.OK
