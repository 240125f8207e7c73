"""``tokend token NAME`` on a fresh cached token, before anything heavy is imported.

Starting Python costs about 10 ms; loading the validated config (dataclasses, tomllib,
typing, pathlib, argparse) costs three times that. This module answers the common case,
a script asking again for a token the cache already holds, with the standard library's
cheapest parts: ``os``, ``time``, ``json`` and ``hashlib`` (both brought in by
:func:`tokend.core.identity.cache_key`, which gives the key the daemon uses).

It only ever prints what the validated path would print:

- It serves a config only when the validated path has accepted exactly these bytes, under
  the same environment, before: :func:`tokend.cli.memo.remember` (called by ``fetch``,
  ``token`` and ``exec`` after :func:`tokend.config.load` succeeds) leaves the config's digest in the
  state directory (:mod:`tokend.cli.memo` owns that memo), and :func:`fresh_token` gives up
  unless the digest is there. An edit
  that breaks any part of the file therefore goes through the validated path, and exits 78.
- It reads the TOML, the client id, the env file and the cache entry with small readers
  that accept a strict subset of each format and give up on anything else (multi-line or
  escaped strings, dotted keys, quoted values in an env file, a byte-order mark...), and
  repeats the validated path's normalisation (scope, parameters) and freshness rule; the
  tests hold both paths to the same answers. The bounds, the defaults, the presets and the
  duration reader are the validated path's own, from :mod:`tokend.core.limits`.

Giving up (``None``) is always safe: the caller then runs the validated path, which loads
the config, reads the secret and may ask the identity provider.

The validated path's own helpers are in :mod:`tokend.cli.selection`, the TOML reader in
:mod:`tokend.cli.toml_subset`.
"""

# ruff: noqa: PTH109, PTH111, PTH118, PTH120
# (paths as strings and os calls, on purpose: pathlib and its imports cost a few ms)

from __future__ import annotations

import json
import os
import stat
import time

from tokend.cli.memo import vouched
from tokend.cli.toml_subset import CONTROL_CHARACTERS as _CONTROL
from tokend.cli.toml_subset import GiveUp as GiveUp
from tokend.cli.toml_subset import parse_toml as parse_toml
from tokend.core.identity import cache_key
from tokend.core.limits import (
    DEFAULT_EXPIRES_IN,
    DEFAULT_MIN_TTL_MARGIN,
    DEFAULT_REFRESH_AT,
    FUTURE_SLACK,
    MAX_CONFIG_BYTES,
    MAX_EXPIRES_IN,
    MAX_SECRET_BYTES,
    MAX_STRING,
    MAX_TOKEN_CHARS,
    MAX_TTL_MARGIN,
    PRESETS,
    REFRESH_AT_HIGH,
    REFRESH_AT_LOW,
    SECRET_SUFFIXES,
    parse_duration,
)

TYPE_CHECKING = False  # not typing's: importing typing costs as much as the rest of this module
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


# --------------------------------------------------------------------------- the fast path

MAX_CACHE_BYTES = 1024 * 1024  # a cache entry is a few hundred bytes; anything larger: give up
SECRET_KEYS = tuple(f"client_id{suffix}" for suffix in SECRET_SUFFIXES)


def token_request(words: Sequence[str]) -> tuple[str | None, str] | None:
    """``(config or None, NAME)`` when the command line is exactly ``token NAME`` with at
    most one ``-c FILE``, ``--config FILE`` or ``--config=FILE`` before or after NAME;
    anything else (help, ``--``, abbreviations, ``-cFILE``) is argparse's to read."""
    if len(words) < 2 or words[0] != "token":
        return None
    config: str | None = None
    name: str | None = None
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word in ("-c", "--config") and rest and config is None:
            config = rest.pop(0)
            if not config or config.startswith("-"):
                return None
        elif word.startswith("--config=") and config is None:
            config = word.removeprefix("--config=")
            if not config or config.startswith("-"):
                return None
        elif word.startswith("-") or name is not None or not word:
            return None
        else:
            name = word
    return None if name is None else (config, name)


