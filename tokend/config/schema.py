"""The schema of ``tokend.toml``: every key declared once, on the field of the frozen value it fills.

A field's one declaration, ``key(...)``, says all there is to say about its key: the kind of
value (which says how it is read), the default, the bounds, whether the field is part of the
token's *identity* (the token cache's key: credentials with the same identity share a token)
and whether changing it on a reload asks for a new token at once (*refetch*). The rest is
derived from these declarations and nowhere written twice: the known keys of each table,
the reload's field sets, which fields feed the cache key.

Pure: nothing is read here. The numbers the bounds are made of are
:mod:`tokend.core.limits` (the fast path applies the same ones); how each kind of value is
read is :mod:`tokend.config.kinds`; what one key cannot say by itself (presets, secret
sources, checks across keys) is :mod:`tokend.config.parse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, dataclass_transform, get_args

from tokend.core.dpop import DPOP_ALGS
from tokend.core.limits import (
    DEFAULT_EXPIRES_IN,
    DEFAULT_MIN_TTL_MARGIN,
    DEFAULT_REFRESH_AT,
    MAX_EXPIRES_IN,
    MAX_HOOK_TIMEOUT,
    MAX_ID,
    MAX_LEASE,
    MAX_REQUEST_TIMEOUT,
    MAX_STRING,
    MAX_TTL_MARGIN,
    MIN_LEASE,
    REFRESH_AT_HIGH,
    REFRESH_AT_LOW,
    SECRET_SUFFIXES,
)
from tokend.core.templates import MAX_TEMPLATE_BYTES

if TYPE_CHECKING:
    from tokend.core.limits import SecretSource

_C = TypeVar("_C")

SinkFormat = Literal["raw", "json", "env", "header", "template"]
RequestFormat = Literal["form", "json", "auto"]
WireFormat = Literal["form", "json"]
ClientAuth = Literal["basic", "body", "auto", "private_key_jwt", "tls_client_auth", "none"]
AuthStyle = Literal["basic", "body", "private_key_jwt", "tls_client_auth", "none"]
Grant = Literal["client_credentials", "token_exchange", "jwt_bearer"]
# RFC 7518 §3.1, the asymmetric ones: what a private key may sign a client assertion with.
SigningAlg = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

SINK_FORMATS: tuple[SinkFormat, ...] = ("raw", "json", "env", "header", "template")
REQUEST_FORMATS: tuple[RequestFormat, ...] = ("form", "json", "auto")
CLIENT_AUTHS: tuple[ClientAuth, ...] = ("basic", "body", "auto", "private_key_jwt", "tls_client_auth", "none")
KEY_AUTHS: tuple[ClientAuth, ...] = ("private_key_jwt", "tls_client_auth")  # no client secret
# "none": a public client (RFC 6749 §2.1), only for token exchange, where the subject token
# is the proof (RFC 8693 §2.1: client authentication is optional there; GCP's STS has none).
NO_SECRET_AUTHS: tuple[ClientAuth, ...] = (*KEY_AUTHS, "none")
GRANTS: tuple[Grant, ...] = ("client_credentials", "token_exchange", "jwt_bearer")
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
SIGNING_ALGS: tuple[SigningAlg, ...] = get_args(SigningAlg)
TOKEN_TYPES = ("Bearer",)  # the types a token_type override may name
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

SimpleKind = Literal[
    # Read from its one key by tokend.config.kinds, within the key's bounds:
    "string",  # non-empty text of at most `high` characters, no NUL
    "choice",  # one of `choices`
    "flag",  # true or false
    "number",  # from `low` to `high`
    "duration",  # "30s", "1h30m", "500ms" or seconds: longer than zero (zero too if low = 0), up to `high`
    "path",  # a string; relative to the config file, "~" expanded
    "mode",  # an octal string such as "0640"; never writable by group or others
    "owner",  # a user or group name, or an id from 0 to `high`
    "owners",  # a list of user or group names or ids (or one); `high`: characters in all
    "socket_mode",  # an octal string such as "0660": a socket's mode (write is what lets a caller connect)
    "scope",  # a string or a list of strings, split at whitespace
    "argv",  # a list of strings: a program and its arguments, never a shell line
    "signal",  # a signal name, with or without "SIG"
    "url",  # a string; tokend.config.parse adds the preset and refuses http to remote hosts
    "addresses",  # a non-empty list of "HOST:PORT" strings (a DNS name, IPv4 or [IPv6]); `high`: how many
]
ComposedKind = Literal[
    # Read from several keys of the table by tokend.config.kinds:
    "params",  # extra body parameters, audience and resource: sorted (name, value) pairs
    "listen",  # metrics_listen = "HOST:PORT", loopback unless metrics_allow_remote = true
    "address",  # listen = "unix:/PATH", "HOST:PORT" (loopback unless allow_remote = true) or "systemd:NAME"
]
Kind = Literal[
    SimpleKind,
    ComposedKind,
    # Read by tokend.config.parse:
    "secret",  # exactly one of KEY, KEY_env, KEY_file, KEY_credential
    "sinks",  # [[credentials.NAME.sink]] tables
    "proxies",  # [[credentials.NAME.proxy]] tables
    "hook",  # a [credentials.NAME.on_rotate] table
    "credentials",  # the [credentials.NAME] tables (no key of [tokend])
    "internal",  # no key: tokend fills it (the credential's name, the file it came from)
]
SIMPLE_KINDS: frozenset[Kind] = frozenset(get_args(SimpleKind))
COMPOSED_KINDS: frozenset[Kind] = frozenset(get_args(ComposedKind))
# The bound a key of a kind gets unless its declaration says otherwise.
DEFAULT_HIGH: Mapping[Kind, float] = {
    **dict.fromkeys(
        (
            *("string", "choice", "path", "scope", "argv", "signal", "url", "secret", "params", "listen"),
            *("owners", "address"),
        ),
        MAX_STRING,  # characters, all values of the key together
    ),
    "duration": MAX_EXPIRES_IN,
    "owner": MAX_ID,
    "addresses": 16,  # entries (each HOST:PORT at most 255 + 6 characters)
}
SCHEMA = "tokend.config.schema"  # the key of a field's metadata that holds its Key


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()
"""A field's default when it has none (or a factory): the value must be given."""


