"""The fast path's memo, its format and both its ends: after the validated path has
accepted a config, say so in the state directory (:func:`remember`), so that ``tokend
token`` may serve it without loading it (:func:`vouched`, read by
:mod:`tokend.cli.fastpath`). Standard library only at import: the fast path imports it."""

from __future__ import annotations

import hashlib
import json
import os

from tokend import __version__
from tokend.core.limits import MAX_CONFIG_BYTES

TYPE_CHECKING = False  # not typing's: see tokend.cli.fastpath
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

MEMO_DIR = "fastpath"
MEMO_FORMAT = 1
MAX_MEMO_BYTES = 1024
# What tokend.config.parse reads besides the file: the default state directory, "~", and
# $CREDENTIALS_DIRECTORY (sinks must not land on a systemd credential).
MEMO_ENVIRONMENT = ("STATE_DIRECTORY", "XDG_STATE_HOME", "HOME", "CREDENTIALS_DIRECTORY")


def config_digest(file: str, raw: bytes, environ: Mapping[str, str]) -> str:
    """What the validated path's verdict on a config depends on: its bytes, where it is
    (relative paths), the environment ``parse`` reads, and the version that judged it."""
    context = [MEMO_FORMAT, __version__, file, os.getuid(), [environ.get(k) for k in MEMO_ENVIRONMENT]]
    head = json.dumps(context).encode("utf-8")
    return hashlib.sha256(head + b"\0" + hashlib.sha256(raw).digest()).hexdigest()


def memo_path(state_dir: str, file: str) -> str:
    name = hashlib.sha256(file.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(state_dir, MEMO_DIR, name)  # noqa: PTH118 (no pathlib on the fast path)


def vouched(state_dir: str, file: str, raw: bytes, environ: Mapping[str, str]) -> bool:
    """Whether the validated path accepted exactly these bytes of ``file``, under this
    environment (an OSError when there is no memo: the fast path gives up on it)."""
    from tokend.cli.fastpath import read_regular

    memo = read_regular(memo_path(state_dir, file), MAX_MEMO_BYTES)
    return memo.decode("ascii").strip() == config_digest(file, raw, environ)


def remember(config: str, before: bytes | None, state_dir: Path, environ: Mapping[str, str]) -> None:
    """Let the fast path serve this config: called once ``load`` has accepted it.

    ``before`` is the file as read just before ``load``; the memo is written only if the
    file still holds exactly that, so an edit racing the validation is never vouched for.
    Nothing here may fail a command: the memo is an optimisation.
    """
    try:
        if before is None:
            return
        from tokend.cli.fastpath import absolute, decode, parse_toml, read_regular, state_dir_of

        file = absolute(config)
        if read_regular(file, MAX_CONFIG_BYTES) != before:
            return
        data = parse_toml(decode(before).removeprefix("\ufeff"))
        derived = state_dir_of(data, file, environ)
        from pathlib import Path

        if Path(derived) != state_dir:  # the fast path would look elsewhere: leave it
            return
        digest = config_digest(file, before, environ)
        memo = memo_path(derived, file)
        try:
            if read_regular(memo, MAX_MEMO_BYTES).decode("ascii").strip() == digest:
                return
        except (OSError, ValueError):
            pass
        from tokend.io.files import ensure_private_dir, write_atomic

        ensure_private_dir(state_dir)
        ensure_private_dir(state_dir / MEMO_DIR)
        write_atomic(Path(memo), f"{digest}\n".encode("ascii"), mode=0o600, durable=False)
    except Exception:  # noqa: S110 (no memo only means no fast path)
        pass


def read_config(config: str) -> bytes | None:
    """The config file's bytes as the fast path reads them, or None (see :func:`remember`)."""
    from tokend.cli.fastpath import GiveUp, absolute, read_regular

    try:
        return read_regular(absolute(config), MAX_CONFIG_BYTES)
    except (GiveUp, OSError):
        return None
