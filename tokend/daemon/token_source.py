"""Where a due credential's next token comes from: the seam between the refresher and fleet mode.

The :class:`Refresher` asks its source before it asks the identity provider. The
standalone source (no ``[fleet]``) always says "ask it yourself" and costs nothing, so a
daemon without fleet mode runs the path it always ran; :class:`tokend.daemon.fleet.Fleet`
answers from Redis (a newer token, or "the leader is on it").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokend.config import CredentialConfig
from tokend.core.fleet import Role
from tokend.core.health import FleetHealth
from tokend.core.tokens import Token


@dataclass(frozen=True, slots=True)
class Offer:
    """The source's answer. ``token``: a newer token, use it and ask nobody. ``follow``:
    another host is getting one, keep ours meanwhile. Neither: ask the identity provider.
    ``waited``: seconds the source made the caller wait (for a leader) before answering,
    so a token asked for afterwards counts its life from after the wait."""

    token: Token | None = None
    follow: bool = False
    waited: float = 0.0


ASK = Offer()


class TokenSource:
    """Standalone: every token comes from this host's own request."""

    def start(self, on_news: Callable[[str], None]) -> None:
        """``on_news(name)``: a credential has news waiting (run it now). Standalone: never."""

    def stop(self) -> None: ...

    def forget(self, name: str) -> None:
        """The credential left the config."""

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        """Asked at every run, under the identity's lock. ``due``: ours needs replacing."""
        return ASK

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        """This host got ``token`` from the identity provider."""

    def failed(self, cred: CredentialConfig, identity: str) -> None:
        """This host's request to the identity provider failed (fleet mode: a leader that
        cannot get a token lets another host try)."""

    def role(self, name: str) -> Role | None:
        """leader/follower/standalone in fleet mode; None without it."""
        return None

    def next_look(self, name: str) -> float | None:
        """When a follower waiting for its leader looks again (wall time), or None."""
        return None

    def health(self) -> FleetHealth | None:
        """The fleet's health for status.json; None without fleet mode."""
        return None

    def warnings(self) -> tuple[str, ...]:
        return ()


STANDALONE = TokenSource()