@dataclass(frozen=True, slots=True)
class Key:
    """One field of a config value, and the TOML key (or keys) that fill it."""

    kind: Kind
    keys: tuple[str, ...] | None = None  # None: the field's own name (set when the class is made)
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive bounds: of a number, a duration, an id,
    high: float | None = None  # or a string's length
    required: bool = False  # the key must be given (a field without a default may come from elsewhere)
    identity: bool = False  # part of the token's identity: the token cache's key
    refetch: bool = False  # a change on reload asks for a new token at once
    only_with: str | None = None  # the one client_auth its keys apply to (any other refuses them)
    doc: str = ""  # one line of meaning: the generated reference and tokend.toml(5) print it
    field: str = ""  # the field's name, and its default (NO_DEFAULT: none, or a factory),
    default: Any = NO_DEFAULT  # both filled in from the dataclass when the class is made


def key(
    *,
    kind: Kind,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    keys: tuple[str, ...] | None = None,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
    identity: bool = False,
    refetch: bool = False,
    only_with: str | None = None,
    doc: str = "",
) -> Any:
    """Declare a field of a config value: the schema's one declaration of its key."""
    high = DEFAULT_HIGH.get(kind) if high is None else high
    spec = Key(kind, keys, choices, low, high, required, identity, refetch, only_with, doc)
    return field(default=default, default_factory=default_factory, metadata={SCHEMA: spec})


_SCHEMAS: dict[type, tuple[Key, ...]] = {}


@dataclass_transform(frozen_default=True, field_specifiers=(key,))
def config_value(cls: type[_C]) -> type[_C]:
    """A frozen, slotted dataclass whose every field is declared with :func:`key`."""
    made = dataclass(frozen=True, slots=True)(cls)
    specs = []
    for f in fields(made):  # type: ignore[arg-type]
        spec = f.metadata.get(SCHEMA)
        # Errors, not asserts: a schema that contradicts itself must not import, even under -O.
        if not isinstance(spec, Key):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with key()")
        keys = spec.keys if spec.keys is not None else () if spec.kind == "internal" else (f.name,)
        if spec.kind in SIMPLE_KINDS and len(keys) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: a {spec.kind} is read from exactly one key")
        if spec.identity and not spec.refetch:
            raise TypeError(f"{cls.__name__}.{f.name}: a field of the identity must refetch")
        if spec.only_with is not None and spec.only_with not in CLIENT_AUTHS:
            raise TypeError(f"{cls.__name__}.{f.name}: only_with names no client_auth")
        default = NO_DEFAULT if f.default is MISSING else f.default
        specs.append(replace(spec, keys=keys, field=f.name, default=default))
    _SCHEMAS[made] = tuple(specs)
    return made


def schema(cls: type) -> tuple[Key, ...]:
    """The declarations of a config value's fields, in their order, keys and defaults resolved."""
    return _SCHEMAS[cls]


