"""The fast path's memo: after the validated path has accepted a config, say so in the
state directory, so that ``tokend token`` may serve it without loading it (see
:mod:`tokend.cli.fastpath`, which reads what this writes)."""

from __future__ import annotations

from tokend.cli.fastpath import (
    MEMO_DIR,
    GiveUp,
    absolute,
    config_digest,
    decode,
    memo_path,
    parse_toml,
    read_regular,
    state_dir_of,
)
from tokend.core.limits import MAX_CONFIG_BYTES

TYPE_CHECKING = False  # not typing's: see tokend.cli.fastpath
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def remember(config: str, before: bytes | None, state_dir: Path, environ: Mapping[str, str]) -> None:
    """Let the fast path serve this config: called once ``load`` has accepted it.

    ``before`` is the file as read just before ``load``; the memo is written only if the
    file still holds exactly that, so an edit racing the validation is never vouched for.
    Nothing here may fail a command: the memo is an optimisation.
    """
    try:
        if before is None:
            return
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
            if read_regular(memo, 1024).decode("ascii").strip() == digest:
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
    try:
        return read_regular(absolute(config), MAX_CONFIG_BYTES)
    except (GiveUp, OSError):
        return None
