"""``tokend fetch``: refresh now (or keep a fresh cached token), write every sink, and say
so in one line per credential; exit 0 when every credential has a valid token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokend.cli.selection import select
from tokend.config import Config, ConfigError
from tokend.core.exit_codes import ExitCode
from tokend.core.timestamps import rfc3339
from tokend.io.cache import TokenCache

if TYPE_CHECKING:
    from tokend.core.results import Attempt


log = logging.getLogger("tokend")


def cmd_fetch(config: Config, names: Sequence[str], *, force: bool) -> int:
    creds = select(config, names)
    from tokend.daemon.refresher import Refresher
    from tokend.io.token_client import TokenClient

    cache = TokenCache(config.state_dir)
    client = TokenClient()
    worst = ExitCode.OK
    try:
        for cred in creds:
            # One credential's failure never stops the others (certbot's renewal loop).
            try:
                outcome = Refresher(cred, cache).refresh(client, force=force)
            except ConfigError as exc:
                log.error("%s", exc)
                worst = max(worst, ExitCode.CONFIG)
                continue
            if fetch_succeeded(outcome, force=force):
                log_fetch(outcome)
            else:  # the refresher has said why, in one line
                worst = max(worst, ExitCode.FAILED)
    finally:
        client.close()
    return worst


def log_fetch(outcome: Attempt) -> None:
    token = outcome.token
    assert token is not None
    how = "new token" if outcome.fetched else "cached token"
    log.info(
        "%s: fetch ok: %s %s, valid until %s, %d sink(s) written",
        outcome.name,
        how,
        token.fingerprint,
        rfc3339(token.expires_at),
        outcome.sinks_written,
        extra={
            "event": "fetch",
            "credential": outcome.name,
            "outcome": "success",
            "token": token.fingerprint,
        },
    )


def fetch_succeeded(outcome: Attempt, *, force: bool) -> bool:
    """Every sink holds a valid token; with --force, a *new* one."""
    if outcome.token is None or outcome.sink_errors:
        return False
    return not (force and outcome.request_failed)