def fresh_token(config: str | None, name: str, environ: Mapping[str, str]) -> str | None:
    """NAME's cached access token while it is fresh, or None to let the validated path
    decide (no memo of this exact config, anything unusual, any error)."""
    try:
        return _fresh_token(config, name, environ)
    except Exception:  # GiveUp, a file that is not there, and whatever else: not sure, so no
        return None


def _fresh_token(config: str | None, name: str, environ: Mapping[str, str]) -> str | None:
    file = absolute(config if config is not None else default_config_path(environ))
    raw = read_regular(file, MAX_CONFIG_BYTES)
    data = parse_toml(decode(raw).removeprefix("\ufeff"))
    state_dir = state_dir_of(data, file, environ)
    if not vouched(state_dir, file, raw, environ):
        raise GiveUp("config not validated as it is now")
    credentials = data.get("credentials")
    if not isinstance(credentials, dict) or not isinstance(credentials.get(name), dict):
        raise GiveUp("no such credential")
    tbl = credentials[name]
    key = credential_key(tbl, file, environ)
    refresh_at, min_ttl_margin = timing(tbl)
    entry = read_regular(os.path.join(state_dir, "tokens", f"{key}.json"), MAX_CACHE_BYTES)
    access, expires_at, obtained_at = cached_entry(entry)
    if is_fresh(expires_at, obtained_at, time.time(), refresh_at, min_ttl_margin):
        return access
    return None


# --------------------------------------------------------------------------- paths and files


def default_config_path(environ: Mapping[str, str]) -> str:
    """As :func:`tokend.config.default_config_path`, as a string."""
    if environ.get("TOKEND_CONFIG"):
        return environ["TOKEND_CONFIG"]
    if environ.get("CONFIGURATION_DIRECTORY"):
        return os.path.join(environ["CONFIGURATION_DIRECTORY"].split(":")[0], "tokend.toml")
    return "/etc/tokend/tokend.toml"


def absolute(path: str) -> str:
    """``str(Path(path).absolute())``: "." and empty parts dropped, ".." kept."""
    if not path or "\0" in path:
        raise GiveUp("no path")
    if not path.startswith("/"):
        cwd = os.getcwd()
        path = cwd + "/" + path if cwd != "/" else "/" + path
    if path.startswith("//") and not path.startswith("///"):
        raise GiveUp("a path starting with exactly two slashes")  # pathlib keeps those
    return "/" + "/".join(part for part in path.split("/") if part and part != ".")


def config_relative(value: object, file: str) -> str:
    """A path as ``tokend.config`` reads one: a non-blank string, "~" expanded, relative
    to the config file's directory."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_STRING or "\0" in value:
        raise GiveUp("not a path")
    if value.startswith("~"):
        value = os.path.expanduser(value)
        if value.startswith("~"):
            raise GiveUp("no home directory")
    return value if value.startswith("/") else os.path.join(os.path.dirname(file), value)


def state_dir_of(data: dict[str, Any], file: str, environ: Mapping[str, str]) -> str:
    glob = data.get("tokend", {})
    if not isinstance(glob, dict):
        raise GiveUp("[tokend] is not a table")
    if "state_dir" in glob:
        return config_relative(glob["state_dir"], file)
    if environ.get("STATE_DIRECTORY"):
        state_dir = environ["STATE_DIRECTORY"].split(":")[0]
    elif environ.get("XDG_STATE_HOME"):
        state_dir = os.path.join(environ["XDG_STATE_HOME"], "tokend")
    else:
        home = os.path.expanduser("~")
        if home.startswith("~"):
            raise GiveUp("no home directory")
        state_dir = os.path.join(home, ".local", "state", "tokend")
    if not state_dir:
        raise GiveUp("empty state directory")
    return state_dir


def read_regular(path: str, limit: int) -> bytes:
    """As :func:`tokend.io.files.read_regular`, but anything over ``limit`` gives up."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GiveUp("not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise GiveUp("too large")
    return data


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GiveUp("not UTF-8") from None


# --------------------------------------------------------------------------- the credential


