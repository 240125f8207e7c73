"""The Redis password of ``[fleet]``: read from password_file or password_env; and
Sentinel's own, from sentinel_password_file or sentinel_password_env, the same way.

Standard library only, so offline ``tokend check`` reads it without redis-py and a
missing or empty password file fails there (exit 78), not first at ``tokend run``. The
file is read as every other secret file is (:mod:`tokend.io.secret_sources`): a regular
file, never a FIFO or device, a byte-order mark dropped with a warning, one trailing
newline dropped, anything else kept as the operator wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tokend.config import ConfigError, FleetConfig
from tokend.io.secret_sources import read_secret_file


def read_password(fleet: FleetConfig, config_path: Path, environ: Mapping[str, str]) -> str | None:
    """The Redis password, None when the config names none; a ConfigError naming the
    key (never the value) when it cannot be had."""
    return read_secret(fleet.password_file, fleet.password_env, "", config_path, environ)


def read_sentinel_password(fleet: FleetConfig, config_path: Path, environ: Mapping[str, str]) -> str | None:
    """The sentinels' own password (their ``requirepass``, or their ACL user's), None when
    the config names none."""
    return read_secret(
        fleet.sentinel_password_file, fleet.sentinel_password_env, "sentinel_", config_path, environ
    )


def read_secret(
    path: Path | None, variable: str | None, prefix: str, config_path: Path, environ: Mapping[str, str]
) -> str | None:
    if path is not None:
        return read_password_file(path, config_path, f"fleet.{prefix}password_file")
    if variable is not None:
        from_env = environ.get(variable)
        if not from_env:
            raise ConfigError(config_path, f"${variable} is not set", where=f"fleet.{prefix}password_env")
        return from_env
    return None


def read_password_file(path: Path, config_path: Path, where: str = "fleet.password_file") -> str:
    def fail(message: str) -> ConfigError:
        return ConfigError(config_path, message, where=where)

    text = read_secret_file(path, fail)
    if not text:
        raise fail(f"{path}: is empty")
    return text