def toml_keys(cls: type) -> tuple[str, ...]:
    """Every key the TOML table of a config value may hold."""
    return tuple(name for spec in schema(cls) for name in spec.keys or ())


# --------------------------------------------------------------------------- the values


def secret_keys(base: str) -> tuple[str, ...]:
    """``client_secret``, ``client_secret_env``, ``client_secret_file``, ``client_secret_credential``."""
    return tuple(f"{base}{suffix}" for suffix in SECRET_SUFFIXES)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a client id or secret lives; the value itself is read by ``tokend.io.secret_sources``."""

    key: str  # the config key that named it, for error messages: "client_secret_file"
    source: SecretSource
    value: str = field(repr=False)  # inline value, variable name, path or credential name


@config_value
class SinkConfig:
    path: Path = key(kind="path", required=True, doc="the file the token is written to, atomically")
    format: SinkFormat = key(
        kind="choice",
        default="raw",
        choices=SINK_FORMATS,
        doc="raw (the token and a newline), json, env (NAME='…' lines), header or template",
    )
    mode: int = key(
        kind="mode",
        default=0o600,
        doc='the file\'s mode, an octal string such as "0640"; group or other write is refused',
    )
    owner: str | int | None = key(
        kind="owner", default=None, doc="the file's user, a name or uid (needs root or CAP_CHOWN)"
    )
    group: str | int | None = key(
        kind="owner", default=None, doc="the file's group, a name or gid: the consuming service's group"
    )
    # format = "env" only: <NAME>_ACCESS_TOKEN
    env_name: str | None = key(
        kind="string",
        default=None,
        doc='format = "env" only: the variable\'s name; default <NAME>_ACCESS_TOKEN',
    )
    remove_on_stop: bool = key(
        kind="flag", default=False, doc="delete the file when the sink leaves the config (on reload)"
    )
    # a dir chain others can write (no StrictModes)
    allow_shared_dir: bool = key(
        kind="flag",
        default=False,
        doc="accept a directory path others than its user or root could change (StrictModes off)",
    )
    # format = "template" only, one of the two (tokend.core.templates). The file's text is
    # read when the config is loaded, and watched: an edit reloads, re-rendering with no request.
    template: str | None = key(
        kind="string",
        default=None,
        high=MAX_TEMPLATE_BYTES,
        doc='format = "template": the text, with ${access_token} and the other placeholders; $$ is $',
    )
    template_file: Path | None = key(
        kind="path",
        default=None,
        doc='format = "template": a file holding the template instead (read at load, watched)',
    )
    template_text: str | None = key(kind="internal", default=None)  # the template, checked
    credential: str | None = key(kind="internal", default=None)  # its credential, for ${credential}


@dataclass(frozen=True, slots=True)
class Listen:
    """Where a local server of tokend's listens: a unix socket's path, a TCP host and port,
    or a socket systemd passes (``systemd:NAME``, its ``FileDescriptorName=``), whose
    address is known only once tokend has it: :mod:`tokend.io.socket_activation` judges it
    and gives the path or the host and port it found, ``fd_name`` kept."""

    path: Path | None = None  # unix:/PATH
    host: str = ""  # HOST:PORT
    port: int = 0
    fd_name: str | None = None  # systemd:NAME
    # For systemd:NAME, whose address the config cannot know: whether a TCP socket systemd
    # passes may be on a non-loopback address (an address in the config is judged at load).
    allow_remote: bool = False

    def __str__(self) -> str:
        if self.fd_name is not None and self.path is None and not self.host:
            return f"systemd:{self.fd_name}"
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@config_value
class ProxyConfig:
    """``[[credentials.NAME.proxy]]``: a reverse proxy that adds the credential's token."""

    listen: Listen = key(
        kind="address",
        keys=("listen", "allow_remote"),
        doc="unix:/PATH, HOST:PORT or systemd:NAME, as in [endpoint]; allow_remote as there",
    )
    # https (http only to loopback), no query
    upstream: str = key(
        kind="url",
        required=True,
        doc="where requests go: https (TLS verified), http only to loopback; the caller's path appended",
    )
    # unix sockets only, as the three below
    socket_mode: int = key(
        kind="socket_mode",
        default=0o660,
        doc="unix only: the socket's mode, an octal string; connecting needs write permission",
    )
    socket_owner: str | int | None = key(
        kind="owner", default=None, doc="unix only: the socket's user, a name or uid"
    )
    socket_group: str | int | None = key(
        kind="owner",
        default=None,
        doc="unix only: the socket's group, a name or gid (with 0660: who may connect)",
    )
    # a line per request: never a token, a fingerprint
    access_log: bool = key(
        kind="flag",
        default=False,
        doc="a log line per request: method, path, status, the token's fingerprint",
    )


