"""Parse and validate ``tokend.toml`` into frozen dataclasses.

Everything an operator can get wrong is caught here, before any request or write, and
reported as one :class:`ConfigError` that names the file, the credential and the key: the
daemon must be able to reject a bad edit and keep running on the last good config.
Secrets are only *located* here (see :mod:`tokend.io.secret_sources`), never read, so that loading a
config costs no more than parsing it.
"""

from __future__ import annotations

import os
import re
import signal
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from tokend.io.files import read_regular

_T = TypeVar("_T")

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: systemd's ``RestartPreventExitStatus=78`` stops the restart loop."""

SinkFormat = Literal["raw", "json", "env", "header"]
RequestFormat = Literal["form", "json", "auto"]
WireFormat = Literal["form", "json"]
ClientAuth = Literal["basic", "body", "auto"]
AuthStyle = Literal["basic", "body"]
SecretSource = Literal["inline", "env", "file", "credential"]

SINK_FORMATS: tuple[SinkFormat, ...] = ("raw", "json", "env", "header")
REQUEST_FORMATS: tuple[RequestFormat, ...] = ("form", "json", "auto")
CLIENT_AUTHS: tuple[ClientAuth, ...] = ("basic", "body", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

PRESETS: Mapping[str, Mapping[str, str]] = {
    # EventBookings' identity server takes a JSON body with the client in it.
    "eventbookings": {
        "token_url": "https://identity.eventbookings.com/connect/token",
        "request_format": "json",
        "client_auth": "body",
    },
}

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

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_STRING = 8192  # no config value needs more; a megabyte of "scope" is a mistake
MAX_ID = 2**32 - 2  # uid_t/gid_t; 2**32 - 1 is -1, "leave unchanged", to chown
MAX_EXPIRES_IN = 366 * 86400
# Upper bounds of durations: beyond them a value is a typo, not a wish.
MAX_REQUEST_TIMEOUT = 600.0
MAX_TTL_MARGIN = 86400.0
MAX_HOOK_TIMEOUT = 3600.0

GLOBAL_KEYS = (
    "state_dir",
    "log_level",
    "log_format",
    "metrics_listen",
    "metrics_allow_remote",
    "metrics_textfile",
)
SECRET_KEYS = ("client_id", "client_secret")
CREDENTIAL_KEYS = (
    "provider",
    *(f"{base}{suffix}" for base in SECRET_KEYS for suffix in ("", "_env", "_file", "_credential")),
    "env_file",
    "scope",
    "audience",
    "resource",
    "extra_params",
    "token_url",
    "request_format",
    "client_auth",
    "use_refresh_token",
    "refresh_at",
    "min_ttl_margin",
    "default_expires_in",
    "timeout",
    "ca_bundle",
    "allow_insecure_http",
    "sink",
    "on_rotate",
)
SINK_KEYS = ("path", "format", "mode", "owner", "group", "env_name", "remove_on_stop", "allow_shared_dir")
HOOK_KEYS = ("command", "timeout", "pid_file", "signal", "pass_token")


class ConfigError(Exception):
    """A config problem, printed as one line: ``FILE: credentials.NAME.KEY: what is wrong``."""

    def __init__(self, file: Path | str, message: str, *, where: str | None = None) -> None:
        self.file = str(file)
        self.where = where
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{self.file}: {place}{self.message}"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a client id or secret lives; the value itself is read by ``tokend.io.secret_sources``."""

    key: str  # the config key that named it, for error messages: "client_secret_file"
    source: SecretSource
    value: str = field(repr=False)  # inline value, variable name, path or credential name


@dataclass(frozen=True, slots=True)
class SinkConfig:
    path: Path
    format: SinkFormat = "raw"
    mode: int = 0o600
    owner: str | int | None = None
    group: str | int | None = None
    env_name: str | None = None
    remove_on_stop: bool = False
    allow_shared_dir: bool = False  # accept a directory chain others can write (StrictModes off)


@dataclass(frozen=True, slots=True)
class HookConfig:
    command: tuple[str, ...] = ()
    timeout: float = 30.0
    pid_file: Path | None = None
    signal: str | None = None
    pass_token: bool = False


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    name: str
    source: Path  # the config file it came from, for error messages
    token_url: str
    client_id: SecretRef
    client_secret: SecretRef
    provider: str | None = None
    env_file: Path | None = None
    scope: tuple[str, ...] = ()
    # Sorted (name, value) pairs; a name may repeat (RFC 8707: several `resource`). Holds
    # `audience` and `resource` too, whichever key they were given with.
    extra_params: tuple[tuple[str, str], ...] = ()
    request_format: RequestFormat = "form"
    client_auth: ClientAuth = "basic"
    use_refresh_token: bool = True
    refresh_at: float = 0.8
    min_ttl_margin: float = 60.0
    default_expires_in: float = 3600.0
    timeout: float = 10.0
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    sinks: tuple[SinkConfig, ...] = ()
    on_rotate: HookConfig | None = None

    @property
    def scope_string(self) -> str | None:
        return " ".join(self.scope) if self.scope else None

    def where(self, key: str) -> str:
        return f"credentials.{self.name}.{key}"

    def files(self) -> set[Path]:
        """Files whose content this credential's token depends on (watched for changes)."""
        found = {Path(ref.value) for ref in (self.client_id, self.client_secret) if ref.source == "file"}
        if self.env_file is not None:
            found.add(self.env_file)
        return found

    def secret_variables(self) -> set[str]:
        """Environment variables this credential reads a secret from: never for a child."""
        return {ref.value for ref in (self.client_id, self.client_secret) if ref.source == "env"}


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: tuple[str, int] | None = None
    metrics_textfile: Path | None = None
    credentials: Mapping[str, CredentialConfig] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # worth a log line, not a refusal (loading does not log)

    def secret_variables(self) -> frozenset[str]:
        """Every environment variable any credential reads a secret from: no child of
        tokend's (hook or exec) may inherit one."""
        return frozenset(v for cred in self.credentials.values() for v in cred.secret_variables())


# --------------------------------------------------------------------------- pure parsers


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
        raise ValueError(f'must be a duration such as "30s" or "1h30m", not {_kind(value)}')
    text = value.strip().lower()
    match = DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f'{_shown(value)} is not a duration; use forms like "30s", "5m", "1h30m"')
    days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_mode(value: object) -> int:
    """File mode from an octal *string*; an integer is refused because TOML reads 0640 as 640."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be an octal string such as "0640", not the number {value}')
    if not isinstance(value, str) or not MODE_RE.fullmatch(value):
        raise ValueError(f'must be an octal string such as "0640", not {_shown(value)}')
    mode = int(value, 8)
    if mode & 0o022:
        raise ValueError(f'{value!r} lets group or others write the token; use e.g. "0640"')
    if not mode & 0o400:
        raise ValueError(f"{value!r} does not let the owner read the file")
    return mode


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


def default_env_name(credential: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", credential.upper()) + "_ACCESS_TOKEN"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "tokend"
    return Path.home() / ".local" / "state" / "tokend"


def default_config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("TOKEND_CONFIG"):
        return Path(environ["TOKEND_CONFIG"])
    if environ.get("CONFIGURATION_DIRECTORY"):
        return Path(environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "tokend.toml"
    return Path("/etc/tokend/tokend.toml")


# --------------------------------------------------------------------------- the loader


class _Parser:
    """Walks the TOML tree; every error it raises carries the file and the dotted key."""

    def __init__(self, file: Path, environ: Mapping[str, str]) -> None:
        self.file = file
        self.base = file.parent
        self.environ = environ
        self.warnings: list[str] = []

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(self.file, message, where=where)

    def table(self, value: object, where: str, known: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, not {_kind(value)}")
        known = tuple(known)
        for key in value:
            if key not in known:
                import difflib  # only on the way to an error

                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                prefix = f"{where}." if where else ""
                raise self.fail(f"{prefix}{_key(key)}", f"unknown key{hint}")
        return value

    def string(self, tbl: Mapping[str, Any], key: str, where: str) -> str | None:
        value = tbl.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, not {_kind(value)}")
        if not value.strip():
            raise self.fail(f"{where}.{key}", "must not be empty")
        if len(value) > MAX_STRING:
            raise self.fail(f"{where}.{key}", f"is longer than {MAX_STRING} characters")
        if "\0" in value:
            raise self.fail(f"{where}.{key}", "must not contain a NUL byte")
        return value

    def choice(self, tbl: Mapping[str, Any], key: str, where: str, choices: Iterable[str]) -> str | None:
        value = self.string(tbl, key, where)
        choices = tuple(choices)
        if value is not None and value not in choices:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(choices)}; got {_shown(value)}")
        return value

    def boolean(self, tbl: Mapping[str, Any], key: str, where: str) -> bool | None:
        value = tbl.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, not {_kind(value)}")
        return value

    def duration(
        self,
        tbl: Mapping[str, Any],
        key: str,
        where: str,
        *,
        positive: bool = True,
        bound: float = MAX_EXPIRES_IN,
    ) -> float | None:
        if key not in tbl:
            return None
        try:
            seconds = parse_duration(tbl[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None
        if positive and seconds <= 0:
            raise self.fail(f"{where}.{key}", "must be longer than zero")
        if seconds > bound:
            raise self.fail(f"{where}.{key}", f"must be at most {_human(bound)}, got {_human(seconds)}")
        return seconds

    def path(self, tbl: Mapping[str, Any], key: str, where: str) -> Path | None:
        value = self.string(tbl, key, where)
        if value is None:
            return None
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~nosuchuser/x", or "~" with neither a passwd entry nor $HOME
            user = value[1:].split("/", 1)[0]
            who = f"user {user!r}" if user else "this user (no passwd entry, no $HOME)"
            raise self.fail(f"{where}.{key}", f"cannot expand ~: no home directory for {who}") from None
        # Relative paths are relative to the config file, not to whatever cwd we started in.
        return path if path.is_absolute() else self.base / path

    def owner(self, tbl: Mapping[str, Any], key: str, where: str) -> str | int | None:
        value = tbl.get(key)
        if value is None:
            return None
        if isinstance(value, str) and DIGITS_RE.fullmatch(value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_ID:
                raise self.fail(f"{where}.{key}", f"must be an id from 0 to {MAX_ID}, not {value}")
            return value
        if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?", value):
            return value
        if isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"{_shown(value)} is not a user or group name")
        raise self.fail(f"{where}.{key}", f"must be a name or a numeric id, not {_kind(value)}")

    # ---------------------------------------------------------------- sections

    def config(self, data: dict[str, Any]) -> Config:
        self.table(data, "", ("tokend", "credentials"))
        glob = self.table(data.get("tokend", {}), "tokend", GLOBAL_KEYS)
        state_dir = self.path(glob, "state_dir", "tokend") or default_state_dir(self.environ)
        log_level = self.choice(glob, "log_level", "tokend", LOG_LEVELS) or "info"
        log_format = self.choice(glob, "log_format", "tokend", LOG_FORMATS) or "text"
        metrics_listen = self.listen_address(glob)
        metrics_textfile = self.path(glob, "metrics_textfile", "tokend")

        creds_table = data.get("credentials", {})
        if not isinstance(creds_table, dict):
            raise self.fail("credentials", f"must be a table, not {_kind(creds_table)}")
        credentials: dict[str, CredentialConfig] = {}
        for name, body in creds_table.items():
            credentials[name] = self.credential(name, body)
        self.check_sink_paths(credentials.values(), state_dir)
        return Config(
            path=self.file,
            state_dir=state_dir,
            log_level=log_level,
            log_format=log_format,
            metrics_listen=metrics_listen,
            metrics_textfile=metrics_textfile,
            credentials=credentials,
            warnings=tuple(self.warnings),
        )

    def listen_address(self, glob: Mapping[str, Any]) -> tuple[str, int] | None:
        value = self.string(glob, "metrics_listen", "tokend")
        allow_remote = bool(self.boolean(glob, "metrics_allow_remote", "tokend"))
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            raise self.fail("tokend.metrics_listen", f"must be HOST:PORT, not {_shown(value)}")
        host = host.strip("[]") or "127.0.0.1"
        if not allow_remote and not is_loopback_host(host):
            raise self.fail(
                "tokend.metrics_listen",
                f"{host} is not a loopback address; metrics say which credentials "
                "exist and when they fail: set metrics_allow_remote = true to mean it",
            )
        return (host, int(port))

    def credential(self, name: str, body: object) -> CredentialConfig:
        where = f"credentials.{name}"
        if not NAME_RE.fullmatch(name):
            where = f"credentials.{_shown(name)}"
            raise self.fail(where, "credential names may only use letters, digits, '_' and '-' (at most 64)")
        tbl = self.table(body, where, CREDENTIAL_KEYS)

        provider = self.string(tbl, "provider", where)
        if provider is not None and provider not in PRESETS:
            raise self.fail(f"{where}.provider", f"unknown provider; known: {', '.join(PRESETS)}")
        preset = PRESETS.get(provider or "", {})

        token_url = self.string(tbl, "token_url", where) or preset.get("token_url")
        if token_url is None:
            raise self.fail(f"{where}.token_url", "is required (or set a provider)")
        allow_http = bool(self.boolean(tbl, "allow_insecure_http", where))
        try:
            check_token_url(token_url, allow_insecure_http=allow_http)
        except ValueError as exc:
            raise self.fail(f"{where}.token_url", str(exc)) from None

        request_format = self.choice(tbl, "request_format", where, REQUEST_FORMATS)
        client_auth = self.choice(tbl, "client_auth", where, CLIENT_AUTHS)
        refresh_at = tbl.get("refresh_at", 0.8)
        if isinstance(refresh_at, bool) or not isinstance(refresh_at, int | float):
            raise self.fail(f"{where}.refresh_at", f"must be a number, not {_kind(refresh_at)}")
        if not 0.5 <= refresh_at <= 0.95:
            raise self.fail(f"{where}.refresh_at", f"must be between 0.5 and 0.95, got {refresh_at}")

        on_rotate = None
        if "on_rotate" in tbl:
            on_rotate = self.hook(tbl["on_rotate"], f"{where}.on_rotate")
        sinks_value = tbl.get("sink", [])
        if isinstance(sinks_value, dict):
            sinks_value = [sinks_value]
        if not isinstance(sinks_value, list):
            raise self.fail(f"{where}.sink", "must be an array of tables ([[credentials.NAME.sink]])")

        return CredentialConfig(
            name=name,
            source=self.file,
            token_url=token_url,
            provider=provider,
            client_id=self.secret_ref(tbl, "client_id", where),
            client_secret=self.secret_ref(tbl, "client_secret", where),
            env_file=self.path(tbl, "env_file", where),
            scope=self.scope(tbl, where),
            extra_params=self.extra_params(tbl, where),
            request_format=cast(RequestFormat, request_format or preset.get("request_format", "form")),
            client_auth=cast(ClientAuth, client_auth or preset.get("client_auth", "basic")),
            use_refresh_token=_default(self.boolean(tbl, "use_refresh_token", where), True),
            refresh_at=float(refresh_at),
            min_ttl_margin=_default(
                self.duration(tbl, "min_ttl_margin", where, positive=False, bound=MAX_TTL_MARGIN), 60.0
            ),
            default_expires_in=_default(self.duration(tbl, "default_expires_in", where), 3600.0),
            timeout=_default(self.duration(tbl, "timeout", where, bound=MAX_REQUEST_TIMEOUT), 10.0),
            ca_bundle=self.path(tbl, "ca_bundle", where),
            allow_insecure_http=allow_http,
            sinks=tuple(self.sink(name, item, f"{where}.sink[{i}]") for i, item in enumerate(sinks_value)),
            on_rotate=on_rotate,
        )

    def secret_ref(self, tbl: Mapping[str, Any], base: str, where: str) -> SecretRef:
        given = [key for key in (base, f"{base}_env", f"{base}_file", f"{base}_credential") if key in tbl]
        if not given:
            raise self.fail(
                f"{where}.{base}",
                f"is required: set one of {base}, {base}_env, {base}_file or {base}_credential",
            )
        if len(given) > 1:
            raise self.fail(f"{where}.{given[1]}", f"conflicts with {given[0]}; set only one")
        key = given[0]
        value = self.string(tbl, key, where)
        assert value is not None
        if key == base:
            if base == "client_secret":
                self.warn_inline_secret(f"{where}.{key}")
            return SecretRef(key, "inline", value)
        if key.endswith("_env"):
            if not ENV_NAME_RE.fullmatch(value):
                # Not echoed: what sits here by mistake is most often the secret itself.
                raise self.fail(
                    f"{where}.{key}",
                    "is not an environment variable name (the value "
                    "is not shown: it may be a secret pasted here by mistake)",
                )
            return SecretRef(key, "env", value)
        if key.endswith("_file"):
            path = self.path(tbl, key, where)
            assert path is not None
            return SecretRef(key, "file", str(path))
        if "/" in value or value in (".", "..") or not value.isprintable():
            raise self.fail(f"{where}.{key}", "must be a systemd credential name, not a path")
        return SecretRef(key, "credential", value)

    def warn_inline_secret(self, where: str) -> None:
        try:
            mode = self.file.stat().st_mode
        except OSError:
            return
        if mode & 0o044:
            readers = "others" if mode & 0o004 else "its group"
            self.warnings.append(
                f"{self.file}: {where}: an inline secret sits in a file that "
                f"{readers} can read; chmod 600 it or use client_secret_file"
            )

    def scope(self, tbl: Mapping[str, Any], where: str) -> tuple[str, ...]:
        value = tbl.get("scope")
        if value is None:
            return ()
        if isinstance(value, str):
            parts = value.split()
        elif isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            parts = [p for v in value for p in v.split()]
        else:
            raise self.fail(f"{where}.scope", "must be a string or a list of strings")
        if not parts:
            raise self.fail(f"{where}.scope", "must not be empty; leave it out instead")
        if sum(map(len, parts)) > MAX_STRING or not all(p.isprintable() for p in parts):
            raise self.fail(f"{where}.scope", f"must be printable and at most {MAX_STRING} characters")
        return tuple(parts)

    def extra_params(self, tbl: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
        """Every extra body parameter as sorted (name, value) pairs, names repeating for a
        list (RFC 8707 allows several ``resource``). ``audience`` and ``resource`` have keys
        of their own; inside extra_params they are still accepted, as before."""
        value = tbl.get("extra_params", {})
        if not isinstance(value, dict):
            raise self.fail(f"{where}.extra_params", 'must be a table such as { prompt = "none" }')
        reserved = {
            "grant_type",
            "client_id",
            "client_secret",
            "refresh_token",
            "scope",
            "client_assertion",
            "client_assertion_type",
        }
        params: list[tuple[str, str]] = []
        for key, item in value.items():
            if key in reserved:
                raise self.fail(
                    f"{where}.extra_params.{_key(key)}", "is set by tokend; use the credential's own key"
                )
            if key in tbl and key in ("audience", "resource"):
                raise self.fail(f"{where}.extra_params.{key}", f"conflicts with {where}.{key}; set only one")
            if not key or len(key) > 256 or not key.isprintable():
                raise self.fail(f"{where}.extra_params", "parameter names must be printable text")
            params.extend((key, v) for v in self.param_values(item, f"{where}.extra_params.{key}"))
        for key in ("audience", "resource"):
            if key in tbl:
                values = self.param_values(tbl[key], f"{where}.{key}")
                if key == "resource":
                    self.check_resources(values, f"{where}.{key}")
                params.extend((key, v) for v in values)
        if sum(len(k) + len(v) for k, v in params) > MAX_STRING:
            raise self.fail(f"{where}.extra_params", f"more than {MAX_STRING} characters in all")
        return tuple(sorted(params))

    def param_values(self, item: object, where: str) -> list[str]:
        """A parameter's values: one string or number, or a non-empty list of them."""
        items = item if isinstance(item, list) else [item]
        if not items:
            raise self.fail(where, "must not be an empty list; leave it out instead")
        values = []
        for one in items:
            if isinstance(one, bool) or not isinstance(one, str | int | float):
                raise self.fail(where, f"must be a string, a number or a list of them, not {_kind(one)}")
            text = str(one)
            if not text or not text.isprintable():
                raise self.fail(where, "must be non-empty printable text")
            values.append(text)
        return values

    def check_resources(self, values: list[str], where: str) -> None:
        for value in values:  # RFC 8707 §2: an absolute URI without a fragment
            try:
                scheme = urlsplit(value).scheme
            except ValueError:
                scheme = ""
            if not scheme or "#" in value:
                raise self.fail(
                    where, f"{_shown(value)} is not an absolute URI without a fragment (RFC 8707)"
                )

    def sink(self, credential: str, body: object, where: str) -> SinkConfig:
        tbl = self.table(body, where, SINK_KEYS)
        path = self.path(tbl, "path", where)
        if path is None:
            raise self.fail(f"{where}.path", "is required")
        fmt = cast(SinkFormat, self.choice(tbl, "format", where, SINK_FORMATS) or "raw")
        mode = 0o600
        if "mode" in tbl:
            try:
                mode = parse_mode(tbl["mode"])
            except ValueError as exc:
                raise self.fail(f"{where}.mode", str(exc)) from None
        env_name = self.string(tbl, "env_name", where)
        if env_name is not None and fmt != "env":
            raise self.fail(f"{where}.env_name", f'only applies to format = "env", not {fmt!r}')
        if fmt == "env":
            env_name = env_name or default_env_name(credential)
            if not ENV_NAME_RE.fullmatch(env_name):
                raise self.fail(f"{where}.env_name", f"{_shown(env_name)} is not a valid variable name")
        return SinkConfig(
            path=Path(os.path.normpath(path)),
            format=fmt,
            mode=mode,
            owner=self.owner(tbl, "owner", where),
            group=self.owner(tbl, "group", where),
            env_name=env_name,
            remove_on_stop=bool(self.boolean(tbl, "remove_on_stop", where)),
            allow_shared_dir=bool(self.boolean(tbl, "allow_shared_dir", where)),
        )

    def hook(self, body: object, where: str) -> HookConfig:
        tbl = self.table(body, where, HOOK_KEYS)
        command = tbl.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise self.fail(f"{where}.command", "must be a list of strings (argv, never a shell line)")
        if command and not command[0]:
            raise self.fail(f"{where}.command", "the program name must not be empty")
        if any("\0" in c for c in command) or sum(map(len, command)) > MAX_STRING:
            raise self.fail(f"{where}.command", f"must hold no NUL byte and at most {MAX_STRING} characters")
        signame = self.string(tbl, "signal", where)
        pid_file = self.path(tbl, "pid_file", where)
        if signame is not None:
            signame = signame.upper()
            signame = signame if signame.startswith("SIG") else f"SIG{signame}"
            if not SIGNAL_RE.fullmatch(signame) or signame not in signal.Signals.__members__:
                raise self.fail(f"{where}.signal", f"{_shown(signame)} is not a signal name")
        if (signame is None) != (pid_file is None):
            missing = "pid_file" if pid_file is None else "signal"
            raise self.fail(f"{where}.{missing}", "signal and pid_file go together")
        if not command and pid_file is None:
            raise self.fail(where, "needs a command, or a pid_file and signal")
        return HookConfig(
            command=tuple(command),
            timeout=_default(self.duration(tbl, "timeout", where, bound=MAX_HOOK_TIMEOUT), 30.0),
            pid_file=pid_file,
            signal=signame,
            pass_token=bool(self.boolean(tbl, "pass_token", where)),
        )

    def check_sink_paths(self, credentials: Iterable[CredentialConfig], state_dir: Path) -> None:
        """No two sinks on one file, and no sink on a file tokend reads or keeps for itself:
        a sink on the secret file would overwrite the secret with the access token."""
        credentials = tuple(credentials)
        protected: dict[str, str] = {os.path.realpath(self.file): "the config file"}
        for cred in credentials:
            for path in cred.files():
                protected[os.path.realpath(path)] = f"a file {cred.where('')[:-1]} reads"
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            for ref in (cred.client_id, cred.client_secret):
                if ref.source == "credential" and directory:
                    protected[os.path.realpath(Path(directory) / ref.value)] = "a systemd credential"
        state = os.path.realpath(state_dir)
        seen: dict[str, str] = {}
        for cred in credentials:
            for i, sink in enumerate(cred.sinks):
                where = cred.where(f"sink[{i}].path")
                real = os.path.realpath(sink.path)
                if real in seen:
                    raise self.fail(where, f"{sink.path} is already written by {seen[real]}")
                if real in protected:
                    raise self.fail(
                        where,
                        f"{sink.path} is {protected[real]}; a sink there would "
                        "overwrite it with the access token",
                    )
                if real == state or real.startswith(state + os.sep):
                    raise self.fail(where, f"{sink.path} is inside the state directory {state_dir}")
                seen[real] = where


