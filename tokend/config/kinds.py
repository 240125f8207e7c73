"""How each kind of value in ``tokend.toml`` is read: pure functions from a TOML value to a
field's value, within the bounds its key declares in :mod:`tokend.config.schema`.

Each raises ValueError with the explanation; the parser adds the file and the key. None of
them echoes more than a short, repr'd piece of a value, and never one that may be a secret.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from tokend.config.schema import MAX_EXPIRES_IN, MAX_ID, MAX_STRING, Key, Kind

# Every pattern is used with fullmatch: `$` also matches before a final "\n", which let
# "api\n" or "FOO\n" through. ASCII digits only: "²".isdigit() is true, int("²") fails.
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CONVENTIONAL_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
MODE_RE = re.compile(r"0?[0-7]{3}")
DURATION_RE = re.compile(
    r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m(?!s))?(?:([0-9]{1,9})s)?(?:([0-9]{1,9})ms)?"
)
DIGITS_RE = re.compile(r"[0-9]{1,10}")
SIGNAL_RE = re.compile(r"(SIG)?[A-Z0-9]{1,16}")
OWNER_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?")


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
    match = DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f'{shown(value)} is not a duration; use forms like "30s", "5m", "1h30m"')
    days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_mode(value: object) -> int:
    """File mode from an octal *string*; an integer is refused because TOML reads 0640 as 640."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be an octal string such as "0640", not the number {value}')
    if not isinstance(value, str) or not MODE_RE.fullmatch(value):
        raise ValueError(f'must be an octal string such as "0640", not {shown(value)}')
    mode = int(value, 8)
    if mode & 0o022:
        raise ValueError(f'{value!r} lets group or others write the token; use e.g. "0640"')
    if not mode & 0o400:
        raise ValueError(f"{value!r} does not let the owner read the file")
    return mode


# --------------------------------------------------------------------------- one per kind


