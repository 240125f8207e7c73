"""Parse and validate ``tokend.toml`` into the frozen values of :mod:`tokend.config.schema`.

The schema reads every key it can by itself; this module does what one key cannot say: the
provider presets, where secrets live, the nesting of sinks and hooks and the checks across
keys; the files the config names are judged by :mod:`tokend.config.file_checks`, its URLs
by :mod:`tokend.config.urls`. Everything an
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

from tokend.config.errors import ConfigError
from tokend.config.file_checks import (
    check_sink_paths,
    check_socket_paths,
    read_config,
    read_config_and_mode,
    read_template_files,
)
from tokend.config.kinds import (
    ENV_NAME_RE,
    NAME_RE,
    READERS,
    TABLE_READERS,
    Refused,
    default_env_name,
    quoted_key,
    string,
)
from tokend.config.paths import default_state_dir
from tokend.config.schema import (
    ACTOR_TOKEN_KEYS,
    ASSERTION_KEYS,
    CLIENT_ASSERTION_KEYS,
    CREDENTIAL_KEYS,
    ENDPOINT_KEYS,
    EXCHANGE_KEYS,
    FLEET_KEYS,
    GLOBAL_KEYS,
    HOOK_KEYS,
    JWT_BEARER_KEYS,
    KEY_JWT_KEYS,
    NO_SECRET_AUTHS,
    PRIVATE_KEY_KEYS,
    PROXY_KEYS,
    ROOT_KEYS,
    SINK_KEYS,
    SUBJECT_TOKEN_KEYS,
    Config,
    CredentialConfig,
    EndpointConfig,
    FleetConfig,
    HookConfig,
    Key,
    Listen,
    ProxyConfig,
    SecretRef,
    SinkConfig,
    schema,
    secret_keys,
)
from tokend.config.urls import check_token_url, redis_url_problem
from tokend.core.dpop import KEY_DIR as DPOP_KEY_DIR
from tokend.core.limits import MAX_CONFIG_BYTES, PRESETS, SECRET_SUFFIXES, kind_of, shown
from tokend.core.templates import TemplateError
from tokend.core.templates import check as check_template


def _preset_values(name: str, preset: Mapping[str, str]) -> dict[str, Any]:
    """A preset (:data:`tokend.core.limits.PRESETS`) as the fields it sets, each value read
    as the schema reads its key: a preset naming a key the schema does not read by itself,
    or a value the key refuses, must not import (errors, not asserts: even under -O)."""
    specs: dict[str, Key] = {spec.keys[0]: spec for spec in schema(CredentialConfig) if spec.keys}
    values: dict[str, Any] = {}
    for key, value in preset.items():
        spec = specs.get(key)
        read = READERS.get(spec.kind) if spec is not None else None
        if spec is None or read is None or spec.kind == "path" or spec.keys != (key,):
            raise TypeError(f"preset {name}: {key} is not a key the schema reads by itself")
        values[spec.field] = read(value, spec)
    return values


PRESET_VALUES: Mapping[str, Mapping[str, Any]] = {
    name: _preset_values(name, preset) for name, preset in PRESETS.items()
}


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
        endpoint = self.endpoint(data["endpoint"]) if "endpoint" in data else None
        for cred in credentials.values() if fleet is not None else ():
            if cred.fleet and cred.client_auth == "none" and cred.private_key is None:
                raise self.fail(
                    cred.where("fleet"),
                    "fleet mode cannot seal tokens for a client without a secret or a key "
                    '(client_auth = "none"); set fleet = false for it',
                )
            if cred.fleet and cred.client_assertion is not None:
                # Nothing to seal with that only the fleet's hosts hold: the platform's JWT
                # rotates, and differs between hosts (tokend.io.fleet_crypto.key_material).
                raise self.fail(
                    cred.where("fleet"),
                    f"fleet mode cannot seal tokens for a credential whose proof is the platform's "
                    f"rotating {cred.client_assertion.key}; set fleet = false for it",
                )
        credentials = {
            name: self.dpop(cred, values["state_dir"], fleet) for name, cred in credentials.items()
        }
        self.check_listeners(values.get("metrics_listen"), endpoint, credentials.values())
        check_socket_paths(
            self.file, endpoint, credentials.values(), values["state_dir"], self.environ, fleet=fleet
        )
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
            endpoint=endpoint,
            warnings=tuple(self.warnings),
            **values,
        )

    def fleet(self, body: object) -> FleetConfig:
        """``[fleet]``: the Redis URL must carry no password (it would reach logs and
        ``tokend status``); the password comes from password_file or password_env."""
        tbl = self.table(body, "fleet", FLEET_KEYS)
        fleet = FleetConfig(**self.values(FleetConfig, tbl, "fleet"))
        if fleet.sentinels is not None:
            self.sentinel(fleet)
        elif fleet.redis_url is None:
            raise self.fail("fleet.redis_url", "is required (or sentinels with service_name)")
        elif (problem := redis_url_problem(fleet.redis_url)) is not None:
            raise self.fail("fleet.redis_url", problem)
        for name in ("service_name", "sentinel_password_file", "sentinel_password_env", "sentinel_username"):
            if fleet.sentinels is None and getattr(fleet, name) is not None:
                raise self.fail(f"fleet.{name}", "applies only with sentinels")
        for prefix in ("", "sentinel_"):
            password_file, password_env = (getattr(fleet, f"{prefix}password_{k}") for k in ("file", "env"))
            if password_file is not None and password_env is not None:
                raise self.fail(
                    f"fleet.{prefix}password_env", f"conflicts with {prefix}password_file; set only one"
                )
            if password_file is not None:
                self.warn_readable(password_file, f"fleet.{prefix}password_file")
            if password_env is not None and not ENV_NAME_RE.fullmatch(password_env):
                raise self.fail(
                    f"fleet.{prefix}password_env",
                    "is not an environment variable name (the value is not shown: it may be a "
                    "password pasted here by mistake)",
                )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fleet.key_prefix):
            raise self.fail("fleet.key_prefix", "may only use letters, digits, '_', '.' and '-'")
        tls = (fleet.redis_url or "").startswith("rediss://")
        for name in ("ca_bundle", "tls_cert_file", "tls_key_file"):
            if getattr(fleet, name) is not None and not tls:
                raise self.fail(f"fleet.{name}", "applies only to a rediss:// redis_url (TLS)")
        if fleet.tls_key_file is not None and fleet.tls_cert_file is None:
            raise self.fail("fleet.tls_key_file", "needs tls_cert_file (the certificate for this key)")
        if fleet.tls_key_file is not None:
            self.warn_readable(fleet.tls_key_file, "fleet.tls_key_file")
        return fleet

    def sentinel(self, fleet: FleetConfig) -> None:
        """``sentinels`` (read by their kind: HOST:PORT each) instead of ``redis_url``, with
        the ``service_name`` they monitor the primary under."""
        if fleet.redis_url is not None:
            raise self.fail("fleet.sentinels", "conflicts with redis_url; set only one")
        if fleet.service_name is None:
            raise self.fail("fleet.service_name", "is required with sentinels")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fleet.service_name):
            raise self.fail("fleet.service_name", "may only use letters, digits, '_', '.' and '-'")

    def endpoint(self, body: object) -> EndpointConfig:
        """``[endpoint]``: the local token endpoint."""
        tbl = self.table(body, "endpoint", ENDPOINT_KEYS)
        endpoint = EndpointConfig(**self.values(EndpointConfig, tbl, "endpoint"))
        self.check_socket_keys(endpoint.listen, tbl, "endpoint")
        return endpoint

    def proxy(self, body: object, where: str, cred_allows_http: bool) -> ProxyConfig:
        """One ``[[credentials.NAME.proxy]]``: its upstream is held to the token URL's rules
        (https, or http to this machine), with no query or fragment: the caller's own path
        and query are appended to it."""
        tbl = self.table(body, where, PROXY_KEYS)
        proxy = ProxyConfig(**self.values(ProxyConfig, tbl, where))
        try:
            check_token_url(proxy.upstream, allow_insecure_http=cred_allows_http)
        except ValueError as exc:
            message = str(exc).replace("the client secret", "the access token")
            raise self.fail(f"{where}.upstream", message) from None
        if "?" in proxy.upstream or "#" in proxy.upstream:
            raise self.fail(f"{where}.upstream", "must have no query or fragment (the caller's are kept)")
        self.check_socket_keys(proxy.listen, tbl, where)
        return proxy

    def check_socket_keys(self, listen: Listen, tbl: Mapping[str, Any], where: str) -> None:
        """The socket's mode, owner and group are tokend's to set only on a socket it binds:
        systemd's ``SocketMode=``, ``SocketUser=`` and ``SocketGroup=`` set a passed one."""
        if listen.path is None:
            for name in ("socket_mode", "socket_owner", "socket_group"):
                if name in tbl:
                    raise self.fail(
                        f"{where}.{name}",
                        "is systemd's to set on a socket it passes (SocketMode=, SocketUser=, "
                        "SocketGroup= in the .socket unit)"
                        if listen.fd_name is not None
                        else 'only applies to a unix socket (listen = "unix:/PATH")',
                    )

    def check_listeners(
        self,
        metrics: tuple[str, int] | None,
        endpoint: EndpointConfig | None,
        credentials: Iterable[CredentialConfig],
    ) -> None:
        """No two of tokend's servers on one address: the second would fail to start, or
        (a unix socket) take the first one's path. A wildcard host takes its port on every
        address. Over TCP, ``endpoint_users`` cannot be enforced: a warning says so."""
        listeners: list[tuple[str, Listen]] = []
        if metrics is not None:
            listeners.append(("tokend.metrics_listen", Listen(host=metrics[0], port=metrics[1])))
        if endpoint is not None:
            listeners.append(("endpoint.listen", endpoint.listen))
        credentials = tuple(credentials)
        for cred in credentials:
            listeners.extend((cred.where(f"proxy[{i}].listen"), p.listen) for i, p in enumerate(cred.proxies))
        seen: list[tuple[str, Listen]] = []
        for where, listen in listeners:
            for other_where, other in seen:
                if same_address(listen, other):
                    raise self.fail(where, f"{listen} is already {other_where}")
            seen.append((where, listen))
        if endpoint is None:
            return
        on_tcp = endpoint.listen.path is None and endpoint.listen.fd_name is None
        on_unix = endpoint.listen.path is not None
        for cred in credentials:
            if on_tcp and (cred.endpoint_users or cred.endpoint_groups):
                key = "endpoint_users" if cred.endpoint_users else "endpoint_groups"
                self.warnings.append(
                    f"{self.file}: {cred.where(key)}: [endpoint] listens on TCP "
                    f"({endpoint.listen}), where a caller's user is not known: it applies only "
                    "on a unix socket"
                    + (
                        "; endpoint_tcp = true lets every local program that passes the guards "
                        "read this credential"
                        if cred.endpoint_tcp
                        else ""
                    )
                )
            if on_unix and cred.endpoint_tcp:
                self.warnings.append(
                    f"{self.file}: {cred.where('endpoint_tcp')}: [endpoint] listens on a unix "
                    f"socket ({endpoint.listen}): endpoint_tcp applies only to a TCP endpoint"
                )
        if on_tcp and not any(cred.endpoint_tcp for cred in credentials):
            self.warnings.append(
                f"{self.file}: endpoint.listen: [endpoint] listens on TCP ({endpoint.listen}) and no "
                "credential says endpoint_tcp = true: it serves only health"
            )

    def credential(self, name: str, body: object) -> CredentialConfig:
        where = f"credentials.{name}"
        if not NAME_RE.fullmatch(name):
            where = f"credentials.{shown(name)}"
            raise self.fail(where, "credential names may only use letters, digits, '_' and '-' (at most 64)")
        tbl = self.table(body, where, CREDENTIAL_KEYS)
        values = self.values(CredentialConfig, tbl, where)
        provider = values.get("provider")
        if provider is not None and provider not in PRESET_VALUES:
            raise self.fail(f"{where}.provider", f"unknown provider; known: {', '.join(PRESET_VALUES)}")
        preset = dict(PRESET_VALUES.get(provider or "", {}))
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
        proxies = tbl.get("proxy", [])
        if isinstance(proxies, dict):
            proxies = [proxies]
        if not isinstance(proxies, list):
            raise self.fail(f"{where}.proxy", "must be an array of tables ([[credentials.NAME.proxy]])")
        allows_http = bool(values.get("allow_insecure_http", False))
        if any(name in tbl for name in CLIENT_ASSERTION_KEYS) and "client_auth" not in tbl:
            values["client_auth"] = "private_key_jwt"  # the platform's JWT is the client's proof
        if values.get("grant_type") == "jwt_bearer" and "client_auth" not in tbl:
            values["client_auth"] = "none"  # RFC 7523 §2.1: the JWT is the proof (Google, Salesforce)
        cred = CredentialConfig(
            name=name,
            source=self.file,
            client_id=self.secret_ref(tbl, "client_id", where),
            private_key=self.key_file_ref(tbl, PRIVATE_KEY_KEYS, where),
            client_assertion=self.key_file_ref(tbl, CLIENT_ASSERTION_KEYS, where),
            subject_token=self.key_file_ref(tbl, SUBJECT_TOKEN_KEYS, where),
            actor_token=self.key_file_ref(tbl, ACTOR_TOKEN_KEYS, where),
            assertion=self.key_file_ref(tbl, ASSERTION_KEYS, where),
            client_secret=self.client_secret_ref(tbl, values.get("client_auth", "basic"), where),
            sinks=tuple(self.sink(name, item, f"{where}.sink[{i}]") for i, item in enumerate(sinks)),
            on_rotate=on_rotate,
            proxies=tuple(
                self.proxy(item, f"{where}.proxy[{i}]", allows_http) for i, item in enumerate(proxies)
            ),
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
        self.check_grant(cred, tbl, where)
        secret_from_env = cred.client_secret is not None and cred.client_secret.source == "env"
        if cred.env_file is not None and secret_from_env:  # it may hold the secret
            self.warn_readable(cred.env_file, f"{where}.env_file")
        return cred

    def dpop(self, cred: CredentialConfig, state_dir: Path, fleet: FleetConfig | None) -> CredentialConfig:
        """A DPoP credential's rules, and the key it uses: ``dpop_key_file``, else the one
        tokend makes in the state directory. A DPoP token is useless without the key, so
        nothing that hands the token itself to a reader is allowed beside it."""
        if not cred.dpop:
            for name in ("dpop_key_file", "dpop_signing_alg", "dpop_allow_bearer", "endpoint_dpop"):
                if getattr(cred, name) not in (None, False):
                    raise self.fail(cred.where(name), "applies only with dpop = true")
            return cred
        if cred.sinks:
            raise self.fail(
                cred.where("sink"),
                "a DPoP-bound token is useless without tokend's key: no file sink for a DPoP "
                "credential; give programs its [[credentials.NAME.proxy]], which makes the proofs",
            )
        if fleet is not None and cred.fleet:
            raise self.fail(
                cred.where("fleet"),
                "DPoP credentials are not shared through [fleet] (their key would have to be); "
                "set fleet = false for it",
            )
        key = cred.dpop_key_file or state_dir / DPOP_KEY_DIR / f"{cred.name}.pem"
        return replace(cred, dpop_key=key)

    def client_secret_ref(self, tbl: Mapping[str, Any], client_auth: str, where: str) -> SecretRef | None:
        """Required for the secret-based methods; refused for the key-based ones, whose
        key or certificate is the secret (a secret beside it would never be sent)."""
        if client_auth not in NO_SECRET_AUTHS:
            return self.secret_ref(tbl, "client_secret", where)
        for name in secret_keys("client_secret"):
            if name in tbl:
                raise self.fail(
                    f"{where}.{name}", f'is not used with client_auth = "{client_auth}"; remove it'
                )
        return None

    def key_file_ref(self, tbl: Mapping[str, Any], keys: tuple[str, ...], where: str) -> SecretRef | None:
        """``private_key_file`` or ``private_key_credential`` (a PEM key), likewise
        ``client_assertion_file`` or ``_credential`` (the platform's JWT): never inline,
        never in the environment, located here and read at request time."""
        given = [name for name in keys if name in tbl]
        if not given:
            return None
        if len(given) > 1:
            raise self.fail(f"{where}.{given[1]}", f"conflicts with {given[0]}; set only one")
        value = self.string(tbl, given[0], where) or ""
        if given[0].endswith("_file"):
            return SecretRef(given[0], "file", str(self.resolve(value, f"{where}.{given[0]}")))
        if "/" in value or value in (".", "..") or not value.isprintable():
            raise self.fail(f"{where}.{given[0]}", "must be a systemd credential name, not a path")
        return SecretRef(given[0], "credential", value)

    def check_key_auth(self, cred: CredentialConfig, tbl: Mapping[str, Any], where: str) -> None:
        """The keys of private_key_jwt and mutual TLS go with their method, and only with it."""
        proofs = (cred.private_key, cred.client_assertion)
        if cred.client_auth == "private_key_jwt" and proofs == (None, None):
            raise self.fail(
                f"{where}.private_key_file",
                'is required with client_auth = "private_key_jwt" (or client_assertion_file)',
            )
        if cred.client_assertion is not None:
            # The platform's JWT is the whole proof: a key beside it would never sign.
            for name in KEY_JWT_KEYS:
                if name in tbl and name not in CLIENT_ASSERTION_KEYS:
                    raise self.fail(
                        f"{where}.{name}", f"conflicts with {cred.client_assertion.key}; set only one"
                    )
        if cred.client_auth != "private_key_jwt" and cred.grant_type != "jwt_bearer":
            for name in KEY_JWT_KEYS:
                if name in tbl:
                    raise self.fail(f"{where}.{name}", 'only applies to client_auth = "private_key_jwt"')
        if cred.client_auth == "tls_client_auth" and cred.tls_cert_file is None:
            raise self.fail(f"{where}.tls_cert_file", 'is required with client_auth = "tls_client_auth"')
        if cred.tls_key_file is not None and cred.tls_cert_file is None:
            raise self.fail(f"{where}.tls_key_file", "needs tls_cert_file (the certificate for this key)")

    def check_grant(self, cred: CredentialConfig, tbl: Mapping[str, Any], where: str) -> None:
        """Token exchange's keys go with it, and it needs its subject token; a public client
        (client_auth = "none") only with it, where the subject token is the proof."""
        if cred.grant_type == "token_exchange":
            if cred.subject_token is None:
                raise self.fail(
                    f"{where}.subject_token_file", 'is required with grant_type = "token_exchange"'
                )
            if "actor_token_type" in tbl and cred.actor_token is None:
                raise self.fail(
                    f"{where}.actor_token_type", "needs actor_token_file (the actor token it types)"
                )
        else:
            for name in EXCHANGE_KEYS:
                if name in tbl:
                    raise self.fail(f"{where}.{name}", 'only applies to grant_type = "token_exchange"')
        if cred.grant_type == "jwt_bearer":
            self.check_jwt_bearer(cred, tbl, where)
        else:
            for name in JWT_BEARER_KEYS:
                if name in tbl:
                    raise self.fail(f"{where}.{name}", 'only applies to grant_type = "jwt_bearer"')
        if cred.client_auth == "none" and cred.grant_type == "client_credentials":
            raise self.fail(
                f"{where}.client_auth",
                '"none" only applies to grant_type = "token_exchange" or "jwt_bearer" (a client '
                "credentials grant needs the client's own proof)",
            )

    def check_jwt_bearer(self, cred: CredentialConfig, tbl: Mapping[str, Any], where: str) -> None:
        """The JWT-bearer grant's JWT comes from a file or from tokend's signature with the
        private key, exactly one; the claims keys go with the signature; and the key signs
        the grant, so it cannot also sign a client assertion."""
        if cred.client_auth == "private_key_jwt":
            raise self.fail(
                f"{where}.client_auth",
                'private_key_jwt cannot go with grant_type = "jwt_bearer": its private key signs the grant '
                '(use "none", or a client secret)',
            )
        if cred.client_assertion is not None:
            raise self.fail(
                f"{where}.{cred.client_assertion.key}",
                "is a client's proof of itself; the JWT-bearer grant's JWT is assertion_file",
            )
        if (cred.assertion is None) == (cred.private_key is None):
            raise self.fail(
                f"{where}.assertion_file",
                'grant_type = "jwt_bearer" needs exactly one of assertion_file (a JWT to send) and '
                "private_key_file (to sign one)",
            )
        if cred.assertion is not None:
            for name in ("assertion_subject", "assertion_scope_claim", "key_id", "signing_alg"):
                if name in tbl:
                    raise self.fail(
                        f"{where}.{name}", f"applies to a JWT tokend signs, not to {cred.assertion.key}"
                    )

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


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})  # noqa: S104 (what a wildcard is, to compare)


def same_address(a: Listen, b: Listen) -> bool:
    """Whether two listeners would take the same address (a wildcard host: any, on its port),
    or the same socket systemd passes (one FileDescriptorName= serves one listener)."""
    if a.fd_name is not None or b.fd_name is not None:
        return a.fd_name == b.fd_name
    if a.path is not None or b.path is not None:
        return (
            a.path is not None and b.path is not None and os.path.normpath(a.path) == os.path.normpath(b.path)
        )
    if a.port != b.port:
        return False
    return a.host.lower() == b.host.lower() or bool({a.host, b.host} & WILDCARD_HOSTS)


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
        text = read_config(path).decode("utf-8").removeprefix("\ufeff")
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
        raw, mode = read_config_and_mode(path)  # the mode decides the inline-secret warning
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
    return parse(text, path, environ, file_mode=mode)
