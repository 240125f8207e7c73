"""tokend's configuration: what ``tokend.toml`` may say, and turning it into frozen values.

The public surface: :func:`load` (read and validate a file), :func:`parse` (validate
text), the value types, and :class:`ConfigError`, the one exception loading raises. What
each key is (kind, default, bounds, identity, refetch) is declared once, in
:mod:`tokend.config.schema`; the key lists and field sets here are derived from it.
"""

from tokend.config.errors import ConfigError
from tokend.config.kinds import (
    CONVENTIONAL_ENV_NAME_RE,
    ENV_NAME_RE,
    default_env_name,
    parse_mode,
)
from tokend.config.parse import load, locate_state_dir, parse
from tokend.config.paths import default_config_path, default_state_dir
from tokend.config.schema import (
    CREDENTIAL_KEYS,
    GLOBAL_KEYS,
    HOOK_KEYS,
    IDENTITY_FIELDS,
    REFETCH_FIELDS,
    SINK_KEYS,
    AuthStyle,
    ClientAuth,
    Config,
    CredentialConfig,
    FleetConfig,
    HookConfig,
    Key,
    RequestFormat,
    SecretRef,
    SinkConfig,
    SinkFormat,
    WireFormat,
    schema,
)
from tokend.config.urls import check_token_url, shown_url
from tokend.core.limits import MAX_CONFIG_BYTES, parse_duration

__all__ = [
    "CONVENTIONAL_ENV_NAME_RE",
    "CREDENTIAL_KEYS",
    "ENV_NAME_RE",
    "GLOBAL_KEYS",
    "HOOK_KEYS",
    "IDENTITY_FIELDS",
    "MAX_CONFIG_BYTES",
    "REFETCH_FIELDS",
    "SINK_KEYS",
    "AuthStyle",
    "ClientAuth",
    "Config",
    "ConfigError",
    "CredentialConfig",
    "FleetConfig",
    "HookConfig",
    "Key",
    "RequestFormat",
    "SecretRef",
    "SinkConfig",
    "SinkFormat",
    "WireFormat",
    "check_token_url",
    "default_config_path",
    "default_env_name",
    "default_state_dir",
    "load",
    "locate_state_dir",
    "parse",
    "parse_duration",
    "parse_mode",
    "schema",
    "shown_url",
]