@config_value
class EndpointConfig:
    """``[endpoint]``: the local token endpoint (``GET /v1/token/NAME``) and health."""

    listen: Listen = key(
        kind="address",
        keys=("listen", "allow_remote"),
        doc="unix:/PATH, HOST:PORT or systemd:NAME; allow_remote = true: TCP beyond loopback",
    )
    socket_mode: int = key(
        kind="socket_mode",
        default=0o660,
        doc="unix only: the socket's mode, an octal string; connecting needs write permission",
    )
    socket_owner: str | int | None = key(
        kind="owner", default=None, doc="unix only: the socket's user, a name or uid"
    )
    socket_group: str | int | None = key(
        kind="owner",
        default=None,
        doc="unix only: the socket's group, a name or gid (with 0660: who may connect)",
    )
    access_log: bool = key(
        kind="flag",
        default=False,
        doc="a log line per request: path without query, status, the token's fingerprint",
    )


@config_value
class HookConfig:
    command: tuple[str, ...] = key(
        kind="argv",
        default=(),
        doc="a program and its arguments (argv, never a shell), run after the sinks changed",
    )
    timeout: float = key(
        kind="duration",
        default=30.0,
        high=MAX_HOOK_TIMEOUT,
        doc="how long the command may run before it is killed",
    )
    pid_file: Path | None = key(
        kind="path",
        default=None,
        doc="signal the process whose pid this file holds (one others could write is refused)",
    )
    signal: str | None = key(
        kind="signal", default=None, doc='the signal sent to pid_file\'s process, such as "SIGHUP"'
    )
    pass_token: bool = key(kind="flag", default=False, doc="put the token in the command's environment")


