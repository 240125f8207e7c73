"""Read the client id and secret from wherever the config says they live.

Reading is separate from config parsing so that ``tokend token`` on a cached token never
touches a secret, and so that a rotated secret file is picked up at the next request. Every
failure is a :class:`~tokend.config.errors.ConfigError` naming the credential and the key.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from tokend.config import CONVENTIONAL_ENV_NAME_RE, ConfigError, CredentialConfig, SecretRef
from tokend.core.limits import MAX_SECRET_BYTES
from tokend.io.files import UnreadableFile, read_small

BOM = "\ufeff"

_warned_bom: set[Path] = set()

_Fail = Callable[[str], ConfigError]


def ref_path(cred: CredentialConfig, ref: SecretRef, environ: Mapping[str, str]) -> Path:
    """The file a ``*_file`` or ``*_credential`` reference names: the path, or systemd's
    credential in ``$CREDENTIALS_DIRECTORY`` (a ConfigError naming the key without it)."""
    if ref.source == "file":
        return Path(ref.value)
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        instead = ref.key.removesuffix("_credential") + "_file"
        raise ConfigError(
            cred.source,
            f"$CREDENTIALS_DIRECTORY is not set; load the credential with systemd's LoadCredential= "
            f"or use {instead}",
            where=cred.where(ref.key),
        )
    return Path(directory) / ref.value


def read_secret(
    cred: CredentialConfig,
    ref: SecretRef,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The value ``ref`` points at, stripped of a trailing newline."""
    environ = os.environ if environ is None else environ

    def fail(message: str) -> ConfigError:
        return ConfigError(cred.source, message, where=cred.where(ref.key))

    if ref.source == "inline":
        return ref.value
    if ref.source == "env":
        value = _from_env(cred, ref.value, environ, fail)
    else:
        value = read_secret_file(ref_path(cred, ref, environ), fail)
    if not value:
        raise fail("is empty")
    return value


def _from_env(
    cred: CredentialConfig,
    name: str,
    environ: Mapping[str, str],
    fail: _Fail,
) -> str:
    if cred.env_file is not None:
        values = read_env_file(
            cred.env_file, lambda msg: ConfigError(cred.source, msg, where=cred.where("env_file"))
        )
        if values.get(name):
            return values[name] or ""
    if name in environ:
        return environ[name]
    origin = f"{cred.env_file} or the environment" if cred.env_file else "the environment"
    # A name that does not look like one may be a secret pasted in its place: not shown.
    shown = f"${name}" if CONVENTIONAL_ENV_NAME_RE.fullmatch(name) else "the variable named here"
    raise fail(f"{shown} is not set in {origin}")


def read_env_file(path: Path, fail: _Fail) -> dict[str, str | None]:
    """A dotenv file read literally: ``${…}`` in a secret must stay ``${…}``."""
    text = _read_text(path, fail)
    from dotenv import dotenv_values

    return dotenv_values(stream=io.StringIO(text), interpolate=False)


def _read_text(path: Path, fail: _Fail) -> str:
    """A small regular file as text; never blocks on a FIFO, never reads a device."""
    try:
        raw = read_small(path, MAX_SECRET_BYTES)
    except UnreadableFile as exc:
        raise fail(f"{path}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text") from None
    if text.startswith(BOM):
        # Notepad's byte-order mark is not part of anyone's secret.
        if path not in _warned_bom:
            import logging  # rare; off `tokend token`'s fast path otherwise

            _warned_bom.add(path)
            logging.getLogger("tokend.secrets").warning(
                "%s: starts with a byte-order mark (BOM); ignoring it", path
            )
        text = text[len(BOM) :]
    return text


def read_secret_file(path: Path, fail: _Fail) -> str:
    """One secret from a file: its one line, without the newline ``echo`` leaves (also for
    the Redis password of ``[fleet]``)."""
    text = _read_text(path, fail)
    # `echo secret > file` leaves a newline; anything else in the file is the operator's.
    text = text.removesuffix("\n").removesuffix("\r")
    if "\n" in text:
        raise fail(f"{path}: holds more than one line")
    return text
