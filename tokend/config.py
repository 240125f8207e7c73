"""Parse and validate ``tokend.toml`` into frozen dataclasses.

Everything an operator can get wrong is caught here, before any request or write, and
reported as one :class:`ConfigError` that names the file, the credential and the key: the
daemon must be able to reject a bad edit and keep running on the last good config.
Secrets are only *located* here (see :mod:`tokend.secrets`), never read, so that loading a
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

_T = TypeVar("_T")

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: systemd's ``RestartPreventExitStatus=78`` stops the restart loop."""

SinkFormat = Literal["raw", "json", "env", "header"]
RequestFormat = Literal["form", "json", "auto"]
WireFormat = Literal["form", "json"]
ClientAuth = Literal["basic", "body"]
SecretSource = Literal["inline", "env", "file", "credential"]

SINK_FORMATS: tuple[SinkFormat, ...] = ("raw", "json", "env", "header")
REQUEST_FORMATS: tuple[RequestFormat, ...] = ("form", "json", "auto")
CLIENT_AUTHS: tuple[ClientAuth, ...] = ("basic", "body")
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

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODE_RE = re.compile(r"^0?[0-7]{3}$")
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")
SIGNAL_RE = re.compile(r"^(SIG)?[A-Z0-9]+$")

GLOBAL_KEYS = ("state_dir", "log_level", "log_format", "metrics_listen", "metrics_allow_remote",
               "metrics_textfile")
SECRET_KEYS = ("client_id", "client_secret")
CREDENTIAL_KEYS = (
    "provider",
    *(f"{base}{suffix}" for base in SECRET_KEYS for suffix in ("", "_env", "_file", "_credential")),
    "env_file",
    "scope",
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
SINK_KEYS = ("path", "format", "mode", "owner", "group", "env_name", "remove_on_stop")
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
    """Where a client id or secret lives; the value itself is read by ``tokend.secrets``."""

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
        found = {Path(ref.value) for ref in (self.client_id, self.client_secret)
                 if ref.source == "file"}
        if self.env_file is not None:
            found.add(self.env_file)
        return found


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


# --------------------------------------------------------------------------- pure parsers


def parse_duration(value: object) -> float:
    """``"1h30m"``, ``"500ms"`` or an integer of seconds, as seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as \"30s\" or \"1h30m\", not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as \"30s\" or \"1h30m\", not {value!r}")
    text = value.strip().lower()
    match = DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"{value!r} is not a duration; use forms like \"30s\", \"5m\", \"1h30m\"")
    days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_mode(value: object) -> int:
    """File mode from an octal *string*; an integer is refused because TOML reads 0640 as 640."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"must be an octal string such as \"0640\", not the number {value}")
    if not isinstance(value, str) or not MODE_RE.match(value):
        raise ValueError(f"must be an octal string such as \"0640\", not {value!r}")
    mode = int(value, 8)
    if mode & 0o022:
        raise ValueError(f"{value!r} lets group or others write the token; use e.g. \"0640\"")
    if not mode & 0o400:
        raise ValueError(f"{value!r} does not let the owner read the file")
    return mode