def credential_key(tbl: dict[str, Any], file: str, environ: Mapping[str, str]) -> str:
    """The cache key of a credential's raw table: as :func:`tokend.io.cache.cache_key` of
    the validated credential with its client id read. A client certificate gives up: its
    thumbprint is part of the key, and reading it needs ``cryptography``."""
    if "tls_cert_file" in tbl:
        raise GiveUp("a client certificate")
    if "dpop" in tbl:  # its key's thumbprint is of the identity, and `token` refuses DPoP anyway
        raise GiveUp("DPoP")
    if "grant_type" in tbl:  # a token exchange's identity counts its subject token's source
        raise GiveUp("a grant_type")
    provider = tbl.get("provider")
    if provider is not None and (not isinstance(provider, str) or provider not in PRESETS):
        raise GiveUp("unknown provider")
    token_url = tbl.get("token_url")
    issuer = tbl.get("issuer")
    if issuer is not None:
        # Discovered endpoint: the issuer, exactly as written, is the identity (and the
        # validated path refuses token_url beside it; a preset's is not used).
        if token_url is not None or not isinstance(issuer, str) or not issuer.strip():
            raise GiveUp("issuer with token_url, or not a string")
    elif token_url is None and provider is not None:
        token_url = PRESETS[provider].get("token_url")
    if issuer is None and (not isinstance(token_url, str) or not token_url.strip()):
        raise GiveUp("no token_url")
    default_expires_in = DEFAULT_EXPIRES_IN
    if "default_expires_in" in tbl:
        default_expires_in = duration(tbl["default_expires_in"])
        if not 0 < default_expires_in <= MAX_EXPIRES_IN:
            raise GiveUp("default_expires_in out of bounds")
    return cache_key(
        token_url, client_id(tbl, file, environ), scope(tbl), params(tbl), default_expires_in, issuer
    )


def scope(tbl: dict[str, Any]) -> tuple[str, ...]:
    value = tbl.get("scope")
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split()
    elif isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        parts = [p for v in value for p in v.split()]
    else:
        raise GiveUp("scope")
    if not parts or not all(p.isprintable() for p in parts):
        raise GiveUp("scope")
    return tuple(parts)


