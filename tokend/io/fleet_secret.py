"""The Redis password of ``[fleet]``: read from password_file or password_env.

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
    if fleet.password_file is not None:
        return read_password_file(fleet.password_file, config_path)
    if fleet.password_env is not None:
        from_env = environ.get(fleet.password_env)
        if not from_env:
            raise ConfigError(config_path, f"${fleet.password_env} is not set", where="fleet.password_env")
        return from_env
    return None


def read_password_file(path: Path, config_path: Path) -> str:
    def fail(message: str) -> ConfigError:
        return ConfigError(config_path, message, where="fleet.password_file")

    text = read_secret_file(path, fail)
    if not text:
        raise fail(f"{path}: is empty")
    return text
