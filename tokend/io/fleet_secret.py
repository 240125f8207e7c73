"""The Redis password of ``[fleet]``: read from password_file or password_env.

Standard library only, so offline ``tokend check`` reads it without redis-py and a
missing or empty password file fails there (exit 78), not first at ``tokend run``. The
file is read as every other secret file is (:mod:`tokend.io.secret_sources`): a regular
file, never a FIFO or device, a byte-order mark dropped with a warning, one trailing
newline dropped, anything else kept as the operator wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from tokend.config import ConfigError
from tokend.config.schema import FleetConfig
from tokend.io.files import read_regular
from tokend.io.secret_sources import BOM

MAX_PASSWORD_BYTES = 4096

log = logging.getLogger("tokend.secrets")


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
        return ConfigError(config_path, f"{path}: {message}", where="fleet.password_file")

    try:
        raw = read_regular(path, MAX_PASSWORD_BYTES)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_BYTES:
        raise fail(f"larger than {MAX_PASSWORD_BYTES} bytes; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    if text.startswith(BOM):  # Notepad's byte-order mark is not part of the password
        log.warning("%s: starts with a byte-order mark (BOM); ignoring it", path)
        text = text[len(BOM) :]
    text = text.removesuffix("\n").removesuffix("\r")  # `echo pw > file`
    if "\n" in text:
        raise fail("holds more than one line")
    if not text:
        raise fail("is empty")
    return text