def params(tbl: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """``extra_params``, ``audience`` and ``resource`` as sorted (name, value) pairs."""
    extra = tbl.get("extra_params", {})
    if not isinstance(extra, dict):
        raise GiveUp("extra_params")
    pairs: list[tuple[str, str]] = []
    for key, item in extra.items():
        pairs.extend((key, v) for v in param_values(item))
    for key in ("audience", "resource"):
        if key in tbl:
            if key in extra:
                raise GiveUp("given twice")
            pairs.extend((key, v) for v in param_values(tbl[key]))
    return tuple(sorted(pairs))


def param_values(item: object) -> list[str]:
    items = item if isinstance(item, list) else [item]
    values = []
    for one in items:
        if isinstance(one, bool) or not isinstance(one, str | int | float):
            raise GiveUp("parameter value")
        text = str(one)
        if not text or not text.isprintable():
            raise GiveUp("parameter value")
        values.append(text)
    if not values:
        raise GiveUp("empty parameter")
    return values


def timing(tbl: dict[str, Any]) -> tuple[float, float]:
    """``refresh_at`` and ``min_ttl_margin`` as the validated credential holds them."""
    refresh_at = tbl.get("refresh_at", DEFAULT_REFRESH_AT)
    if not isinstance(refresh_at, float) or not REFRESH_AT_LOW <= refresh_at <= REFRESH_AT_HIGH:
        raise GiveUp("refresh_at")
    margin = DEFAULT_MIN_TTL_MARGIN
    if "min_ttl_margin" in tbl:
        margin = duration(tbl["min_ttl_margin"])
        if margin > MAX_TTL_MARGIN:
            raise GiveUp("min_ttl_margin out of bounds")
    return refresh_at, margin


def duration(value: object) -> float:
    """As the validated path reads one (:func:`tokend.core.limits.parse_duration`)."""
    try:
        return parse_duration(value)
    except ValueError:
        raise GiveUp("duration") from None


def client_id(tbl: dict[str, Any], file: str, environ: Mapping[str, str]) -> str:
    """As :func:`tokend.io.secret_sources.read_secret` for the client id."""
    given = [key for key in SECRET_KEYS if key in tbl]
    if len(given) != 1 or not isinstance(tbl[given[0]], str):
        raise GiveUp("client id")
    key, value = given[0], tbl[given[0]]
    found: str
    if key == "client_id":
        found = value
    elif key == "client_id_env":
        found = ""
        if "env_file" in tbl:
            found = env_file(config_relative(tbl["env_file"], file)).get(value, "")
        if not found:
            found = environ.get(value, "")
    elif key == "client_id_file":
        found = secret_file(config_relative(value, file))
    else:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory or "/" in value or value in (".", ".."):
            raise GiveUp("systemd credential")
        found = secret_file(os.path.join(directory, value))
    if not found:
        raise GiveUp("empty client id")
    return found


def secret_text(path: str) -> str:
    text = decode(read_regular(path, MAX_SECRET_BYTES))
    if text.startswith("\ufeff"):
        raise GiveUp("byte-order mark")  # the validated path warns about it
    return text


def secret_file(path: str) -> str:
    text = secret_text(path).removesuffix("\n").removesuffix("\r")
    if "\n" in text:
        raise GiveUp("more than one line")
    return text


_ENV_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ENV_NAME = _ENV_NAME_START | frozenset("0123456789")
_ENV_VALUE_STOP = frozenset(" \t#'\"\\")


def env_file(path: str) -> dict[str, str]:
    """The plainest dotenv files only: comments, blank lines and ``NAME=value`` with
    nothing to quote, strip or escape in the value (python-dotenv reads those alike)."""
    text = secret_text(path)
    if not text.isascii() or any(c in text for c in _CONTROL):  # \v, \f, \r: dotenv's \s
        raise GiveUp("env file")
    values: dict[str, str] = {}
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if (
            not sep
            or not name
            or name[0] not in _ENV_NAME_START
            or not _ENV_NAME.issuperset(name)
            or not _ENV_VALUE_STOP.isdisjoint(value)
        ):
            raise GiveUp("env file")
        values[name] = value
    return values


# --------------------------------------------------------------------------- the cache entry

_TOKEN_TYPE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%&*+.^_|~-")
_UNSAFE_IN_TOKEN = frozenset("'\"\\$` ")


def cached_entry(raw: bytes) -> tuple[str, float, float]:
    """Access token, expiry and time obtained, as :meth:`tokend.core.tokens.Token.from_dict`
    accepts them from :meth:`tokend.io.cache.TokenCache.load`."""
    data = json.loads(raw)
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, dict):
        raise GiveUp("cache entry")
    access = token.get("access_token")
    if (
        not isinstance(access, str)
        or not 0 < len(access) <= MAX_TOKEN_CHARS
        or not (access.isascii() and access.isprintable())
        or not _UNSAFE_IN_TOKEN.isdisjoint(access)
    ):
        raise GiveUp("access token")
    expires_at, obtained_at = token.get("expires_at"), token.get("obtained_at")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise GiveUp("expires_at")
    if isinstance(obtained_at, bool) or not isinstance(obtained_at, int | float):
        raise GiveUp("obtained_at")
    if expires_at <= obtained_at:
        raise GiveUp("expires before it was obtained")
    token_type = token.get("token_type", "Bearer")
    if not (isinstance(token_type, str) and 0 < len(token_type) <= 64 and _TOKEN_TYPE.issuperset(token_type)):
        raise GiveUp("token type")
    for optional in ("scope", "refresh_token"):
        if token.get(optional) is not None and not isinstance(token.get(optional), str):
            raise GiveUp(optional)
    return access, float(expires_at), float(obtained_at)


def is_fresh(
    expires_at: float, obtained_at: float, now: float, refresh_at: float, min_ttl_margin: float
) -> bool:
    """:func:`tokend.core.policy.is_fresh`, the same arithmetic on the same floats (the
    jitter at zero; a token stamped more than a minute ahead of this clock is not fresh)."""
    lifetime = expires_at - obtained_at
    due = obtained_at + lifetime * refresh_at
    margin = min_ttl_margin if min_ttl_margin < lifetime / 2 else lifetime / 2
    return now < min(due, expires_at - margin) and not obtained_at > now + FUTURE_SLACK