@config_value
class CredentialConfig:
    name: str = key(kind="internal")
    source: Path = key(kind="internal")  # the config file it came from, for error messages
    # None: discovered from issuer
    token_url: str | None = key(
        kind="url",
        identity=True,
        refetch=True,
        doc="the token endpoint: https, http only to loopback (unset: the preset's, or from issuer)",
    )
    client_id: SecretRef = key(
        kind="secret",
        keys=secret_keys("client_id"),
        identity=True,
        refetch=True,
        doc="the client id: inline, or from a variable, a file or a systemd credential",
    )
    # None with client_auth = "private_key_jwt" or "tls_client_auth": the key is the secret.
    client_secret: SecretRef | None = key(
        kind="secret",
        keys=secret_keys("client_secret"),
        refetch=True,
        doc="the client secret, from the same places (none with a key-based client_auth)",
    )
    # a preset: see tokend.core.limits.PRESETS
    provider: str | None = key(
        kind="string",
        default=None,
        doc='a preset of keys such as "eventbookings"; the keys the credential sets win over it',
    )
    env_file: Path | None = key(
        kind="path",
        default=None,
        refetch=True,
        doc="a dotenv file the *_env keys are looked up in before the environment (read literally)",
    )
    scope: tuple[str, ...] = key(
        kind="scope", default=(), identity=True, refetch=True, doc="the scope asked for: a string or a list"
    )
    # Sorted (name, value) pairs; a name may repeat (RFC 8707: several `resource`). Holds
    # `audience` and `resource` too, whichever key they were given with.
    extra_params: tuple[tuple[str, str], ...] = key(
        kind="params",
        default=(),
        keys=("audience", "resource", "extra_params"),
        identity=True,
        refetch=True,
        doc="audience, resource (RFC 8707) and more body parameters; a list repeats one",
    )
    request_format: RequestFormat = key(
        kind="choice",
        default="form",
        choices=REQUEST_FORMATS,
        refetch=True,
        doc="the request body: form (RFC 6749), json, or auto (form, then json once; remembered)",
    )
    client_auth: ClientAuth = key(
        kind="choice",
        default="basic",
        choices=CLIENT_AUTHS,
        refetch=True,
        doc="basic, body, auto (Basic, then the body; remembered), private_key_jwt or tls_client_auth",
    )
    use_refresh_token: bool = key(
        kind="flag",
        default=True,
        refetch=True,
        doc="use the refresh_token grant when one was issued; on refusal, client credentials",
    )
    refresh_at: float = key(
        kind="number",
        default=DEFAULT_REFRESH_AT,
        low=REFRESH_AT_LOW,
        high=REFRESH_AT_HIGH,
        doc="refresh after this fraction of the token's lifetime",
    )
    min_ttl_margin: float = key(
        kind="duration",
        default=DEFAULT_MIN_TTL_MARGIN,
        low=0,
        high=MAX_TTL_MARGIN,
        doc="never refresh later than this before expiry",
    )
    default_expires_in: float = key(
        kind="duration",
        default=DEFAULT_EXPIRES_IN,
        identity=True,
        refetch=True,
        doc="the token's lifetime when the server omits expires_in",
    )
    timeout: float = key(
        kind="duration",
        default=10.0,
        high=MAX_REQUEST_TIMEOUT,
        refetch=True,
        doc="per request, start to last byte",
    )
    # Taken as the token's type whatever the server answers: for servers known to mislabel
    # Bearer tokens (idpyoidc 5.0.0 answers "access_token"). Unset, an unknown type is refused.
    token_type: str | None = key(
        kind="choice",
        default=None,
        choices=TOKEN_TYPES,
        refetch=True,
        doc="taken as the token's type whatever the server says (for servers that mislabel Bearer)",
    )
    ca_bundle: Path | None = key(
        kind="path",
        default=None,
        refetch=True,
        doc="a private CA to verify the server with (TLS is always verified)",
    )
    allow_insecure_http: bool = key(
        kind="flag", default=False, refetch=True, doc="allow http:// to a host that is not loopback"
    )
    # Discovery (RFC 8414 / OIDC Discovery) instead of token_url; part of the identity.
    issuer: str | None = key(
        kind="url",
        default=None,
        identity=True,
        refetch=True,
        doc="instead of token_url: the token endpoint from the issuer's metadata (OIDC, RFC 8414)",
    )
    # private_key_jwt (RFC 7523): a PEM key, read at request time like a secret.
    private_key: SecretRef | None = key(
        kind="secret",
        default=None,
        keys=("private_key_file", "private_key_credential"),
        refetch=True,
        only_with="private_key_jwt",
        doc="private_key_jwt: the PEM key that signs the client assertion (a file or credential)",
    )
    key_id: str | None = key(
        kind="string",
        default=None,
        high=256,
        refetch=True,
        only_with="private_key_jwt",
        doc='private_key_jwt: the JWS "kid" header, the key\'s id at the identity provider',
    )
    signing_alg: SigningAlg | None = key(
        kind="choice",
        default=None,
        choices=SIGNING_ALGS,
        refetch=True,
        only_with="private_key_jwt",
        doc="private_key_jwt: the assertion's algorithm; default by key (RS256, ES256…, EdDSA)",
    )
    assertion_audience: str | None = key(
        kind="string",
        default=None,
        refetch=True,
        only_with="private_key_jwt",
        doc='private_key_jwt: the assertion\'s "aud"; default: the token endpoint URL',
    )
    # A JWT the platform writes and rotates (Kubernetes, Azure workload identity), sent as
    # the client assertion instead of one tokend signs: read at every request, never deleted.
    client_assertion: SecretRef | None = key(
        kind="secret",
        default=None,
        keys=("client_assertion_file", "client_assertion_credential"),
        refetch=True,
        only_with="private_key_jwt",
        doc="a file (or systemd credential) holding the JWT the platform writes and rotates, sent as "
        "client_assertion",
    )
    # Mutual TLS (RFC 8705): the client certificate, with any client_auth.
    # Of the identity by its certificate's thumbprint (tokend.io.cache), not by its path.
    tls_cert_file: Path | None = key(
        kind="path",
        default=None,
        identity=True,
        refetch=True,
        doc="a PEM client certificate for mutual TLS (RFC 8705), with any client_auth",
    )
    tls_key_file: Path | None = key(
        kind="path",
        default=None,
        refetch=True,
        doc="the client certificate's private key, unless tls_cert_file holds it",
    )
    # DPoP (RFC 9449): tokens bound to a key tokend holds, usable only through its proxy.
    dpop: bool = key(
        kind="flag", default=False, refetch=True, doc="ask for DPoP-bound tokens (RFC 9449); proxy only"
    )
    dpop_key_file: Path | None = key(
        kind="path",
        default=None,
        refetch=True,
        doc="the DPoP private key (PEM, 0600); default: made on first use in STATE_DIR/dpop/NAME.pem",
    )
    dpop_signing_alg: str | None = key(
        kind="choice",
        default=None,
        choices=DPOP_ALGS,
        refetch=True,
        doc="the made DPoP key's algorithm: ES256 (default), ES384, EdDSA, RS256; a change makes a new key",
    )
    dpop_allow_bearer: bool = key(
        kind="flag",
        default=False,
        refetch=True,
        doc="accept a Bearer answer to a DPoP request (a server that ignored the proof)",
    )
    # The key actually used (dpop_key_file or the made one's path, set by parse), of the
    # identity by its RFC 7638 thumbprint (tokend.io.cache): a new key is a new token.
    dpop_key: Path | None = key(kind="internal", default=None, identity=True, refetch=True)
    # Token exchange (RFC 8693): a token the platform wrote (a Kubernetes service-account
    # token, a cloud's OIDC token) exchanged for an access token. Of the identity: the grant,
    # where the subject and actor tokens come from (by path: a rotation is the same
    # workload), and the token type asked for.
    grant_type: Grant = key(
        kind="choice",
        default="client_credentials",
        choices=GRANTS,
        identity=True,
        refetch=True,
        doc="client_credentials; token_exchange (RFC 8693); jwt_bearer (RFC 7523 §2.1: a JWT as the grant)",
    )
    subject_token: SecretRef | None = key(
        kind="secret",
        default=None,
        keys=("subject_token_file", "subject_token_credential"),
        identity=True,
        refetch=True,
        doc="token_exchange: a file (or systemd credential) holding the subject token, read at every request",
    )
    subject_token_type: str = key(
        kind="string",
        default=TOKEN_TYPE_JWT,
        refetch=True,
        high=256,
        doc="token_exchange: the subject token's type URI (RFC 8693 §3)",
    )
    actor_token: SecretRef | None = key(
        kind="secret",
        default=None,
        keys=("actor_token_file", "actor_token_credential"),
        identity=True,
        refetch=True,
        doc="token_exchange: a file (or systemd credential) holding the actor token (delegation)",
    )
    actor_token_type: str = key(
        kind="string",
        default=TOKEN_TYPE_JWT,
        refetch=True,
        high=256,
        doc="token_exchange: the actor token's type URI",
    )
    requested_token_type: str | None = key(
        kind="string",
        default=None,
        identity=True,
        refetch=True,
        high=256,
        doc="token_exchange: the type of token asked for; default: the server's (an access token)",
    )
    # The JWT-bearer grant (RFC 7523 §2.1): a JWT as the grant itself, from a file, or
    # signed by tokend with private_key_file (iss = client_id, as Google's service accounts
    # and Salesforce want). Of the identity: the file's source, and whom it is about.
    assertion: SecretRef | None = key(
        kind="secret",
        default=None,
        keys=("assertion_file", "assertion_credential"),
        identity=True,
        refetch=True,
        doc="jwt_bearer: a file (or systemd credential) holding the JWT to send as the grant",
    )
    assertion_subject: str | None = key(
        kind="string",
        default=None,
        identity=True,
        refetch=True,
        high=256,
        doc='jwt_bearer, signed by tokend: the JWT\'s "sub" (whom the token is for); default: client_id',
    )
    assertion_scope_claim: bool = key(
        kind="flag",
        default=False,
        refetch=True,
        doc="jwt_bearer, signed by tokend: scope as a claim of the JWT, not a parameter (Google)",
    )
    sinks: tuple[SinkConfig, ...] = key(
        kind="sinks",
        default=(),
        keys=("sink",),
        doc="[[credentials.NAME.sink]]: zero or more files the token is written to",
    )
    on_rotate: HookConfig | None = key(
        kind="hook",
        default=None,
        doc="[credentials.NAME.on_rotate]: a command run or a process signalled after the sinks changed",
    )
    # Share this credential's token through [fleet] (when that table exists): the default.
    fleet: bool = key(
        kind="flag",
        default=True,
        doc="with [fleet]: share this credential's token through Redis; false opts out",
    )
    # Who may read it from [endpoint]'s unix socket, by the caller's uid and gids (SO_PEERCRED);
    # root and tokend's own user always may.
    endpoint_users: tuple[str | int, ...] = key(
        kind="owners",
        default=(),
        doc="who may read the token from [endpoint]'s unix socket, by the caller's user",
    )
    endpoint_groups: tuple[str | int, ...] = key(
        kind="owners",
        default=(),
        doc="who may read the token from [endpoint]'s unix socket, by the caller's groups",
    )
    # Over a TCP [endpoint] the caller's user is not known: every local program that passes
    # the guards could read the token. Off unless the credential says so (a 404 otherwise).
    endpoint_tcp: bool = key(
        kind="flag",
        default=False,
        doc="serve the token on a TCP [endpoint] to any local program sending the guard header",
    )
    # A DPoP token is useless without tokend's key: served by the endpoint only when asked.
    endpoint_dpop: bool = key(
        kind="flag", default=False, doc="serve this DPoP credential's token on [endpoint] (it needs the key)"
    )
    proxies: tuple[ProxyConfig, ...] = key(
        kind="proxies",
        default=(),
        keys=("proxy",),
        doc="[[credentials.NAME.proxy]]: zero or more reverse proxies adding the token to requests",
    )

    @property
    def scope_string(self) -> str | None:
        return " ".join(self.scope) if self.scope else None

    def where(self, key: str) -> str:
        return f"credentials.{self.name}.{key}"

    def files(self) -> set[Path]:
        """Files whose content this credential's token depends on (watched for changes)."""
        found = {Path(ref.value) for ref in self.secret_refs() if ref.source == "file"}
        found |= {path for path in (self.env_file, self.tls_cert_file, self.tls_key_file) if path is not None}
        return found

    def secret_refs(self) -> tuple[SecretRef, ...]:
        """Every secret this credential reads: client id, client secret, private key,
        the platform's client assertion, token exchange's subject and actor tokens."""
        refs = (
            self.client_id,
            self.client_secret,
            self.private_key,
            self.client_assertion,
            self.subject_token,
            self.actor_token,
            self.assertion,
        )
        return tuple(ref for ref in refs if ref is not None)

    def secret_variables(self) -> set[str]:
        """Environment variables this credential reads a secret from: never for a child."""
        return {ref.value for ref in self.secret_refs() if ref.source == "env"}


