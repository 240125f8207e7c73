"""The schema of tokend.toml, read as a specification.

Every field of every config value is declared once, with its key: the kind of value, the
default, the bounds, whether the field is part of the token's identity (the cache key) and
whether a change on reload asks for a new token. The key lists, the reload's field sets and
the cache key's inputs are derived from those declarations; these tests pin what they say.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokend.config import (
    CREDENTIAL_KEYS,
    GLOBAL_KEYS,
    HOOK_KEYS,
    IDENTITY_FIELDS,
    REFETCH_FIELDS,
    SINK_KEYS,
    Config,
    ConfigError,
    CredentialConfig,
    FleetConfig,
    HookConfig,
    Key,
    SecretRef,
    SinkConfig,
    parse,
    schema,
)
from tokend.config.kinds import READERS, TABLE_READERS
from tokend.config.reload_plan import TOKEN_FIELDS
from tokend.config.schema import (
    COMPOSED_KINDS,
    NO_DEFAULT,
    SIMPLE_KINDS,
    EndpointConfig,
    Listen,
    ProxyConfig,
    config_value,
    key,
    toml_keys,
)
from tokend.core import identity, limits
from tokend.io.cache import cache_key

FILE = Path("/etc/tokend/tokend.toml")
VALUES = (Config, CredentialConfig, SinkConfig, HookConfig, FleetConfig, EndpointConfig, ProxyConfig)
# Each TOML table, the value it becomes, and the smallest valid content of it.
TABLES: dict[str, tuple[type, dict[str, str]]] = {
    "tokend": (Config, {}),
    "credentials.api": (
        CredentialConfig,
        {
            "token_url": '"https://idp.example.com/token"',
            "client_id": '"id"',
            "client_secret_file": '"/etc/tokend/api.secret"',
        },
    ),
    "credentials.api.sink": (SinkConfig, {"path": '"/run/tokend/api.token"'}),
    "credentials.api.on_rotate": (HookConfig, {"command": '["true"]'}),
    "fleet": (FleetConfig, {"redis_url": '"redis://127.0.0.1:6379/0"'}),
    "endpoint": (EndpointConfig, {"listen": '"unix:/run/tokend/tokend.sock"'}),
    "credentials.api.proxy": (
        ProxyConfig,
        {"listen": '"unix:/run/tokend/api.sock"', "upstream": '"https://api.example.com"'},
    ),
}


def render(sections: dict[str, dict[str, str]]) -> str:
    out = []
    for name, body in sections.items():
        out.append(f"[[{name}]]" if name.endswith((".sink", ".proxy")) else f"[{name}]")
        out.extend(f"{k} = {v}" for k, v in body.items())
    return "\n".join(out) + "\n"


def config_with(table: str, name: str, literal: str) -> str:
    """The smallest valid config, with ``name = literal`` in ``table`` (replacing whatever
    else fills the same field: a client_secret_env instead of the client_secret_file)."""
    sections = {t: dict(body) for t, (_, body) in TABLES.items()}
    cls = TABLES[table][0]
    spec = next(s for s in schema(cls) if name in (s.keys or ()))
    for other in spec.keys or ():
        sections[table].pop(other, None)
    sections[table][name] = literal
    return render(sections)


def api() -> CredentialConfig:
    return parse(render({"credentials.api": TABLES["credentials.api"][1]}), FILE, environ={}).credentials[
        "api"
    ]


def specs() -> list[tuple[str, Key]]:
    return [(table, spec) for table, (cls, _) in TABLES.items() for spec in schema(cls)]


# --------------------------------------------------------------------------- declared once


@pytest.mark.parametrize("cls", VALUES, ids=lambda c: c.__name__)
def test_every_field_is_declared_once_with_its_key(cls: type) -> None:
    declared = schema(cls)
    assert [spec.field for spec in declared] == [f.name for f in dataclasses.fields(cls)]
    for spec, f in zip(declared, dataclasses.fields(cls), strict=True):
        assert spec.default == (NO_DEFAULT if f.default is dataclasses.MISSING else f.default)
    keys = toml_keys(cls)
    assert len(keys) == len(set(keys)), f"a key of {cls.__name__} fills two fields"


def test_the_known_keys_of_each_table_are_the_schemas() -> None:
    assert toml_keys(Config) == GLOBAL_KEYS
    assert toml_keys(CredentialConfig) == CREDENTIAL_KEYS
    assert toml_keys(SinkConfig) == SINK_KEYS
    assert toml_keys(HookConfig) == HOOK_KEYS
    # Fields tokend fills itself have no key; the others' keys are their names, except:
    renamed = {
        spec.field: spec.keys
        for cls in VALUES
        for spec in schema(cls)
        if spec.keys != (spec.field,) and spec.kind != "internal"
    }
    assert renamed == {
        "client_id": tuple(f"client_id{s}" for s in ("", "_env", "_file", "_credential")),
        "client_secret": tuple(f"client_secret{s}" for s in ("", "_env", "_file", "_credential")),
        "private_key": ("private_key_file", "private_key_credential"),
        "client_assertion": ("client_assertion_file", "client_assertion_credential"),
        "subject_token": ("subject_token_file", "subject_token_credential"),
        "actor_token": ("actor_token_file", "actor_token_credential"),
        "assertion": ("assertion_file", "assertion_credential"),
        "extra_params": ("audience", "resource", "extra_params"),
        "sinks": ("sink",),
        "metrics_listen": ("metrics_listen", "metrics_allow_remote"),
        "credentials": (),  # the [credentials.NAME] tables, not a key of [tokend]
        "proxies": ("proxy",),
        "listen": ("listen", "allow_remote"),  # [endpoint] and [[credentials.NAME.proxy]]
    }


def test_each_kind_the_schema_reads_by_itself_has_a_reader() -> None:
    assert set(READERS) == SIMPLE_KINDS  # from the one key
    assert set(TABLE_READERS) == COMPOSED_KINDS  # from several keys of the table


def test_a_schema_that_contradicts_itself_does_not_import() -> None:
    with pytest.raises(TypeError, match="not declared with key"):

        @config_value
        class Undeclared:
            x: int = 1

    with pytest.raises(TypeError, match="must refetch"):

        @config_value
        class IdentityWithoutRefetch:
            x: str = key(kind="string", identity=True)

    with pytest.raises(TypeError, match="exactly one key"):

        @config_value
        class TwoKeysForOneString:
            x: str = key(kind="string", keys=("a", "b"))


def test_what_python_O_derives_is_what_python_derives() -> None:
    code = (
        "from tokend.config import CREDENTIAL_KEYS, IDENTITY_FIELDS\n"
        "from tokend.config.schema import config_value\n"
        "from tokend.config.reload_plan import TOKEN_FIELDS\n"
        "print(CREDENTIAL_KEYS, IDENTITY_FIELDS, sorted(TOKEN_FIELDS))\n"
        "try:\n"
        "    config_value(type('Undeclared', (), {'__annotations__': {'x': 'int'}, 'x': 1}))\n"
        "except TypeError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [
        f"{CREDENTIAL_KEYS} {IDENTITY_FIELDS} {sorted(TOKEN_FIELDS)}",
        "Undeclared.x is not declared with key()",
    ]


def test_loading_the_config_imports_nothing_heavy() -> None:
    heavy = "{'requests', 'logging', 'apscheduler', 'watchdog', 'redis', 'cryptography'}"
    code = f"import sys, tokend.config; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- defaults


def test_a_key_left_out_takes_the_default_its_field_declares() -> None:
    config = parse(render({t: body for t, (_, body) in TABLES.items()}), FILE, environ={})
    cred = config.credentials["api"]
    assert cred.on_rotate is not None
    given = {
        Config: config,
        CredentialConfig: cred,
        SinkConfig: cred.sinks[0],
        HookConfig: cred.on_rotate,
        FleetConfig: config.fleet,
        EndpointConfig: config.endpoint,
        ProxyConfig: cred.proxies[0],
    }
    set_here = {name for _, body in TABLES.values() for name in body} | {"sink", "on_rotate", "proxy"}
    for cls, value in given.items():
        for spec in schema(cls):
            if spec.field in ("fleet", "endpoint") and cls is Config:
                continue  # the [fleet] and [endpoint] tables are given here
            if spec.default is not NO_DEFAULT and set_here.isdisjoint(spec.keys or ()):
                assert getattr(value, spec.field) == spec.default, f"{cls.__name__}.{spec.field}"
    assert (cred.refresh_at, cred.min_ttl_margin, cred.timeout) == (0.8, 60.0, 10.0)
    assert cred.default_expires_in == limits.DEFAULT_EXPIRES_IN == 3600.0
    assert (cred.on_rotate.timeout, cred.sinks[0].mode) == (30.0, 0o600)


# --------------------------------------------------------------------------- identity, refetch


def test_the_identity_is_endpoint_client_scope_parameters_and_default_lifetime() -> None:
    """README, "Reloading", and tokend.io.cache: tokens are keyed by what makes them
    interchangeable; never the name, the secret or where the token goes."""
    assert IDENTITY_FIELDS == (
        "token_url",
        "client_id",
        "scope",
        "extra_params",
        "default_expires_in",
        "issuer",  # instead of token_url, for a credential that discovers its endpoint
        "tls_cert_file",  # by the certificate's thumbprint, read when the key is wanted
        "dpop_key",  # by the DPoP key's RFC 7638 thumbprint: a token is bound to one key
        "grant_type",  # a token exchange: the grant, where its tokens come from, what it asks
        "subject_token",
        "actor_token",
        "requested_token_type",
        "assertion",  # the JWT-bearer grant: where its JWT comes from, whom one tokend signs is for
        "assertion_subject",
    )
    # ...in the order identity.cache_key takes them (`params` being the extra parameters).
    parameters = list(inspect.signature(identity.cache_key).parameters)
    assert parameters == [
        "token_url",
        "client_id",
        "scope",
        "params",
        "default_expires_in",
        "issuer",
        "tls_cert",
        "dpop_jkt",
        "grant",
        "subject_token",
        "actor_token",
        "requested_token_type",
        "assertion",
        "assertion_subject",
    ]
    cred = api()
    assert cache_key(cred, "id") == identity.cache_key(
        cred.token_url, "id", cred.scope, cred.extra_params, cred.default_expires_in, cred.issuer
    )


CHANGES: dict[str, Any] = {  # a different value for every field of a credential
    "name": "other",
    "source": Path("/elsewhere.toml"),
    "token_url": "https://other.example.com/token",
    "client_id": "client_secret",  # (stands for a SecretRef: filled in below)
    "client_secret": "client_id",
    "provider": "eventbookings",
    "env_file": Path("/etc/tokend/other.env"),
    "scope": ("other",),
    "extra_params": (("audience", "other"),),
    "request_format": "json",
    "client_auth": "body",
    "use_refresh_token": False,
    "refresh_at": 0.6,
    "min_ttl_margin": 5.0,
    "default_expires_in": 60.0,
    "timeout": 3.0,
    "token_type": "Bearer",
    "ca_bundle": Path("/etc/ssl/other.pem"),
    "allow_insecure_http": True,
    "issuer": "https://other.example.com",
    "private_key": SecretRef("private_key_file", "file", "/etc/tokend/other.key"),
    "key_id": "other",
    "signing_alg": "ES256",
    "assertion_audience": "https://other.example.com",
    "client_assertion": SecretRef("client_assertion_file", "file", "/var/run/secrets/tokens/other"),
    "tls_cert_file": Path("/etc/tokend/other.crt"),
    "tls_key_file": Path("/etc/tokend/other.key"),
    "dpop": True,
    "dpop_key_file": Path("/etc/tokend/other-dpop.pem"),
    "dpop_signing_alg": "ES384",
    "dpop_allow_bearer": True,
    "dpop_key": Path("/etc/tokend/other-dpop.pem"),  # (a made one in the cache-key test)
    "endpoint_dpop": True,
    "grant_type": "token_exchange",
    "subject_token": SecretRef("subject_token_file", "file", "/var/run/secrets/tokens/other"),
    "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
    "actor_token": SecretRef("actor_token_file", "file", "/var/run/secrets/tokens/actor"),
    "actor_token_type": "urn:ietf:params:oauth:token-type:id_token",
    "requested_token_type": "urn:ietf:params:oauth:token-type:id_token",
    "assertion": SecretRef("assertion_file", "file", "/var/run/secrets/tokens/grant"),
    "assertion_subject": "someone@example.com",
    "assertion_scope_claim": True,
    "sinks": (SinkConfig(path=Path("/run/other")),),
    "on_rotate": HookConfig(command=("true",)),
    "fleet": False,
    "endpoint_users": ("nobody",),
    "endpoint_groups": ("nogroup",),
    "endpoint_tcp": True,
    "proxies": (ProxyConfig(listen=Listen(host="127.0.0.1", port=8081), upstream="https://api.example.com"),),
}


def changed(cred: CredentialConfig, name: str) -> CredentialConfig:
    value = CHANGES[name]
    if name in ("client_id", "client_secret"):
        value = getattr(cred, value)  # the other one's source and value
    return dataclasses.replace(cred, **{name: value})


def test_refetch_fields_are_what_the_readme_says() -> None:
    """README, "Reloading": a changed endpoint, client, secret source, scope or parameters
    asks for a new token at once; changed sinks, hooks or timing get the current token with
    no request. Everything of the identity is of course among them."""
    assert TOKEN_FIELDS == REFETCH_FIELDS
    assert set(IDENTITY_FIELDS) <= REFETCH_FIELDS
    refetch = {
        # the endpoint, and how it is spoken to
        "token_url",
        "request_format",
        "client_auth",
        "timeout",
        "ca_bundle",
        "allow_insecure_http",
        "issuer",
        # the client and its secret's source, or its key and certificate
        "client_id",
        "client_secret",
        "env_file",
        "private_key",
        "key_id",
        "signing_alg",
        "assertion_audience",
        "client_assertion",
        "tls_cert_file",
        "tls_key_file",
        # the key a DPoP token is bound to, and how it is asked for and judged
        "dpop",
        "dpop_key_file",
        "dpop_key",
        "dpop_signing_alg",
        "dpop_allow_bearer",
        # a token exchange's grant and its inputs
        "grant_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "assertion",
        "assertion_subject",
        "assertion_scope_claim",
        # what is asked for
        "scope",
        "extra_params",
        "use_refresh_token",
        "default_expires_in",
        # how the answer is read
        "token_type",
    }
    assert refetch == REFETCH_FIELDS
    others = {f.name for f in dataclasses.fields(CredentialConfig)} - REFETCH_FIELDS
    assert others == {
        "name",
        "source",
        "provider",
        "refresh_at",
        "min_ttl_margin",
        "sinks",
        "on_rotate",
        "fleet",
        "endpoint_users",  # who may read it from the endpoint, and proxies: not the token
        "endpoint_groups",
        "endpoint_tcp",
        "endpoint_dpop",
        "proxies",
    }
    assert set(CHANGES) == {f.name for f in dataclasses.fields(CredentialConfig)}


def test_each_field_changes_the_cache_key_exactly_when_it_is_of_the_identity(tmp_path: Path) -> None:
    from .thirdparty.tls_front import Pki

    cred = api()
    key_before = cache_key(cred, "id")
    cert, _ = Pki(tmp_path).issue("svc", "svc")  # a certificate counts by its thumbprint: a real one
    for f in dataclasses.fields(CredentialConfig):
        after = changed(cred, f.name)
        if f.name == "tls_cert_file":
            after = dataclasses.replace(cred, tls_cert_file=cert)
        if f.name == "dpop_key":  # a key counts by its thumbprint: a real one, made now
            after = dataclasses.replace(cred, dpop_key=tmp_path / "dpop" / "api.pem")
        before = key_before
        if f.name in (
            "subject_token",
            "actor_token",
            "requested_token_type",
            "assertion",
            "assertion_subject",
        ):
            exchange = dataclasses.replace(cred, grant_type="token_exchange")  # counted with a grant
            before = cache_key(exchange, "id")
            after = dataclasses.replace(exchange, **{f.name: CHANGES[f.name]})
        client_id = "other-id" if f.name == "client_id" else "id"
        assert (cache_key(after, client_id) != before) == (f.name in IDENTITY_FIELDS), f.name


# --------------------------------------------------------------------------- bounds


def beyond(table: str, spec: Key, name: str) -> list[str]:
    """TOML literals just outside the bounds a key declares."""
    low, high = spec.low, spec.high
    if spec.kind == "number":
        assert low is not None and high is not None
        return [repr(low - 0.01), repr(high + 0.01)]
    if spec.kind == "duration":
        assert high is not None
        return [f'"{int(high) + 1}s"'] + ([] if low == 0 else ['"0s"'])
    if spec.kind == "owner":
        assert high is not None
        return [str(int(high) + 1)]
    assert high is not None, f"{table}.{name} is not bounded"
    if spec.kind == "addresses":  # `high` entries at most
        return ["[" + ", ".join(f'"h{n}:26379"' for n in range(int(high) + 1)) + "]"]
    long = "x" * (int(high) + 1)
    if spec.kind == "argv":
        return [f'["{long}"]']
    if name == "resource":
        return [f'"https://r/{long}"']
    if name == "extra_params":
        return [f'{{ p = "{long}" }}']
    return [f'"{long}"']


BOUND_WORDS = ("longer than", "at most", "more than", "between", "id from")
BOUNDED = [
    (table, spec, name)
    for table, spec in specs()
    if spec.low is not None or spec.high is not None
    for name in (spec.keys or ())
    if name not in ("metrics_allow_remote", "allow_remote")  # a flag: the bound is the listen key's
]


@pytest.mark.parametrize(("table", "spec", "name"), BOUNDED, ids=[f"{t}.{n}" for t, _, n in BOUNDED])
def test_every_bounded_key_refuses_a_value_beyond_its_bound(table: str, spec: Key, name: str) -> None:
    for literal in beyond(table, spec, name):
        with pytest.raises(ConfigError) as info:
            parse(config_with(table, name, literal), FILE, environ={})
        where = table.replace(".sink", ".sink[0]").replace(".proxy", ".proxy[0]")
        message = str(info.value)
        assert f": {where}.{name}: " in message or f": {where}.{spec.field}: " in message, message
        assert any(w in message for w in BOUND_WORDS), message
        assert len(message) < 300 and "\n" not in message  # the value is not echoed whole


def test_every_kind_of_string_key_is_bounded_and_every_duration_and_id() -> None:
    unbounded = [
        f"{table}.{spec.field}"
        for table, spec in specs()
        if spec.kind
        not in ("flag", "mode", "socket_mode", "sinks", "proxies", "hook", "credentials", "internal")
        and spec.high is None
    ]
    assert unbounded == []


def test_a_zero_margin_is_allowed_and_a_zero_timeout_is_not() -> None:
    assert parse(config_with("credentials.api", "min_ttl_margin", '"0s"'), FILE, environ={})
    with pytest.raises(ConfigError, match="timeout: must be longer than zero"):
        parse(config_with("credentials.api", "timeout", "0"), FILE, environ={})


# --------------------------------------------------------------------------- the example


EXAMPLE = Path(__file__).resolve().parent.parent / "tokend.toml.example"
HEADER = re.compile(r"^#?\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
ASSIGNMENT = re.compile(r"^#?\s*([a-z_]+)\s*=")


def example_keys() -> dict[type, set[str]]:
    """The keys tokend.toml.example sets or shows (commented out), by the table they are in."""
    found: dict[type, set[str]] = {cls: set() for cls in VALUES}
    cls: type | None = None
    for line in EXAMPLE.read_text().splitlines():
        if header := HEADER.match(line):
            parts = header.group(1).split(".")
            kinds = {1: Config, 2: CredentialConfig}
            tail = {"sink": SinkConfig, "on_rotate": HookConfig, "proxy": ProxyConfig}
            roots = {"fleet": FleetConfig, "endpoint": EndpointConfig}
            cls = tail[parts[2]] if len(parts) == 3 else roots.get(parts[0]) or kinds[len(parts)]
            if len(parts) == 3:  # [[credentials.NAME.sink]] is the credential's key "sink" (so "proxy")
                found[CredentialConfig].add(parts[2])
        elif (assignment := ASSIGNMENT.match(line)) and cls is not None:
            found[cls].add(assignment.group(1))
    return found


def test_every_key_in_the_example_is_in_the_schema_and_the_other_way_round() -> None:
    for cls, keys in example_keys().items():
        assert keys == set(toml_keys(cls)), cls.__name__
