"""Parse and validate ``tokend.toml`` into the frozen values of :mod:`tokend.config.schema`.

The schema reads every key it can by itself; this module does what one key cannot say: the
provider presets, where secrets live, the extra parameters, the metrics address, the nesting
of sinks and hooks, the checks across keys and the safety of sink paths. Everything an
operator can get wrong is caught here, before any request or write, and reported as one
:class:`ConfigError` that names the file, the credential and the key: the daemon must be
able to reject a bad edit and keep running on the last good config. Secrets are only
*located* here (see :mod:`tokend.io.secret_sources`), never read, so that loading a config
costs no more than parsing it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tokend.config.kinds import (
    ENV_NAME_RE,
    NAME_RE,
    READERS,
    TABLE_READERS,
    Refused,
    check_token_url,
    default_env_name,
    kind_of,
    quoted_key,
    shown,
    string,
)
from tokend.config.schema import (
    CREDENTIAL_KEYS,
    FLEET_KEYS,
    GLOBAL_KEYS,
    HOOK_KEYS,
    KEY_AUTHS,
    ROOT_KEYS,
    SECRET_SUFFIXES,
    SINK_KEYS,
    Config,
    CredentialConfig,
    FleetConfig,
    HookConfig,
    SecretRef,
    SinkConfig,
    schema,
    secret_keys,
)
from tokend.core.templates import MAX_TEMPLATE_BYTES, TemplateError
from tokend.core.templates import check as check_template
from tokend.io.files import (
    OpenedFile,
    UnreadableFile,
    kernel_file,
    read_regular,
    read_small,
    trusted_uids,
    unsafe_directory_chain,
    untrusted_writer,
)

MAX_CONFIG_BYTES = 4 * 1024 * 1024

PRESETS: Mapping[str, Mapping[str, str]] = {
    # EventBookings' identity server takes a JSON body with the client in it.
    "eventbookings": {
        "token_url": "https://identity.eventbookings.com/connect/token",
        "request_format": "json",
        "client_auth": "body",
    },
}


# The keys of client_auth = "private_key_jwt" alone.
KEY_JWT_KEYS = ("private_key_file", "private_key_credential", "key_id", "signing_alg", "assertion_audience")


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


class _Parser:
    """Walks the TOML tree; every error it raises carries the file and the dotted key."""

    def __init__(self, file: Path, environ: Mapping[str, str], file_mode: int | None = None) -> None:
        self.file = file
        self.file_mode = file_mode  # of the file the text was read from (its descriptor's)
        self.base = file.parent
        self.environ = environ
        self.warnings: list[str] = []

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(self.file, message, where=where)

    def table(self, value: object, where: str, known: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, not {kind_of(value)}")
        known = tuple(known)
        for key in value:
            if key not in known:
                import difflib  # only on the way to an error

                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                prefix = f"{where}." if where else ""
                raise self.fail(f"{prefix}{quoted_key(key)}", f"unknown key{hint}")
        return value

    def values(self, cls: type, tbl: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Every field of ``cls`` that the schema reads by itself, from the keys ``tbl``
        gives; a key left out is left out, and the field takes its declared default."""
        found: dict[str, Any] = {}
        for spec in schema(cls):
            if spec.kind in TABLE_READERS:
                try:
                    found[spec.field] = TABLE_READERS[spec.kind](tbl, spec, where)
                except Refused as exc:
                    raise self.fail(exc.where, exc.message) from None
                continue
            read = READERS.get(spec.kind)
            if read is None or not spec.keys:
                continue
            name = spec.keys[0]
            if name not in tbl:
                if spec.required:
                    raise self.fail(f"{where}.{name}", "is required")
                continue
            try:
                value = read(tbl[name], spec)
            except ValueError as exc:
                raise self.fail(f"{where}.{name}", str(exc)) from None
            found[spec.field] = self.resolve(value, f"{where}.{name}") if spec.kind == "path" else value
        return found

    def string(self, tbl: Mapping[str, Any], key: str, where: str) -> str | None:
        if key not in tbl:
            return None
        try:
            return string(tbl[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None

    def resolve(self, value: str, where: str) -> Path:
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~nosuchuser/x", or "~" with neither a passwd entry nor $HOME
            user = value[1:].split("/", 1)[0]
            who = f"user {user!r}" if user else "this user (no passwd entry, no $HOME)"
            raise self.fail(where, f"cannot expand ~: no home directory for {who}") from None
        # Relative paths are relative to the config file, not to whatever cwd we started in.
        return path if path.is_absolute() else self.base / path

    # ---------------------------------------------------------------- sections

    def config(self, data: dict[str, Any]) -> Config:
        self.table(data, "", ROOT_KEYS)
        glob = self.table(data.get("tokend", {}), "tokend", GLOBAL_KEYS)
        values = self.values(Config, glob, "tokend")
        values.setdefault("state_dir", default_state_dir(self.environ))
        creds_table = data.get("credentials", {})
        if not isinstance(creds_table, dict):
            raise self.fail("credentials", f"must be a table, not {kind_of(creds_table)}")
        credentials = {name: self.credential(name, body) for name, body in creds_table.items()}
        # [fleet] first: its password_file is as protected as a client secret's file.
        fleet = self.fleet(data["fleet"]) if "fleet" in data else None
        check_sink_paths(
            self.file,
            credentials.values(),
            values["state_dir"],
            self.environ,
            values.get("metrics_textfile"),
            fleet=fleet,
        )
        credentials = read_template_files(
            self.file,
            credentials,
            values["state_dir"],
            self.environ,
            values.get("metrics_textfile"),
            fleet=fleet,
        )
        return Config(
            path=self.file,
            credentials=credentials,
            fleet=fleet,
            warnings=tuple(self.warnings),
            **values,
        )

    def fleet(self, body: object) -> FleetConfig:
        """``[fleet]``: the Redis URL must carry no password (it would reach logs and
        ``tokend status``); the password comes from password_file or password_env."""
        tbl = self.table(body, "fleet", FLEET_KEYS)
        fleet = FleetConfig(**self.values(FleetConfig, tbl, "fleet"))
        if (problem := redis_url_problem(fleet.redis_url)) is not None:
            raise self.fail("fleet.redis_url", problem)
        if fleet.password_file is not None and fleet.password_env is not None:
            raise self.fail("fleet.password_env", "conflicts with password_file; set only one")
        if fleet.password_file is not None:
            self.warn_readable(fleet.password_file, "fleet.password_file")
        if fleet.password_env is not None and not ENV_NAME_RE.fullmatch(fleet.password_env):
            raise self.fail(
                "fleet.password_env",
                "is not an environment variable name (the value is not shown: it may be a "
                "password pasted here by mistake)",
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fleet.key_prefix):
            raise self.fail("fleet.key_prefix", "may only use letters, digits, '_', '.' and '-'")
        return fleet

    def credential(self, name: str, body: object) -> CredentialConfig:
        where = f"credentials.{name}"
        if not NAME_RE.fullmatch(name):
            where = f"credentials.{shown(name)}"
            raise self.fail(where, "credential names may only use letters, digits, '_' and '-' (at most 64)")
        tbl = self.table(body, where, CREDENTIAL_KEYS)
        values = self.values(CredentialConfig, tbl, where)
        provider = values.get("provider")
        if provider is not None and provider not in PRESETS:
            raise self.fail(f"{where}.provider", f"unknown provider; known: {', '.join(PRESETS)}")
        preset = dict(PRESETS.get(provider or "", {}))
        if "issuer" in values:  # discovery finds the token endpoint: no preset's, no second one
            if "token_url" in values:
                raise self.fail(f"{where}.token_url", "conflicts with issuer; set only one")
            preset.pop("token_url", None)
        values = {**preset, **values}  # what is set overrides the preset
        if "token_url" not in values and "issuer" not in values:
            raise self.fail(f"{where}.token_url", "is required (or set issuer, or a provider)")
        values.setdefault("token_url", None)
        on_rotate = self.hook(tbl["on_rotate"], f"{where}.on_rotate") if "on_rotate" in tbl else None
        sinks = tbl.get("sink", [])
        if isinstance(sinks, dict):
            sinks = [sinks]
        if not isinstance(sinks, list):
            raise self.fail(f"{where}.sink", "must be an array of tables ([[credentials.NAME.sink]])")
        cred = CredentialConfig(
            name=name,
            source=self.file,
            client_id=self.secret_ref(tbl, "client_id", where),
            client_secret=self.client_secret_ref(tbl, values.get("client_auth", "basic"), where),
            private_key=self.private_key_ref(tbl, where),
            sinks=tuple(self.sink(name, item, f"{where}.sink[{i}]") for i, item in enumerate(sinks)),
            on_rotate=on_rotate,
            **values,
        )
        for name, url in (("token_url", cred.token_url), ("issuer", cred.issuer)):
            try:
                if url is not None:
                    check_token_url(url, allow_insecure_http=cred.allow_insecure_http)
            except ValueError as exc:
                raise self.fail(f"{where}.{name}", str(exc)) from None
        if cred.issuer is not None and ("?" in cred.issuer or "#" in cred.issuer):
            raise self.fail(f"{where}.issuer", "must have no query or fragment (RFC 8414 §2)")
        self.check_key_auth(cred, tbl, where)
        secret_from_env = cred.client_secret is not None and cred.client_secret.source == "env"
        if cred.env_file is not None and secret_from_env:  # it may hold the secret
            self.warn_readable(cred.env_file, f"{where}.env_file")
        return cred

    def client_secret_ref(self, tbl: Mapping[str, Any], client_auth: str, where: str) -> SecretRef | None:
        """Required for the secret-based methods; refused for the key-based ones, whose
        key or certificate is the secret (a secret beside it would never be sent)."""
        if client_auth not in KEY_AUTHS:
            return self.secret_ref(tbl, "client_secret", where)
        for name in secret_keys("client_secret"):
            if name in tbl:
                raise self.fail(
                    f"{where}.{name}", f'is not used with client_auth = "{client_auth}"; remove it'
                )
        return None

    def private_key_ref(self, tbl: Mapping[str, Any], where: str) -> SecretRef | None:
        """``private_key_file`` or ``private_key_credential`` (a PEM key: never inline, never
        in the environment), located here and read at request time."""
        given = [name for name in ("private_key_file", "private_key_credential") if name in tbl]
        if not given:
            return None
        if len(given) > 1:
            raise self.fail(f"{where}.{given[1]}", f"conflicts with {given[0]}; set only one")
        value = self.string(tbl, given[0], where) or ""
        if given[0] == "private_key_file":
            return SecretRef(given[0], "file", str(self.resolve(value, f"{where}.{given[0]}")))
        if "/" in value or value in (".", "..") or not value.isprintable():
            raise self.fail(f"{where}.{given[0]}", "must be a systemd credential name, not a path")
        return SecretRef(given[0], "credential", value)

    def check_key_auth(self, cred: CredentialConfig, tbl: Mapping[str, Any], where: str) -> None:
        """The keys of private_key_jwt and mutual TLS go with their method, and only with it."""
        if cred.client_auth == "private_key_jwt" and cred.private_key is None:
            raise self.fail(f"{where}.private_key_file", 'is required with client_auth = "private_key_jwt"')
        if cred.client_auth != "private_key_jwt":
            for name in KEY_JWT_KEYS:
                if name in tbl:
                    raise self.fail(f"{where}.{name}", 'only applies to client_auth = "private_key_jwt"')
        if cred.client_auth == "tls_client_auth" and cred.tls_cert_file is None:
            raise self.fail(f"{where}.tls_cert_file", 'is required with client_auth = "tls_client_auth"')
        if cred.tls_key_file is not None and cred.tls_cert_file is None:
            raise self.fail(f"{where}.tls_key_file", "needs tls_cert_file (the certificate for this key)")

    def secret_ref(self, tbl: Mapping[str, Any], base: str, where: str) -> SecretRef:
        keys = secret_keys(base)
        given = [key for key in keys if key in tbl]
        if not given:
            raise self.fail(
                f"{where}.{base}", f"is required: set one of {', '.join(keys[:-1])} or {keys[-1]}"
            )
        if len(given) > 1:
            raise self.fail(f"{where}.{given[1]}", f"conflicts with {given[0]}; set only one")
        key = given[0]
        value = self.string(tbl, key, where) or ""
        source = SECRET_SUFFIXES[key.removeprefix(base)]
        if source == "inline" and base == "client_secret":
            self.warn_inline_secret(f"{where}.{key}")
        elif source == "env" and not ENV_NAME_RE.fullmatch(value):
            # Not echoed: what sits here by mistake is most often the secret itself.
            raise self.fail(
                f"{where}.{key}",
                "is not an environment variable name (the value "
                "is not shown: it may be a secret pasted here by mistake)",
            )
        elif source == "file":
            value = str(self.resolve(value, f"{where}.{key}"))
            if base == "client_secret":
                self.warn_readable(Path(value), f"{where}.{key}")
        elif source == "credential" and ("/" in value or value in (".", "..") or not value.isprintable()):
            raise self.fail(f"{where}.{key}", "must be a systemd credential name, not a path")
        return SecretRef(key, source, value)

    def warn_readable(self, path: Path, where: str) -> None:
        """A secret file every local user can read is worth a line at every load (and in
        ``check``); not a refusal: the operator may have reasons (a container's mount)."""
        with contextlib.suppress(OSError):
            mode = path.stat().st_mode
            if stat.S_ISREG(mode) and mode & 0o004:  # anything else is refused when read
                self.warnings.append(
                    f"{self.file}: {where}: {path} holds a secret but is readable by others "
                    f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
                )

    def warn_inline_secret(self, where: str) -> None:
        try:
            mode = self.file.stat().st_mode if self.file_mode is None else self.file_mode
        except OSError:
            return
        if mode & 0o044:
            readers = "others" if mode & 0o004 else "its group"
            self.warnings.append(
                f"{self.file}: {where}: an inline secret sits in a file that "
                f"{readers} can read; chmod 600 it or use client_secret_file"
            )

    def sink(self, credential: str, body: object, where: str) -> SinkConfig:
        tbl = self.table(body, where, SINK_KEYS)
        values = self.values(SinkConfig, tbl, where)
        sink = SinkConfig(**{**values, "path": Path(os.path.normpath(values["path"]))})
        if sink.format == "template" or sink.template is not None or sink.template_file is not None:
            return self.template_sink(replace(sink, credential=credential), where)
        if sink.env_name is not None and sink.format != "env":
            raise self.fail(f"{where}.env_name", f'only applies to format = "env", not {sink.format!r}')
        if sink.format != "env":
            return sink
        env_name = sink.env_name or default_env_name(credential)
        if not ENV_NAME_RE.fullmatch(env_name):
            raise self.fail(f"{where}.env_name", f"{shown(env_name)} is not a valid variable name")
        return sink if env_name == sink.env_name else replace(sink, env_name=env_name)

    def template_sink(self, sink: SinkConfig, where: str) -> SinkConfig:
        """A template sink: one of template and template_file. An inline template is
        checked here; a file is read by :func:`read_template_files`, once every path a
        template must not be is known."""
        if sink.format != "template":
            name = "template" if sink.template is not None else "template_file"
            raise self.fail(f"{where}.{name}", f'only applies to format = "template", not {sink.format!r}')
        if sink.env_name is not None:
            raise self.fail(f"{where}.env_name", f'only applies to format = "env", not {sink.format!r}')
        if sink.template is not None and sink.template_file is not None:
            raise self.fail(f"{where}.template_file", "conflicts with template; set only one")
        if sink.template is None:
            if sink.template_file is None:
                raise self.fail(where, 'format = "template" needs a template or a template_file')
            return sink
        try:
            check_template(sink.template)
        except TemplateError as exc:
            raise self.fail(f"{where}.template", str(exc)) from None
        return replace(sink, template_text=sink.template)

    def hook(self, body: object, where: str) -> HookConfig:
        tbl = self.table(body, where, HOOK_KEYS)
        hook = HookConfig(**self.values(HookConfig, tbl, where))
        if (hook.signal is None) != (hook.pid_file is None):
            missing = "pid_file" if hook.pid_file is None else "signal"
            raise self.fail(f"{where}.{missing}", "signal and pid_file go together")
        if not hook.command and hook.pid_file is None:
            raise self.fail(where, "needs a command, or a pid_file and signal")
        return hook


# A protected file by its real path, and by (st_dev, st_ino) when it exists: a hard link
# to a secret has a path of its own, and only the inode says it is the same file.
Protected = dict[str | tuple[int, int], str]


def protected_files(
    file: Path,
    credentials: Iterable[CredentialConfig],
    environ: Mapping[str, str],
    fleet: FleetConfig | None = None,
) -> Protected:
    """The files tokend reads secrets from, each with what it is (see :func:`protected_as`)."""
    protected: Protected = {}

    def add(path: Path | str, what: str) -> None:
        protected[os.path.realpath(path)] = what
        with contextlib.suppress(OSError, ValueError):
            st = Path(path).stat()
            protected[(st.st_dev, st.st_ino)] = what

    add(file, "the config file")
    for cred in credentials:
        for path in cred.files():
            add(path, f"a file {cred.where('')[:-1]} reads")
        directory = environ.get("CREDENTIALS_DIRECTORY")
        for ref in cred.secret_refs():
            if ref.source == "credential" and directory:
                add(Path(directory) / ref.value, "a systemd credential")
    if fleet is not None and fleet.password_file is not None:
        add(fleet.password_file, "[fleet]'s password_file")
    return protected


def protected_as(protected: Protected, path: Path | str) -> str | None:
    """What a protected file ``path`` is (by its real path, or as a hard link), or None."""
    what = protected.get(os.path.realpath(path))
    if what is None:
        with contextlib.suppress(OSError, ValueError):
            st = Path(path).stat()
            what = protected.get((st.st_dev, st.st_ino))
    return what


def check_sink_paths(
    file: Path,
    credentials: Iterable[CredentialConfig],
    state_dir: Path,
    environ: Mapping[str, str],
    metrics_textfile: Path | None = None,
    *,
    fleet: FleetConfig | None = None,
) -> None:
    """No two files tokend writes (sinks, the metrics textfile) on one path, and none on a
    file tokend reads or keeps for itself: a sink on the secret file would overwrite the
    secret with the access token, a metrics textfile there would do it once a second."""
    credentials = tuple(credentials)
    protected = protected_files(file, credentials, environ, fleet)
    state = os.path.realpath(state_dir)
    seen: dict[str, str] = {}
    for cred in credentials:
        for i, sink in enumerate(cred.sinks):
            where = cred.where(f"sink[{i}].path")
            real = os.path.realpath(sink.path)
            if real in seen:
                raise ConfigError(file, f"{sink.path} is already written by {seen[real]}", where=where)
            if (what := protected_as(protected, sink.path)) is not None:
                raise ConfigError(
                    file,
                    f"{sink.path} is {what}; a sink there would overwrite it with the access token",
                    where=where,
                )
            if real == state or real.startswith(state + os.sep):
                raise ConfigError(file, f"{sink.path} is inside the state directory {state_dir}", where=where)
            seen[real] = where
    if metrics_textfile is not None:
        real = os.path.realpath(metrics_textfile)
        taken = protected_as(protected, metrics_textfile) or (
            f"written by {seen[real]}" if real in seen else None
        )
        if taken is not None:
            raise ConfigError(
                file,
                f"{metrics_textfile} is {taken}; tokend would overwrite it",
                where="tokend.metrics_textfile",
            )


def read_template_files(
    file: Path,
    credentials: Mapping[str, CredentialConfig],
    state_dir: Path,
    environ: Mapping[str, str],
    metrics_textfile: Path | None = None,
    *,
    fleet: FleetConfig | None = None,
) -> dict[str, CredentialConfig]:
    """The credentials with every ``template_file`` read and checked into ``template_text``.

    A template's text goes into a file others read, so it must not be one that holds what
    they must not see (the config, a secret, the token cache, a file tokend writes: the
    placeholders exist so that nothing else can get in) and no one but tokend's user or
    root may be able to change it or redirect it (they would choose what the consumer
    does with the token). Checked before reading, so that a refusal never quotes it.
    """
    protected = protected_files(file, credentials.values(), environ, fleet)
    written = {os.path.realpath(s.path) for c in credentials.values() for s in c.sinks}
    if metrics_textfile is not None:
        written.add(os.path.realpath(metrics_textfile))
    state = os.path.realpath(state_dir)
    read: dict[str, CredentialConfig] = {}
    for name, cred in credentials.items():
        sinks = list(cred.sinks)
        for i, sink in enumerate(sinks):
            if sink.template_file is None:
                continue
            where = cred.where(f"sink[{i}].template_file")
            path = Path(os.path.normpath(sink.template_file))
            try:
                text = _template_text(path, protected, written, state, sink.allow_shared_dir)
            except ValueError as exc:
                raise ConfigError(file, f"{path}: {exc}", where=where) from None
            sinks[i] = replace(sink, template_file=path, template_text=text)
        read[name] = replace(cred, sinks=tuple(sinks)) if sinks != list(cred.sinks) else cred
    return read


def _template_text(path: Path, protected: Protected, written: set[str], state: str, shared: bool) -> str:
    """The checked text of one template file; ValueError says why not.

    Judged on the open descriptor (what it is, where the kernel opened it), then read from
    it: a symlink flipped between a look at the path and the read would otherwise let
    whoever may edit the template render the client secret into the sink."""

    def by_path(real: str, what: str | None) -> str | None:
        if what is not None:
            return f"is {what}; a template there would copy it into the sink"
        if real in written:
            return "is a file tokend writes; a template must be a file of its own"
        if real == state or real.startswith(state + os.sep):
            return "is inside the state directory, which holds refresh tokens"
        return None

    def judge(opened: OpenedFile) -> str | None:
        real = opened.real
        what = protected.get((opened.st.st_dev, opened.st.st_ino)) or protected.get(real)
        if (reason := by_path(real, what)) is not None:
            return reason
        if kernel_file(opened):
            return "is a kernel file, not a template"
        if shared:
            return None
        # Where the path is, and where it led: a symlink into a directory someone else
        # can change would let them swap the target after this check.
        chain = unsafe_directory_chain(path.parent) or unsafe_directory_chain(Path(real).parent)
        owner = untrusted_writer(opened.st, trusted_uids())
        reason = f"directory path is not safe: {chain}" if chain else f"is {owner}" if owner else None
        if reason:
            return (
                f"{reason} (someone else could choose what the sink says; fix the modes, "
                "or set allow_shared_dir = true to accept it)"
            )
        return None

    # First by name, for what need not exist yet (a sink not written so far), then on the
    # open file.
    if (reason := by_path(os.path.realpath(path), protected_as(protected, path))) is not None:
        raise ValueError(reason)
    try:
        raw = read_small(
            path, MAX_TEMPLATE_BYTES, limit_words=f"{MAX_TEMPLATE_BYTES // 1024} KiB", judge=judge
        )
    except UnreadableFile as exc:
        raise ValueError(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"line {line}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ValueError("is empty")
    if "\0" in text:
        raise ValueError(f"line {text.count(chr(10), 0, text.index(chr(0))) + 1}: contains a NUL byte")
    check_template(text)  # a TemplateError is a ValueError: "line N: unknown placeholder ..."
    return text


def parse(
    text: str, file: Path, environ: Mapping[str, str] | None = None, *, file_mode: int | None = None
) -> Config:
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
        return _Parser(file, os.environ if environ is None else environ, file_mode).config(data)
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
    opened: list[OpenedFile] = []  # what was read: its mode decides the inline-secret warning
    try:
        raw = read_regular(path, MAX_CONFIG_BYTES, lambda file: opened.append(file))
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
    return parse(text, path, environ, file_mode=opened[0].st.st_mode if opened else None)


REDIS_HOST_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``[fleet] redis_url``, or None; never the URL's text (a password
    typed in the wrong place must not reach a log). redis-py would let a query string
    override tokend's own settings (``?password=``, ``?socket_timeout=``,
    ``?ssl_cert_reqs=none``), so the only query allowed is ``?db=N``; a user or password
    in the URL is refused (``username`` and ``password_file`` say them). The host, port
    and database are checked here, so ``tokend check`` finds what would crash ``run``."""
    import ipaddress

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not contain whitespace or control characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        return "must be a redis://, rediss:// or unix:// URL"
    rest, _, query = rest.partition("?")
    if "@" in rest:
        # Not echoed: what sits before the @ is most often the password itself.
        return "must not carry a user or password (user:password@); use username and password_file"
    if "#" in url or "%" in url:
        return "must not contain '#' or percent-escapes"
    db = None
    if query:
        name, eq, value = query.partition("=")
        if name != "db" or not eq:
            return "may carry no query but ?db=N (others would override tokend's timeouts, password or TLS)"
        db = value
    if scheme.lower() == "unix":
        if not rest.startswith("/") or rest == "/":
            return "must name the socket's absolute path (unix:///run/redis/redis.sock)"
    else:
        netloc, slash, path = rest.partition("/")
        if slash and path:
            if db is not None:
                return "must give the database once, in the path or as ?db=N"
            db = path
        if netloc.startswith("["):
            host, bracket, after = netloc[1:].partition("]")
            try:
                valid = bool(bracket) and ipaddress.ip_address(host).version == 6
            except ValueError:
                valid = False
            if not valid:
                return "the host in brackets must be an IPv6 address ([::1])"
            if after and not after.startswith(":"):
                return "must be redis://HOST[:PORT][/DB]"
            port = after[1:] if after else None
        else:
            host, colon, port_text = netloc.partition(":")
            port = port_text if colon else None
            if not REDIS_HOST_RE.fullmatch(host):
                return "must name a host (a DNS name, an IPv4 address or [an IPv6 address])"
        if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return "the port must be a number from 1 to 65535"
    if db is not None and not (db.isascii() and db.isdigit() and len(db) <= 9):
        return "the database must be a number (redis://HOST:PORT/0)"
    return None