@config_value
class FleetConfig:
    """``[fleet]``: daemons on many hosts share one token per identity through Redis."""

    # Exactly one of redis_url, or sentinels with service_name.
    redis_url: str | None = key(
        kind="url",
        default=None,
        doc="redis://, rediss:// (TLS) or unix://; no user or password in it, no query but ?db=N",
    )
    # The Redis password: from a file or the environment, never inline (never logged).
    password_file: Path | None = key(
        kind="path", default=None, doc="a file holding the Redis password (never inline, never logged)"
    )
    password_env: str | None = key(
        kind="string",
        default=None,
        high=256,
        doc="the variable holding the Redis password, instead of password_file",
    )
    # a Redis 6 ACL user
    username: str | None = key(
        kind="string", default=None, high=256, doc="a Redis 6 ACL user (default: the default user)"
    )
    # TLS with rediss://: the CA that signed the server's certificate (a managed Redis's, a
    # private CA), and a client certificate for servers that ask for one.
    ca_bundle: Path | None = key(
        kind="path",
        default=None,
        doc="rediss://: the PEM CA bundle the server's certificate must chain to (default: the system's)",
    )
    tls_cert_file: Path | None = key(
        kind="path", default=None, doc="rediss://: a PEM client certificate, for a server that asks for one"
    )
    tls_key_file: Path | None = key(
        kind="path",
        default=None,
        doc="rediss://: the client certificate's key (unless the cert file holds it)",
    )
    # Redis Sentinel, instead of redis_url: the primary of service_name, as the sentinels say.
    sentinels: tuple[str, ...] | None = key(
        kind="addresses", default=None, doc='the Sentinels to ask for the primary, ["HOST:PORT", ...]'
    )
    service_name: str | None = key(
        kind="string", default=None, high=64, doc="the name the sentinels monitor the primary under"
    )
    sentinel_password_file: Path | None = key(
        kind="path", default=None, doc="a file holding the sentinels' own password (their requirepass)"
    )
    sentinel_password_env: str | None = key(
        kind="string", default=None, high=256, doc="the variable holding the sentinels' own password"
    )
    sentinel_username: str | None = key(
        kind="string", default=None, high=256, doc="an ACL user on the sentinels (Redis 6.2 or later)"
    )
    lease: float = key(
        kind="duration",
        default=15.0,
        low=MIN_LEASE,
        high=MAX_LEASE,
        doc="the leader's lease, renewed every third of it",
    )
    key_prefix: str = key(
        kind="string", default="tokend", high=64, doc='every Redis key and channel is under "<key_prefix>:"'
    )

    def shown(self) -> str:
        """Where the fleet's Redis is, as tokend prints it: the URL without its query (the
        parser refuses a user or password in it), or the service and its sentinels."""
        if self.sentinels is not None:
            return f"sentinel {self.service_name} via {','.join(self.sentinels)}"
        return (self.redis_url or "").split("?", 1)[0]


