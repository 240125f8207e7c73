"""The words tokend reports in: an attempt and its result, a credential's verdict. (Exit
codes are in :mod:`tokend.core.exit_codes`, which the fast path can afford.)

String enums, so that what goes into logs, metrics labels and ``status.json`` is the same
string everywhere and a typo is a NameError rather than a silently new label.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tokend.core.tokens import Token


class Result(StrEnum):
    """How one refresh attempt ended (the ``outcome`` of a ``refresh`` event)."""

    SUCCESS = "success"
    RETRYABLE_ERROR = "retryable_error"  # backoff, then try again
    FATAL_ERROR = "fatal_error"  # a retry cannot fix it: every 5 minutes, and at a reload


class Origin(StrEnum):
    """Where an attempt's token came from."""

    IDP = "idp"  # a new token from the identity provider
    FLEET = "fleet"  # the fleet's leader's token, from Redis
    CACHE = "cache"  # the token kept (the cache's, or the sinks' current one)


class Verdict(StrEnum):
    """A credential's health as readers see it."""

    OK = "ok"
    FAILING = "failing"  # the last attempt failed, but the token in the sinks is still valid
    EXPIRED = "expired"  # no valid token: readers are failing now


@dataclass(frozen=True, slots=True)
class Attempt:
    """One refresh attempt of one credential: the one record that the status file, the
    metrics, the event log, the hooks and ``tokend fetch`` all report from."""

    name: str
    token: Token | None  # what the sinks hold now; None: no valid token at all
    result: Result = Result.SUCCESS
    fetched: bool = False  # a new token came from the identity provider
    origin: Origin = Origin.CACHE  # where the token came from
    waited: float = 0.0  # seconds spent waiting for the fleet's leader before any request
    error: str | None = None  # why it failed, one line, no secret in it
    error_code: str | None = None  # the server's OAuth error code, if it sent one
    retry_after: float | None = None
    request_failed: bool = False  # False with an error: only sinks failed, the token is fine
    sink_errors: tuple[str, ...] = ()
    sinks_written: int = 0
    # Filled in by the daemon once it has decided what comes next:
    duration: float = 0.0
    failures: int = 0  # failed attempts in a row, this one included
    next_at: float | None = None  # wall time of the next attempt

    @property
    def needs_token(self) -> bool:
        """Whether the next attempt is for a new token (else only the sinks are behind)."""
        return self.token is None or self.request_failed
