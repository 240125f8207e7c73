"""One credential's token, end to end: reuse the cached one or ask the identity provider,
remember it, and put it in every sink. Used by the daemon and by ``tokend fetch``/``token``.

Each sink is written in its own try, so one full disk never keeps a token from the others.
When the identity provider fails, a cached token that has not expired yet stays in the
sinks: readers keep working until it really runs out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from tokend.config import CredentialConfig
from tokend.core import policy
from tokend.core.results import Attempt, Origin, Result
from tokend.core.timestamps import rfc3339
from tokend.core.token_request import Style
from tokend.core.token_response import TokenRequestError
from tokend.core.tokens import Token
from tokend.daemon.token_source import STANDALONE, TokenSource
from tokend.io.cache import CacheEntry, StateError, TokenCache, cache_key
from tokend.io.secret_sources import read_secret
from tokend.io.sinks import SinkError, write_sink
from tokend.io.token_client import TokenClient

log = logging.getLogger("tokend.refresher")


class Refresher:
    __slots__ = ("cache", "clock", "cred", "environ", "source")

    def __init__(
        self,
        cred: CredentialConfig,
        cache: TokenCache,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        source: TokenSource = STANDALONE,
    ) -> None:
        self.cred = cred
        self.cache = cache
        self.environ = environ
        self.clock = clock
        self.source = source  # where a due token may come from before the IdP (fleet mode)

    def refresh(
        self,
        client: TokenClient,
        *,
        force: bool = False,
        fresh_until: float | None = None,
        write_sinks: bool = True,
    ) -> Attempt:
        """Make sure a fresh token is cached (and in the sinks). Raises ConfigError when a
        secret, a key or the issuer's metadata cannot be used (the source is told, as for
        a failed request: a fleet's leader lets go of its lease); every other failure is
        reported in the Attempt.

        The cached token counts as fresh until ``fresh_until`` (the daemon's jittered due
        time) or, without it, until the policy's unjittered due time.
        """
        cred = self.cred
        client_id = read_secret(cred, cred.client_id, self.environ)
        key = cache_key(cred, client_id)
        fetched = False
        request_error: TokenRequestError | None = None
        # Two styles, each with a request and its timeout, is what another holder may need.
        with self.cache.exclusive(key, wait=2 * cred.timeout + 5):
            entry = self.cache.load(key)
            now = self.clock()
            ours = entry.token if entry is not None else None
            due = force or ours is None or not self.is_fresh(ours, now, fresh_until)
            offer = self.source.offer(cred, key, ours, now, due=due)
            origin = Origin.CACHE
            token: Token | None
            if offer.token is not None:  # a newer token from the fleet's leader
                token, origin = offer.token, Origin.FLEET
                self.remember(
                    key,
                    CacheEntry(offer.token, entry.wire, entry.auth) if entry else CacheEntry(offer.token),
                    client_id,
                )
            elif not due or (offer.follow and ours is not None and policy.is_valid(ours, now)):
                token = ours  # fresh, or the fleet's leader is getting the next one
                log.debug(
                    "%s: cached token %s is %s",
                    cred.name,
                    ours and ours.fingerprint,
                    "kept" if due else "fresh",
                )
            else:
                try:
                    # None for a key-based client_auth: obtain reads the key or certificate.
                    ref = cred.client_secret
                    secret = read_secret(cred, ref, self.environ) if ref is not None else None
                    learned = (
                        Style(entry.auth or "basic", entry.wire or "form")
                        if entry is not None and (entry.auth or entry.wire)
                        else None
                    )
                    answer = client.obtain(
                        cred,
                        client_id=client_id,
                        client_secret=secret,
                        refresh_token=entry.token.refresh_token if entry else None,
                        learned=learned,
                        state_dir=self.cache.state_dir,  # discovery's metadata is kept there
                        environ=self.environ,
                    )
                except TokenRequestError as exc:
                    request_error = exc
                    self.source.failed(cred, key)  # fleet mode: a failed leader lets go of its lease
                    token = entry.token if entry and policy.is_valid(entry.token, now) else None
                    if token is not None:
                        log.warning(
                            "%s: refresh failed (%s); keeping token %s, valid until %s",
                            cred.name,
                            exc,
                            token.fingerprint,
                            rfc3339(token.expires_at),
                        )
                    else:
                        log.error("%s: no token: %s", cred.name, exc)
                except Exception:
                    # A ConfigError (discovery refused, a key or certificate unreadable) or a
                    # bug: no token either, so a leader lets go of its lease just the same,
                    # or it would keep it (renewed by the listener) and nobody would ask.
                    self.source.failed(cred, key)
                    raise
                else:
                    token, fetched, origin = answer.token, True, Origin.IDP
                    log.debug(
                        "%s: new token %s, valid %ds until %s",
                        cred.name,
                        token.fingerprint,
                        round(token.lifetime),
                        rfc3339(token.expires_at),
                    )
                    try:
                        self.cache.save(
                            key,
                            CacheEntry(token, answer.style.wire, answer.style.auth),
                            cred=cred,
                            client_id=client_id,
                        )
                    except StateError as exc:  # the token is good; it just will not be remembered
                        log.warning("%s: %s", cred.name, exc)
                    self.source.obtained(cred, key, token)  # fleet mode: the leader publishes it

        written, errors = self.write_sinks(token) if token is not None and write_sinks else (0, [])
        return attempt_of(
            cred.name,
            token,
            fetched,
            request_error,
            tuple(map(str, errors)),
            written,
            origin=origin,
            waited=offer.waited,
        )

    def remember(self, key: str, entry: CacheEntry, client_id: str) -> None:
        try:
            self.cache.save(key, entry, cred=self.cred, client_id=client_id)
        except StateError as exc:  # the token is good; it just will not be remembered
            log.warning("%s: %s", self.cred.name, exc)

    def is_fresh(self, token: Token, now: float, fresh_until: float | None) -> bool:
        if fresh_until is not None:
            return now < fresh_until and policy.is_valid(token, now)
        return policy.is_fresh(
            token, now, refresh_at=self.cred.refresh_at, min_ttl_margin=self.cred.min_ttl_margin
        )

    def write_sinks(self, token: Token) -> tuple[int, list[SinkError]]:
        written = 0
        errors: list[SinkError] = []
        for sink in self.cred.sinks:
            # Each sink in its own try, whatever goes wrong: one never costs the others.
            try:
                if write_sink(token, sink).written:
                    written += 1
                    log.info("%s: wrote %s (%s)", self.cred.name, sink.path, sink.format)
            except SinkError as exc:
                errors.append(exc)
                log.error("%s: sink %s", self.cred.name, exc)
            except Exception as exc:
                log.exception("%s: sink %s failed unexpectedly", self.cred.name, sink.path)
                errors.append(SinkError(sink.path, f"internal error: {type(exc).__name__}"))
        return written, errors


def attempt_of(
    name: str,
    token: Token | None,
    fetched: bool,
    request_error: TokenRequestError | None,
    sink_errors: tuple[str, ...] = (),
    sinks_written: int = 0,
    *,
    origin: Origin = Origin.CACHE,
    waited: float = 0.0,
) -> Attempt:
    """The one record of what happened: a failed request outranks failed sinks."""
    if request_error is not None:
        result = Result.RETRYABLE_ERROR if request_error.retryable else Result.FATAL_ERROR
        error: str | None = str(request_error)
    elif sink_errors:
        result, error = Result.RETRYABLE_ERROR, "; ".join(sink_errors)
    else:
        result, error = Result.SUCCESS, None
    return Attempt(
        name,
        token,
        result,
        fetched=fetched,
        origin=Origin.IDP if fetched else origin,
        waited=waited,
        error=error,
        error_code=request_error.error if request_error is not None else None,
        retry_after=request_error.retry_after if request_error is not None else None,
        request_failed=request_error is not None,
        sink_errors=sink_errors,
        sinks_written=sinks_written,
    )
