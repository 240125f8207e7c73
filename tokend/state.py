"""tokend's own memory on disk: the token cache, so a restart or a second ``tokend fetch``
reuses a valid token instead of asking the identity provider again.

Entries are keyed by what makes a token interchangeable (endpoint, client, scope, extra
parameters), not by credential name, so renaming a credential keeps its token and two
credentials that ask for the same thing share one. Files are 0600 in a 0700 directory:
they hold refresh tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.config import CredentialConfig, WireFormat
from tokend.fsio import write_atomic
from tokend.token import Token


def cache_key(cred: CredentialConfig, client_id: str) -> str:
    identity = [cred.token_url, client_id, sorted(cred.scope), list(cred.extra_params)]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    token: Token
    wire: WireFormat | None = None  # the body format that worked, for request_format = "auto"


class StateError(Exception):
    """The state directory cannot be written; tokend still works, it just cannot remember."""


class TokenCache:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / "tokens"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> CacheEntry | None:
        """The cached entry, or None if there is none or it cannot be trusted."""
        path = self.path(key)
        try:
            data: Any = json.loads(path.read_bytes())
            token = Token.from_dict(data.get("token") if isinstance(data, dict) else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            import logging  # rare, and off `tokend token`'s fast path otherwise

            logging.getLogger("tokend.state").warning("ignoring unreadable token cache %s: %s",
                                                      path, exc)
            return None
        wire = data.get("request_format")
        return CacheEntry(token, wire if wire in ("form", "json") else None)

    def save(self, key: str, entry: CacheEntry, *, cred: CredentialConfig, client_id: str) -> None:
        record = {
            "version": 1,
            # Not secret, and they tell an operator which file is which.
            "token_url": cred.token_url,
            "client_id": client_id,
            "request_format": entry.wire,
            "token": entry.token.to_dict(),
        }
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Atomic, not fsynced: after a power loss the worst case is one more request.
            write_atomic(self.path(key), json.dumps(record, indent=1).encode("utf-8"), mode=0o600,
                         durable=False)
        except OSError as exc:
            raise StateError(f"cannot write token cache in {self.directory}: "
                             f"{exc.strerror or exc}") from None