def string(value: object, high: float | None = MAX_STRING) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {kind_of(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    if high is not None and len(value) > high:
        raise ValueError(f"is longer than {high} characters")
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    return value


def _string(value: object, key: Key) -> str:
    return string(value, key.high)


def _choice(value: object, key: Key) -> str:
    text = string(value, key.high)
    if text not in key.choices:
        raise ValueError(f"must be one of {', '.join(key.choices)}; got {shown(text)}")
    return text


def flag(value: object, key: Key | None = None) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {kind_of(value)}")
    return value


def _number(value: object, key: Key) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {kind_of(value)}")
    low = float("-inf") if key.low is None else key.low
    high = float("inf") if key.high is None else key.high
    if not low <= value <= high:
        raise ValueError(f"must be between {key.low} and {key.high}, got {value}")
    return float(value)


def _duration(value: object, key: Key) -> float:
    seconds = parse_duration(value)
    if key.low is None and seconds <= 0:
        raise ValueError("must be longer than zero")
    if key.low is not None and seconds < key.low:  # a floor above zero ([fleet] lease)
        raise ValueError(
            f"must be between {human(key.low)} and {human(key.high or seconds)}, got {human(seconds)}"
        )
    if key.high is not None and seconds > key.high:
        raise ValueError(f"must be at most {human(key.high)}, got {human(seconds)}")
    return seconds


def _mode(value: object, key: Key) -> int:
    return parse_mode(value)


def _owner(value: object, key: Key) -> str | int:
    if isinstance(value, str) and DIGITS_RE.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        high = MAX_ID if key.high is None else key.high
        if not 0 <= value <= high:
            raise ValueError(f"must be an id from 0 to {high}, not {value}")
        return value
    if isinstance(value, str) and OWNER_NAME_RE.fullmatch(value):
        return value
    if isinstance(value, str):
        raise ValueError(f"{shown(value)} is not a user or group name")
    raise ValueError(f"must be a name or a numeric id, not {kind_of(value)}")


def _scope(value: object, key: Key) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = value.split()
    elif isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        parts = [p for v in value for p in v.split()]
    else:
        raise ValueError("must be a string or a list of strings")
    if not parts:
        raise ValueError("must not be empty; leave it out instead")
    if (key.high is not None and sum(map(len, parts)) > key.high) or not all(p.isprintable() for p in parts):
        raise ValueError(f"must be printable and at most {key.high} characters")
    return tuple(parts)


def _argv(value: object, key: Key) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError("must be a list of strings (argv, never a shell line)")
    if value and not value[0]:
        raise ValueError("the program name must not be empty")
    if any("\0" in c for c in value) or (key.high is not None and sum(map(len, value)) > key.high):
        raise ValueError(f"must hold no NUL byte and at most {key.high} characters")
    return tuple(value)


def _signal(value: object, key: Key) -> str:
    name = string(value, key.high).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if not SIGNAL_RE.fullmatch(name) or name not in signal.Signals.__members__:
        raise ValueError(f"{shown(name)} is not a signal name")
    return name


READERS: Mapping[Kind, Callable[[object, Key], Any]] = {
    "string": _string,
    "url": _string,  # the parser checks it once the preset and allow_insecure_http are known
    "path": _string,  # the parser expands "~" and makes it relative to the config file
    "choice": _choice,
    "flag": flag,
    "number": _number,
    "duration": _duration,
    "mode": _mode,
    "owner": _owner,
    "scope": _scope,
    "argv": _argv,
    "signal": _signal,
}
"""How the schema reads a key of each of its SIMPLE_KINDS by itself."""


# --------------------------------------------------------------------------- from several keys


class Refused(ValueError):
    """A value refused, and the dotted place to blame: a key, or a key inside a key's table."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


# Set by tokend itself: in extra_params they would contradict the credential's own keys.
RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "refresh_token",
        "scope",
        "client_assertion",
        "client_assertion_type",
    }
)


def _params(tbl: Mapping[str, Any], key: Key, where: str) -> tuple[tuple[str, str], ...]:
    """Every extra body parameter as sorted (name, value) pairs, names repeating for a
    list (RFC 8707 allows several ``resource``). ``audience`` and ``resource`` have keys
    of their own; inside extra_params they are still accepted, as before."""
    value = tbl.get("extra_params", {})
    if not isinstance(value, dict):
        raise Refused(f"{where}.extra_params", 'must be a table such as { prompt = "none" }')
    params: list[tuple[str, str]] = []
    for name, item in value.items():
        if name in RESERVED_PARAMS:
            raise Refused(
                f"{where}.extra_params.{quoted_key(name)}", "is set by tokend; use the credential's own key"
            )
        if name in tbl and name in ("audience", "resource"):
            raise Refused(f"{where}.extra_params.{name}", f"conflicts with {where}.{name}; set only one")
        if not name or len(name) > 256 or not name.isprintable():
            raise Refused(f"{where}.extra_params", "parameter names must be printable text")
        params.extend((name, v) for v in _param_values(item, f"{where}.extra_params.{name}"))
    for name in ("audience", "resource"):
        if name in tbl:
            values = _param_values(tbl[name], f"{where}.{name}")
            if name == "resource":
                _check_resources(values, f"{where}.{name}")
            params.extend((name, v) for v in values)
    high = MAX_STRING if key.high is None else key.high
    if sum(len(k) + len(v) for k, v in params) > high:
        raise Refused(f"{where}.extra_params", f"more than {high} characters in all")
    return tuple(sorted(params))


def _param_values(item: object, where: str) -> list[str]:
    """A parameter's values: one string or number, or a non-empty list of them."""
    items = item if isinstance(item, list) else [item]
    if not items:
        raise Refused(where, "must not be an empty list; leave it out instead")
    values = []
    for one in items:
        if isinstance(one, bool) or not isinstance(one, str | int | float):
            raise Refused(where, f"must be a string, a number or a list of them, not {kind_of(one)}")
        text = str(one)
        if not text or not text.isprintable():
            raise Refused(where, "must be non-empty printable text")
        values.append(text)
    return values


def _check_resources(values: list[str], where: str) -> None:
    for value in values:  # RFC 8707 §2: an absolute URI without a fragment
        try:
            scheme = urlsplit(value).scheme
        except ValueError:
            scheme = ""
        if not scheme or "#" in value:
            raise Refused(where, f"{shown(value)} is not an absolute URI without a fragment (RFC 8707)")


def _string_key(tbl: Mapping[str, Any], name: str, where: str, high: float | None) -> str | None:
    if name not in tbl:
        return None
    try:
        return string(tbl[name], high)
    except ValueError as exc:
        raise Refused(f"{where}.{name}", str(exc)) from None


def _listen(tbl: Mapping[str, Any], key: Key, where: str) -> tuple[str, int] | None:
    """``metrics_listen = "HOST:PORT"``: loopback unless ``metrics_allow_remote = true``."""
    value = _string_key(tbl, "metrics_listen", where, key.high)
    allow_remote = False
    if "metrics_allow_remote" in tbl:
        try:
            allow_remote = flag(tbl["metrics_allow_remote"])
        except ValueError as exc:
            raise Refused(f"{where}.metrics_allow_remote", str(exc)) from None
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise Refused(f"{where}.metrics_listen", f"must be HOST:PORT, not {shown(value)}")
    host = host.strip("[]") or "127.0.0.1"
    if not allow_remote and not is_loopback_host(host):
        raise Refused(
            f"{where}.metrics_listen",
            f"{host} is not a loopback address; metrics say which credentials "
            "exist and when they fail: set metrics_allow_remote = true to mean it",
        )
    return (host, int(port))


TABLE_READERS: Mapping[Kind, Callable[[Mapping[str, Any], Key, str], Any]] = {
    "params": _params,
    "listen": _listen,
}
"""How the schema reads each of its COMPOSED_KINDS, from several keys of a table (``where``);
they raise :class:`Refused`, naming the key to blame."""


# --------------------------------------------------------------------------- URLs and names


def is_loopback_host(host: str) -> bool:
    import ipaddress  # only http:// URLs get here

    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse anything but https, except http to this machine (or when asked explicitly)."""
    if "@" in url.split("?", 1)[0].split("#", 1)[0]:
        # Before anything that would echo the URL: "ftp://user:pass@host" must not be shown.
        raise ValueError(
            "must not carry credentials (user:password@) in the URL; use client_id / client_secret"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    # The URL itself is not repeated in these errors: whatever was pasted in it (a secret
    # in place of a port, say) would reach logs and `tokend status`.
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # .port raises on a port out of range
    except ValueError:
        raise ValueError("is not a valid URL (a port that is not a number?)") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ValueError("is not an http(s) URL with a host")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(hostname):
        raise ValueError(
            f"http://{hostname}/… would send the client secret unencrypted; use https "
            "(http is only allowed to loopback hosts, or with allow_insecure_http = true)"
        )


def shown_url(url: str) -> str:
    """A URL as tokend prints it: no user or password, and no query or fragment (a query
    may carry ``client_secret=…``; which parameter is harmless is not ours to guess), an
    ellipsis where they were."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that cannot be shown)"
    host = f"[{host}]" if ":" in host else host
    tail = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{tail}"


def default_env_name(credential: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", credential.upper()) + "_ACCESS_TOKEN"


def quoted_key(key: str) -> str:
    """A TOML key for a dotted place in an error: as is when plain, else quoted, so that a
    key such as "scope\n" cannot break the error's one line."""
    return key if NAME_RE.fullmatch(key) else shown(key)


# --------------------------------------------------------------------------- for messages


def shown(value: object, limit: int = 60) -> str:
    """A value fit to quote in a one-line error: repr'd (so "\\n" shows as such) and cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.12g}{unit}"
    return f"{seconds:.12g}s"


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
