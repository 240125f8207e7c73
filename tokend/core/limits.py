"""The limits tokend holds values to and the provider presets, each written here and nowhere
else, and the one reader of a duration that applies them.

The schema (:mod:`tokend.config.schema`), the judge of a token answer
(:mod:`tokend.core.token_response`), the policy, ``tokend token``'s fast path
(:mod:`tokend.cli.fastpath`) and the tour's command line (:mod:`tokend.devtools.arguments`)
all import what they bound from here, so that no two of them can drift apart.

Standard library only, and of it only ``re`` (which ``json`` has loaded on the fast path
already): the fast path imports this module before anything heavy.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # not typing's: importing typing costs the fast path more than this module
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Literal

    SecretSource = Literal["inline", "env", "file", "credential"]


# --------------------------------------------------------------------------- bounds

# Beyond them a value is a typo or an attack, not a wish.
MAX_STRING = 8192  # no config value needs more; a megabyte of "scope" is a mistake
MAX_ID = 2**32 - 2  # uid_t/gid_t; 2**32 - 1 is -1, "leave unchanged", to chown
MAX_EXPIRES_IN = 366 * 86400  # the longest duration any key may take, and a token's longest life
MAX_REQUEST_TIMEOUT = 600.0
MAX_TTL_MARGIN = 86400.0
MAX_HOOK_TIMEOUT = 3600.0
MIN_LEASE = 1.0  # [fleet] lease: shorter is renewed more often than a Redis round trip can promise
MAX_LEASE = 3600.0
REFRESH_AT_LOW = 0.5  # refresh_at: the fraction of a token's lifetime after which it is replaced
REFRESH_AT_HIGH = 0.95

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024  # a client id or secret file, an env file
MAX_TOKEN_CHARS = 64 * 1024  # an access token

FUTURE_SLACK = 60.0
"""A cached token stamped more than this many seconds after ``now`` was obtained under a
wall clock that has since been stepped back: its real expiry is unknown, so it is neither
fresh nor valid."""


# --------------------------------------------------------------------------- defaults

DEFAULT_EXPIRES_IN = 3600.0  # a token answer without expires_in (and part of the identity)
DEFAULT_REFRESH_AT = 0.8
DEFAULT_MIN_TTL_MARGIN = 60.0


# --------------------------------------------------------------------------- names

# Where a client id or secret is, by the suffix of the key that names it: client_secret,
# client_secret_env, client_secret_file, client_secret_credential.
SECRET_SUFFIXES: Mapping[str, SecretSource] = {
    "": "inline",
    "_env": "env",
    "_file": "file",
    "_credential": "credential",
}

# provider = "NAME": the keys a preset sets, which the credential's own keys override.
PRESETS: Mapping[str, Mapping[str, str]] = {
    # EventBookings' identity server takes a JSON body with the client in it.
    "eventbookings": {
        "token_url": "https://identity.eventbookings.com/connect/token",
        "request_format": "json",
        "client_auth": "body",
    },
}


# --------------------------------------------------------------------------- durations

# Used with fullmatch. ASCII digits only: "²".isdigit() is true, int("²") fails. Compiled
# on first use (re caches it), not at import: most `tokend token` calls read no duration.
DURATION_PATTERN = (
    r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m(?!s))?(?:([0-9]{1,9})s)?(?:([0-9]{1,9})ms)?"
)


def parse_duration(value: object) -> float:
    """``"1h30m"``, ``"500ms"`` or an integer of seconds, as seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f'must be a duration such as "30s" or "1h30m", not {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        if value > MAX_EXPIRES_IN:
            raise ValueError(f"{value} seconds is over a year; is that a typo?")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f'must be a duration such as "30s" or "1h30m", not {kind_of(value)}')
    text = value.strip().lower()
    match = re.fullmatch(DURATION_PATTERN, text)
    if not text or match is None:
        raise ValueError(f'{shown(value)} is not a duration; use forms like "30s", "5m", "1h30m"')
    days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


def command_line_duration(text: str) -> float:
    """A duration as a command line gives it: :func:`parse_duration`'s forms, or bare ASCII
    digits as seconds (unbounded: the option bounds it). Raises ValueError."""
    return float(text) if text.isascii() and text.isdigit() else parse_duration(text)


# --------------------------------------------------------------------------- for messages


def shown(value: object, limit: int = 60) -> str:
    """A value fit to quote in a one-line error: repr'd (so "\\n" shows as such) and cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def kind_of(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)
