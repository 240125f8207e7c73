"""tokend's own memory on disk: the token cache, so a restart or a second ``tokend fetch``
reuses a valid token instead of asking the identity provider again.

Entries are keyed by what makes a token interchangeable (endpoint, client, scope, extra
parameters, the client certificate's thumbprint), not by credential name, so renaming a
credential keeps its token and two credentials that ask for the same thing share one.
Files are 0600 in a 0700 directory: they hold refresh tokens.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.config import IDENTITY_FIELDS, AuthStyle, CredentialConfig, WireFormat
from tokend.core import identity
from tokend.core.tokens import Token
from tokend.io.files import FileLock, ensure_private_dir, sweep_once, write_atomic


def cache_key(cred: CredentialConfig, client_id: str) -> str:
    """The cache key of a validated credential (see :mod:`tokend.core.identity`): the fields
    the schema marks ``identity=True``, in its order, with the client id as read and the
    client certificate by its thumbprint, read now (a certificate replaced on disk is
    another identity: the token bound to the old one is not served for it). Raises
    ConfigError when the certificate cannot be read, as a secret that cannot be."""
    values: dict[str, Any] = {name: getattr(cred, name) for name in IDENTITY_FIELDS}
    values["client_id"] = client_id
    if cred.tls_cert_file is not None:
        from tokend.io.assertion import certificate_thumbprint

        values["tls_cert_file"] = certificate_thumbprint(cred)
    if cred.dpop_key is not None:
        from tokend.io.dpop import credential_key

        values["dpop_key"] = credential_key(cred).thumbprint  # made now if it is the first use
    for name in ("subject_token", "actor_token", "assertion"):  # by where they come from, not content
        ref = values[name]
        values[name] = None if ref is None else f"{ref.source}:{ref.value}"
    return identity.cache_key(*values.values())


@dataclass(frozen=True)
class CacheEntry:
    token: Token
    # What worked, for request_format / client_auth = "auto": steady state is one request.
    wire: WireFormat | None = None
    auth: AuthStyle | None = None


class StateError(Exception):
    """The state directory cannot be written; tokend still works, it just cannot remember."""


class TokenCache:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / "tokens"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    @contextlib.contextmanager
    def exclusive(self, key: str, *, wait: float) -> Iterator[None]:
        """Hold the identity's lock while deciding and asking: a ``tokend fetch`` or
        ``token`` next to the daemon then finds the token the other just got, instead of
        asking again or sending the same refresh token twice (an IdP with reuse detection
        would revoke the whole family). Without a writable state dir: no lock, no cache."""
        lock = FileLock(self.directory / f"{key}.lock")
        try:
            ensure_private_dir(self.state_dir)
            ensure_private_dir(self.directory)
            held = lock.acquire(wait)
        except OSError:
            held = False
        else:
            if not held:
                import logging

                logging.getLogger("tokend.state").warning(
                    "another tokend has held the lock on %s for %.0fs; going ahead", lock.path, wait
                )
        try:
            yield
        finally:
            if held:
                lock.release()

    def load(self, key: str) -> CacheEntry | None:
        """The cached entry, or None if there is none or it cannot be trusted."""
        path = self.path(key)
        try:
            data: Any = json.loads(path.read_bytes())
            token = Token.from_dict(data.get("token") if isinstance(data, dict) else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            import logging  # rare, and off `tokend token`'s fast path otherwise

            logging.getLogger("tokend.state").warning("ignoring unreadable token cache %s: %s", path, exc)
            return None
        wire, auth = data.get("request_format"), data.get("client_auth")
        return CacheEntry(
            token, wire if wire in ("form", "json") else None, auth if auth in ("basic", "body") else None
        )

    def save(self, key: str, entry: CacheEntry, *, cred: CredentialConfig, client_id: str) -> None:
        record = {
            "version": 1,
            # Not secret, and they tell an operator which file is which.
            "token_url": cred.token_url,
            "client_id": client_id,
            "request_format": entry.wire,
            "client_auth": entry.auth,
            "token": entry.token.to_dict(),
        }
        try:
            ensure_private_dir(self.state_dir)  # 0700 even when the cache is written first
            ensure_private_dir(self.directory)
            sweep_once(self.directory)
            # Atomic, not fsynced: after a power loss the worst case is one more request.
            write_atomic(
                self.path(key), json.dumps(record, indent=1).encode("utf-8"), mode=0o600, durable=False
            )
        except OSError as exc:
            raise StateError(f"cannot write token cache in {self.directory}: {exc.strerror or exc}") from None