@config_value
class Config:
    path: Path = key(kind="internal")  # the config file
    # default: $STATE_DIRECTORY and so on (paths.default_state_dir)
    state_dir: Path = key(kind="path", doc="the token cache, status and lock (0600 files)")
    log_level: str = key(
        kind="choice", default="info", choices=LOG_LEVELS, doc="debug, info, warning or error"
    )
    log_format: str = key(
        kind="choice", default="text", choices=LOG_FORMATS, doc="text, or json: one JSON object a line"
    )
    metrics_listen: tuple[str, int] | None = key(
        kind="listen",
        default=None,
        keys=("metrics_listen", "metrics_allow_remote"),
        doc="HOST:PORT serving Prometheus metrics at /metrics; loopback unless metrics_allow_remote",
    )
    metrics_textfile: Path | None = key(
        kind="path",
        default=None,
        doc="a file the metrics are written to, for node_exporter's textfile collector",
    )
    credentials: Mapping[str, CredentialConfig] = key(
        kind="credentials",
        default_factory=dict,
        keys=(),
        doc="one [credentials.NAME] table per token to keep fresh",
    )
    fleet: FleetConfig | None = key(kind="internal", default=None)  # the [fleet] table, read by parse
    endpoint: EndpointConfig | None = key(kind="internal", default=None)  # [endpoint], read by parse
    warnings: tuple[str, ...] = key(kind="internal", default=())  # worth a log line, not a refusal

    def secret_variables(self) -> frozenset[str]:
        """Every environment variable any credential reads a secret from: no child of
        tokend's (hook or exec) may inherit one."""
        found = {v for cred in self.credentials.values() for v in cred.secret_variables()}
        if self.fleet is not None and self.fleet.password_env is not None:
            found.add(self.fleet.password_env)  # the Redis password is a secret too
        if self.fleet is not None and self.fleet.sentinel_password_env is not None:
            found.add(self.fleet.sentinel_password_env)  # and so is Sentinel's
        return frozenset(found)

    def serves_http(self) -> bool:
        """Whether tokend serves anything over local HTTP (only then is aiohttp imported)."""
        return self.endpoint is not None or any(c.proxies for c in self.credentials.values())