def _shown(value: object, limit: int = 60) -> str:
    """A value fit to quote in a one-line error: repr'd (so "\\n" shows as such) and cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _key(key: str) -> str:
    """A TOML key for a dotted place in an error: as is when plain, else quoted, so that a
    key such as "scope\n" cannot break the error's one line."""
    return key if NAME_RE.fullmatch(key) else _shown(key)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.12g}{unit}"
    return f"{seconds:.12g}s"


def _kind(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def parse(text: str, file: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate config text; ``file`` is used for messages and to resolve relative paths.

    Raises :class:`ConfigError` and nothing else, whatever the text: a daemon reloading a
    bad edit must reject it, never die of it.
    """
    text = text.removeprefix("\ufeff")  # a BOM, as some Windows editors write: harmless
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(file, "not valid TOML: arrays or tables nested too deeply") from None
    try:
        return _Parser(file, os.environ if environ is None else environ).config(data)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(file, "values nested too deeply") from None
    except Exception as exc:  # a case the parser missed must still be a rejection
        raise ConfigError(file, f"cannot be read as a tokend config ({type(exc).__name__})") from None


def locate_state_dir(file: Path | str, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory a config names, even when the rest of it is invalid: ``tokend
    status`` must still find the daemon's report when a bad edit was just rejected."""
    environ = os.environ if environ is None else environ
    path = Path(file).absolute()
    try:
        text = read_regular(path, MAX_CONFIG_BYTES).decode("utf-8").removeprefix("\ufeff")
        value = tomllib.loads(text).get("tokend", {}).get("state_dir")
        if isinstance(value, str) and value.strip() and "\0" not in value:
            state_dir = Path(value).expanduser()
            return state_dir if state_dir.is_absolute() else path.parent / state_dir
    except Exception:  # noqa: S110 (any failure means: fall back to the default)
        pass
    return default_state_dir(environ)


def load(file: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises :class:`ConfigError` and nothing else."""
    path = Path(file).absolute()
    try:
        raw = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(path, "no such file (set -c FILE or $TOKEND_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            path, f"larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB; is this the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start})") from None
    return parse(text, path, environ)
