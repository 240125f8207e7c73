"""What a config change means for the running daemon, decided without touching anything.

A reload is applied as a diff so that an edit to one credential never costs another one a
request, and an edit that only moves sinks costs the identity provider nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from tokend.config.schema import REFETCH_FIELDS, CredentialConfig

# Changing any of these may change which token the identity provider gives, or whether it
# gives one at all: the credential is fetched again at once. The schema says which they are
# (``refetch=True``); the rest (sinks, on_rotate, refresh_at, min_ttl_margin, provider,
# source) change where the token goes or when the next one is asked for, not the token.
TOKEN_FIELDS = REFETCH_FIELDS


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    refetch: tuple[str, ...] = ()  # a different token is needed: ask now, keep the old meanwhile
    resink: tuple[str, ...] = ()  # same token, other sinks/hooks/timing: no request
    unchanged: tuple[str, ...] = ()

    def summary(self) -> str:
        counts = [
            (len(self.added), "added"),
            (len(self.removed), "removed"),
            (len(self.refetch), "to refetch"),
            (len(self.resink), "with new sinks or timing"),
            (len(self.unchanged), "unchanged"),
        ]
        return ", ".join(f"{n} {label}" for n, label in counts if n) or "no credentials"


def token_changed(old: CredentialConfig, new: CredentialConfig) -> bool:
    return any(getattr(old, name) != getattr(new, name) for name in TOKEN_FIELDS)


def plan_reload(
    old: Mapping[str, CredentialConfig],
    new: Mapping[str, CredentialConfig],
    changed_files: Set[Path] = frozenset(),
) -> ReloadPlan:
    """``changed_files``: secret and env files whose content changed (a rotated secret).

    A template file is not among what a token depends on: its text is in its sink's
    config, read at load, so an edit to it makes the sink differ and is a re-sink, which
    renders the current token again with no request."""
    added, removed, refetch, resink, unchanged = [], [], [], [], []
    for name in old:
        if name not in new:
            removed.append(name)
    for name, cred in new.items():
        before = old.get(name)
        if before is None:
            added.append(name)
        elif token_changed(before, cred) or not cred.files().isdisjoint(changed_files):
            refetch.append(name)
        elif before != cred:
            resink.append(name)
        else:
            unchanged.append(name)
    return ReloadPlan(tuple(added), tuple(removed), tuple(refetch), tuple(resink), tuple(unchanged))
