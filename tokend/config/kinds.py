"""How each kind of value in ``tokend.toml`` is read: pure functions from a TOML value to a
field's value, within the bounds its key declares in :mod:`tokend.config.schema`.

Each raises ValueError with the explanation; the parser adds the file and the key. None of
them echoes more than a short, repr'd piece of a value, and never one that may be a secret.
Durations are read by :func:`tokend.core.limits.parse_duration`, the one reader that the fast
path and the command lines share; URLs are checked by :mod:`tokend.config.urls`.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokend.config.schema import Key, Kind, Listen
from tokend.config.urls import host_port_problem, is_loopback_host
from tokend.core.limits import MAX_ID, MAX_STRING, kind_of, parse_duration, shown

# Every pattern is used with fullmatch: `$` also matches before a final "\n", which let
# "api\n" or "FOO\n" through. ASCII digits only: "²".isdigit() is true, int("²") fails.
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CONVENTIONAL_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
MODE_RE = re.compile(r"0?[0-7]{3}")
DIGITS_RE = re.compile(r"[0-9]{1,10}")
SIGNAL_RE = re.compile(r"(SIG)?[A-Z0-9]{1,16}")
OWNER_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?")


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


def _owners(value: object, key: Key) -> tuple[str | int, ...]:
    """Users or groups: one name or id, or a list of them (each read as ``owner`` is)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must not be an empty list; leave it out instead")
    if any(isinstance(item, str) for item in items):
        total = sum(len(item) for item in items if isinstance(item, str))
        if key.high is not None and total > key.high:
            raise ValueError(f"more than {key.high} characters in all")
    if key.high is not None and len(items) > key.high:
        raise ValueError(f"more than {key.high} names in all")
    read = [_owner(item, Key("owner", high=MAX_ID)) for item in items]
    return tuple(dict.fromkeys(read))


def parse_socket_mode(value: object) -> int:
    """A unix socket's mode from an octal string: connecting needs write permission, so
    group write is what "0660" is for; the owner must be able to read and write."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be an octal string such as "0660", not the number {value}')
    if not isinstance(value, str) or not MODE_RE.fullmatch(value):
        raise ValueError(f'must be an octal string such as "0660", not {shown(value)}')
    mode = int(value, 8)
    if mode & 0o600 != 0o600:
        raise ValueError(f"{value!r} does not let the owner read and write the socket")
    if mode & 0o111:
        raise ValueError(f"{value!r} has execute bits, which mean nothing on a socket")
    return mode


def _socket_mode(value: object, key: Key) -> int:
    return parse_socket_mode(value)


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


def _addresses(value: object, key: Key) -> tuple[str, ...]:
    """``["HOST:PORT", ...]``: at least one, at most ``high``, none twice; a refusal names
    the entry by its place, never by its text (a password pasted there)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of "HOST:PORT" strings')
    if not value:
        raise ValueError("must name at least one; leave it out instead")
    if key.high is not None and len(value) > key.high:
        raise ValueError(f"may name at most {key.high:g}")
    for n, entry in enumerate(value, 1):
        if (problem := host_port_problem(entry)) is not None:
            raise ValueError(f"entry {n}: {problem}")
    if len(set(value)) != len(value):
        raise ValueError("names the same address twice")
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
    "owners": _owners,
    "socket_mode": _socket_mode,
    "scope": _scope,
    "argv": _argv,
    "signal": _signal,
    "addresses": _addresses,
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
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
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


# A unix socket's path fits in sockaddr_un's sun_path (108 bytes, its NUL included).
MAX_SOCKET_PATH = 107
# A FileDescriptorName= as systemd allows it (no ':', the separator of LISTEN_FDNAMES), and
# as plain as a credential's name: it appears in logs and errors.
FD_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")


def _address(tbl: Mapping[str, Any], key: Key, where: str) -> Listen:
    """``listen = "unix:/PATH"``, ``"HOST:PORT"`` (loopback unless ``allow_remote = true``),
    or ``"systemd:NAME"``: a socket systemd passes, whose address only the socket unit says
    (``allow_remote`` kept, to judge a TCP one when it is taken)."""
    listen_key, remote_key = key.keys or ("listen", "allow_remote")
    allow_remote = False
    if remote_key in tbl:
        try:
            allow_remote = flag(tbl[remote_key])
        except ValueError as exc:
            raise Refused(f"{where}.{remote_key}", str(exc)) from None
    value = _string_key(tbl, listen_key, where, key.high)
    place = f"{where}.{listen_key}"
    if value is None:
        raise Refused(place, 'is required: "unix:/PATH", "127.0.0.1:PORT" or "systemd:NAME"')
    if value.startswith("systemd:"):
        # A socket systemd passes, matched by its FileDescriptorName=; judged when taken.
        name = value.removeprefix("systemd:")
        if not FD_NAME_RE.fullmatch(name):
            raise Refused(
                place,
                "systemd: must be followed by a socket unit's FileDescriptorName= (letters, digits, "
                f"'.', '_' and '-', at most 255), not {shown(value)}",
            )
        return Listen(fd_name=name, allow_remote=allow_remote)
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        if not path.startswith("/") or path.endswith("/") or not path.isprintable():
            raise Refused(place, f'must be "unix:" and an absolute path, not {shown(value)}')
        if len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
            raise Refused(place, f"is longer than {MAX_SOCKET_PATH} bytes, a unix socket's limit")
        if allow_remote:
            raise Refused(f"{where}.{remote_key}", "only applies to a TCP address, not a unix socket")
        return Listen(path=Path(os.path.normpath(path)))
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise Refused(place, f'must be "unix:/PATH", HOST:PORT or "systemd:NAME", not {shown(value)}')
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host) or (":" in host and not bracketed):
        raise Refused(
            place, f"must name a host (an address, [an IPv6 address] or a name), not {shown(value)}"
        )
    if not allow_remote and not is_loopback_host(host):
        raise Refused(
            place,
            f"{host} is not a loopback address; whoever reaches it could use the tokens: "
            f"set {remote_key} = true to mean it",
        )
    return Listen(host=host, port=int(port))


TABLE_READERS: Mapping[Kind, Callable[[Mapping[str, Any], Key, str], Any]] = {
    "params": _params,
    "listen": _listen,
    "address": _address,
}
"""How the schema reads each of its COMPOSED_KINDS, from several keys of a table (``where``);
they raise :class:`Refused`, naming the key to blame."""


# --------------------------------------------------------------------------- names


def default_env_name(credential: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", credential.upper()) + "_ACCESS_TOKEN"


def quoted_key(key: str) -> str:
    """A TOML key for a dotted place in an error: as is when plain, else quoted, so that a
    key such as "scope\n" cannot break the error's one line."""
    return key if NAME_RE.fullmatch(key) else shown(key)


# --------------------------------------------------------------------------- for messages


def human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.12g}{unit}"
    return f"{seconds:.12g}s"