def is_loopback_host(host: str) -> bool:
    import ipaddress  # only http:// URLs get here

    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse anything but https, except http to this machine (or when asked explicitly)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials in the URL; use client_id / client_secret")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ValueError(
            f"{url!r} would send the client secret unencrypted; use https "
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
                raise self.fail(f"{prefix}{key}", f"unknown key{hint}")
        return value

    def string(self, tbl: Mapping[str, Any], key: str, where: str) -> str | None:
        value = tbl.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, not {_kind(value)}")
        if not value.strip():
            raise self.fail(f"{where}.{key}", "must not be empty")
        return value

    def choice(self, tbl: Mapping[str, Any], key: str, where: str, choices: Iterable[str]) -> str | None:
        value = self.string(tbl, key, where)
        choices = tuple(choices)
        if value is not None and value not in choices:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def boolean(self, tbl: Mapping[str, Any], key: str, where: str) -> bool | None:
        value = tbl.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, not {_kind(value)}")
        return value

    def duration(
        self, tbl: Mapping[str, Any], key: str, where: str, *, positive: bool = True
    ) -> float | None:
        if key not in tbl:
            return None
        try:
            seconds = parse_duration(tbl[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None
        if positive and seconds <= 0:
            raise self.fail(f"{where}.{key}", "must be longer than zero")
        return seconds

    def path(self, tbl: Mapping[str, Any], key: str, where: str) -> Path | None:
        value = self.string(tbl, key, where)
        if value is None:
            return None
        if "\0" in value:
            raise self.fail(f"{where}.{key}", "must not contain a NUL byte")
        path = Path(value).expanduser()
        # Relative paths are relative to the config file, not to whatever cwd we started in.
        return path if path.is_absolute() else self.base / path

    def owner(self, tbl: Mapping[str, Any], key: str, where: str) -> str | int | None:
        value = tbl.get(key)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise self.fail(f"{where}.{key}", "must not be negative")
            return value
        if isinstance(value, str) and value.strip():
            return int(value) if value.isdigit() else value
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
        self.check_sink_paths_unique(credentials.values())
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
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail("tokend.metrics_listen", f"must be HOST:PORT, not {value!r}")
        host = host.strip("[]") or "127.0.0.1"
        if not allow_remote and not is_loopback_host(host):
            raise self.fail("tokend.metrics_listen",
                            f"{host} is not a loopback address; metrics say which credentials "
                            "exist and when they fail: set metrics_allow_remote = true to mean it")
        return (host, int(port))

    def credential(self, name: str, body: object) -> CredentialConfig:
        where = f"credentials.{name}"
        if not NAME_RE.match(name):
            raise self.fail(where, "credential names may only use letters, digits, '_' and '-'")
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
            min_ttl_margin=_default(self.duration(tbl, "min_ttl_margin", where, positive=False), 60.0),
            default_expires_in=_default(self.duration(tbl, "default_expires_in", where), 3600.0),
            timeout=_default(self.duration(tbl, "timeout", where), 10.0),
            ca_bundle=self.path(tbl, "ca_bundle", where),
            allow_insecure_http=allow_http,
            sinks=tuple(
                self.sink(name, item, f"{where}.sink[{i}]") for i, item in enumerate(sinks_value)
            ),
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
            if not ENV_NAME_RE.match(value):
                raise self.fail(f"{where}.{key}", f"{value!r} is not an environment variable name")
            return SecretRef(key, "env", value)
        if key.endswith("_file"):
            path = self.path(tbl, key, where)
            assert path is not None
            return SecretRef(key, "file", str(path))
        if "/" in value or value in (".", ".."):
            raise self.fail(f"{where}.{key}", "must be a systemd credential name, not a path")
        return SecretRef(key, "credential", value)

    def warn_inline_secret(self, where: str) -> None:
        try:
            mode = self.file.stat().st_mode
        except OSError:
            return
        if mode & 0o044:
            readers = "others" if mode & 0o004 else "its group"
            self.warnings.append(f"{self.file}: {where}: an inline secret sits in a file that "
                                 f"{readers} can read; chmod 600 it or use client_secret_file")

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
        return tuple(parts)

    def extra_params(self, tbl: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
        value = tbl.get("extra_params")
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.fail(f"{where}.extra_params", "must be a table such as { audience = \"…\" }")
        reserved = {"grant_type", "client_id", "client_secret", "refresh_token", "scope"}
        params: list[tuple[str, str]] = []
        for key, item in value.items():
            if key in reserved:
                raise self.fail(f"{where}.extra_params.{key}",
                                "is set by tokend; use the credential's own key")
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.fail(f"{where}.extra_params.{key}",
                                f"must be a string or number, not {_kind(item)}")
            params.append((key, str(item)))
        return tuple(sorted(params))

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
            raise self.fail(f"{where}.env_name", f"only applies to format = \"env\", not {fmt!r}")
        if fmt == "env":
            env_name = env_name or default_env_name(credential)
            if not ENV_NAME_RE.match(env_name):
                raise self.fail(f"{where}.env_name", f"{env_name!r} is not a valid variable name")
        return SinkConfig(
            path=Path(os.path.normpath(path)),
            format=fmt,
            mode=mode,
            owner=self.owner(tbl, "owner", where),
            group=self.owner(tbl, "group", where),
            env_name=env_name,
            remove_on_stop=bool(self.boolean(tbl, "remove_on_stop", where)),
        )

    def hook(self, body: object, where: str) -> HookConfig:
        tbl = self.table(body, where, HOOK_KEYS)
        command = tbl.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise self.fail(f"{where}.command", "must be a list of strings (argv, never a shell line)")
        if command and not command[0]:
            raise self.fail(f"{where}.command", "the program name must not be empty")
        signame = self.string(tbl, "signal", where)
        pid_file = self.path(tbl, "pid_file", where)
        if signame is not None:
            signame = signame.upper()
            signame = signame if signame.startswith("SIG") else f"SIG{signame}"
            if not SIGNAL_RE.match(signame) or signame not in signal.Signals.__members__:
                raise self.fail(f"{where}.signal", f"{signame!r} is not a signal name")
        if (signame is None) != (pid_file is None):
            missing = "pid_file" if pid_file is None else "signal"
            raise self.fail(f"{where}.{missing}", "signal and pid_file go together")
        if not command and pid_file is None:
            raise self.fail(where, "needs a command, or a pid_file and signal")
        return HookConfig(
            command=tuple(command),
            timeout=_default(self.duration(tbl, "timeout", where), 30.0),
            pid_file=pid_file,
            signal=signame,
            pass_token=bool(self.boolean(tbl, "pass_token", where)),
        )

    def check_sink_paths_unique(self, credentials: Iterable[CredentialConfig]) -> None:
        seen: dict[Path, str] = {}
        for cred in credentials:
            for i, sink in enumerate(cred.sinks):
                where = cred.where(f"sink[{i}].path")
                if sink.path in seen:
                    raise self.fail(where, f"{sink.path} is already written by {seen[sink.path]}")
                seen[sink.path] = where


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def parse(text: str, file: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate config text; ``file`` is used for messages and to resolve relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, f"not valid TOML: {exc}") from None
    return _Parser(file, os.environ if environ is None else environ).config(data)


def locate_state_dir(file: Path | str, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory a config names, even when the rest of it is invalid: ``tokend
    status`` must still find the daemon's report when a bad edit was just rejected."""
    environ = os.environ if environ is None else environ
    path = Path(file).absolute()
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("tokend", {}).get("state_dir")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        value = None
    if isinstance(value, str) and value.strip():
        state_dir = Path(value).expanduser()
        return state_dir if state_dir.is_absolute() else path.parent / state_dir
    return default_state_dir(environ)


def load(file: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises :class:`ConfigError` and nothing else."""
    path = Path(file).absolute()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "no such file (set -c FILE or $TOKEND_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text (byte {exc.start})") from None
    return parse(text, path, environ)