# --------------------------------------------------------------------------- derived

ROOT_KEYS = ("tokend", "credentials", "fleet", "endpoint")
FLEET_KEYS = toml_keys(FleetConfig)
ENDPOINT_KEYS = toml_keys(EndpointConfig)
PROXY_KEYS = toml_keys(ProxyConfig)
GLOBAL_KEYS = toml_keys(Config)
CREDENTIAL_KEYS = toml_keys(CredentialConfig)
SINK_KEYS = toml_keys(SinkConfig)
HOOK_KEYS = toml_keys(HookConfig)


def keys_of(cls: type, name: str) -> tuple[str, ...]:
    """The TOML keys that fill the field ``name`` of a config value."""
    (spec,) = (spec for spec in schema(cls) if spec.field == name)
    return spec.keys or ()


def keys_only_with(client_auth: str) -> tuple[str, ...]:
    """The credential keys that apply to ``client_auth`` alone, in the schema's order."""
    return tuple(
        name for spec in schema(CredentialConfig) if spec.only_with == client_auth for name in spec.keys or ()
    )


PRIVATE_KEY_KEYS = keys_of(CredentialConfig, "private_key")  # private_key_file, private_key_credential
CLIENT_ASSERTION_KEYS = keys_of(CredentialConfig, "client_assertion")  # client_assertion_file, _credential
KEY_JWT_KEYS = keys_only_with("private_key_jwt")
SUBJECT_TOKEN_KEYS = keys_of(CredentialConfig, "subject_token")  # subject_token_file, _credential
ACTOR_TOKEN_KEYS = keys_of(CredentialConfig, "actor_token")  # actor_token_file, _credential
ASSERTION_KEYS = keys_of(CredentialConfig, "assertion")  # assertion_file, assertion_credential
JWT_BEARER_KEYS = (*ASSERTION_KEYS, "assertion_subject", "assertion_scope_claim")
EXCHANGE_KEYS = (
    *SUBJECT_TOKEN_KEYS,
    "subject_token_type",
    *ACTOR_TOKEN_KEYS,
    "actor_token_type",
    "requested_token_type",
)

IDENTITY_FIELDS = tuple(spec.field for spec in schema(CredentialConfig) if spec.identity)
"""The fields of the token's identity, in the order ``tokend.core.identity.cache_key`` takes them."""
REFETCH_FIELDS = frozenset(spec.field for spec in schema(CredentialConfig) if spec.refetch)
"""Changing any of these may change which token the identity provider gives, or whether it
gives one at all: a reload fetches the credential again at once. The others change where the
token goes or when the next one is asked for, not the token itself."""
