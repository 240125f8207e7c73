"""Discovery: a credential configured by its ``issuer`` learns its token endpoint from the
issuer's metadata (OpenID Connect Discovery, then RFC 8414), kept in the state directory.

The metadata is fetched once and remembered in ``STATE_DIR/discovery/``: every refresh
reads the small file instead of asking the issuer, the daemon, ``tokend fetch`` and
``tokend token`` share it, and it is fetched again when it is a day old or when the token
endpoint it names answers 404 (the IdP moved it). The metadata must be for the configured
issuer exactly (:func:`tokend.core.discovery.parse_metadata`), else a config error; an
issuer that cannot be reached is a retryable failure. Once good metadata is kept, a
refresh that fails either way (unreachable, or an answer refused) leaves it in use, with a
warning: an issuer's bad day must not stop tokens it would still issue.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from tokend.config import ConfigError, CredentialConfig, check_token_url
from tokend.core.discovery import BadMetadata, Discovered, metadata_is_stale, parse_metadata, well_known_urls
from tokend.core.token_response import TokenRequestError

log = logging.getLogger("tokend.discovery")

Get = Callable[[str], tuple[int, bytes]]
"""GET a URL within the credential's timeout: (status, body), or raise TokenRequestError."""

MAX_CACHE_BYTES = 256 * 1024


def cache_path(state_dir: Path, issuer: str) -> Path:
    return state_dir / "discovery" / f"{hashlib.sha256(issuer.encode('utf-8')).hexdigest()[:32]}.json"


def discover(
    cred: CredentialConfig,
    get: Get,
    state_dir: Path | None,
    *,
    now: float,
    refresh: bool = False,
) -> tuple[Discovered, bool]:
    """The issuer's metadata, and whether it was fetched just now. From the cache unless
    it is stale, missing or ``refresh`` is asked for. Raises ConfigError (metadata for
    another issuer, a token endpoint tokend must not use) or TokenRequestError only when
    nothing good is cached: a failed refresh of cached metadata keeps using it."""
    issuer = cred.issuer
    if issuer is None:
        raise ValueError(f"{cred.name} has no issuer")
    cached = _load(cred, state_dir, issuer)
    if cached is not None and not refresh and not metadata_is_stale(cached[1], now):
        return cached[0], False
    try:
        found = fetch(cred, get)
    except (TokenRequestError, ConfigError) as exc:
        # Any failure to refresh, a 4xx or a redirect as much as an outage, or an answer we
        # refuse (another issuer's metadata, an error object served with 200, an endpoint
        # tokend must not use): the metadata we have was judged good, and stays good until
        # the issuer gives better. Refused metadata is never used, nor kept; with nothing
        # cached it is the config error it always was.
        if cached is None:
            raise
        why = exc.message if isinstance(exc, ConfigError) else str(exc)
        log.warning(
            "%s: cannot refresh the metadata of %s (%s); using what was fetched before",
            cred.name,
            issuer,
            why,
        )
        return cached[0], False
    _save(state_dir, issuer, found, now)
    return found, True


def fetch(cred: CredentialConfig, get: Get) -> Discovered:
    """Ask the issuer, at each well-known place in turn, until one holds a JSON object."""
    issuer = cred.issuer
    assert issuer is not None
    failures: list[str] = []
    retryable = False
    for url in well_known_urls(issuer):
        try:
            status, body = get(url)
        except TokenRequestError as exc:
            failures.append(f"{url}: {exc}")
            retryable = retryable or exc.retryable
            continue
        if status != 200:
            failures.append(f"{url}: HTTP {status}")
            retryable = retryable or status >= 500 or status == 429
            continue
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: not metadata
            failures.append(f"{url}: not JSON")
            continue
        return judge(cred, data)
    raise TokenRequestError(
        f"discovery found no metadata for issuer {issuer} ({'; '.join(failures)})", retryable=retryable
    )


def judge(cred: CredentialConfig, data: object) -> Discovered:
    """The metadata, if it is the configured issuer's and names endpoints tokend may use.
    An https issuer's endpoints must be https too, loopback or not: what came over TLS
    must not send the secret over plain http."""
    assert cred.issuer is not None
    secure = cred.issuer.lower().startswith("https://")
    try:
        found = parse_metadata(data, cred.issuer)
        for what, url in (
            ("token_endpoint", found.token_endpoint),
            ("mtls token_endpoint", found.mtls_token_endpoint),
        ):
            if url is not None:
                if secure and not url.lower().startswith("https://"):
                    raise BadMetadata(f"the metadata's {what} is not https, as the issuer is")
                try:
                    check_token_url(url, allow_insecure_http=cred.allow_insecure_http)
                except ValueError as exc:
                    raise BadMetadata(f"the metadata's {what} {exc}") from None
    except BadMetadata as exc:
        raise ConfigError(cred.source, f"discovery refused: {exc}", where=cred.where("issuer")) from None
    return found


def _load(cred: CredentialConfig, state_dir: Path | None, issuer: str) -> tuple[Discovered, float] | None:
    """The cached metadata and when it was fetched, or None. A file that cannot be used
    (tampered, truncated, nested too deep, for metadata no longer acceptable) is removed,
    so that it is fetched again and not read again at every refresh."""
    if state_dir is None:
        return None
    path = cache_path(state_dir, issuer)
    try:
        from tokend.io.files import read_regular

        record = json.loads(read_regular(path, MAX_CACHE_BYTES))
        fetched_at = record["fetched_at"]
        if not isinstance(fetched_at, int | float):
            raise TypeError("fetched_at is not a number")
        return judge(cred, record["metadata"]), float(fetched_at)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError, ConfigError) as exc:
        log.debug("%s: discarding the cached metadata %s: %s", cred.name, path, exc)
        if not isinstance(exc, OSError):  # a file that could not be read may be fine
            with contextlib.suppress(OSError):
                path.unlink()
        return None


def _save(state_dir: Path | None, issuer: str, found: Discovered, now: float) -> None:
    if state_dir is None:
        return
    from tokend.io.files import ensure_private_dir, write_atomic

    path = cache_path(state_dir, issuer)
    record = {"version": 1, "fetched_at": now, "metadata": found.to_dict()}
    try:
        ensure_private_dir(state_dir)
        ensure_private_dir(path.parent)
        write_atomic(path, json.dumps(record, indent=1).encode("utf-8"), mode=0o600, durable=False)
    except OSError as exc:  # it is only a cache: the metadata is fetched again next time
        log.debug("cannot cache the metadata of %s in %s: %s", issuer, path.parent, exc)
