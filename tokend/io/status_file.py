"""``status.json`` in the state directory: the daemon writes it, ``tokend status`` reads it
without talking to the daemon. Atomic, not fsynced (a lost one is rewritten within a
second), 0644: it holds fingerprints only, and monitoring may run as another user."""

from __future__ import annotations

from pathlib import Path

from tokend.core.health import DaemonStatus
from tokend.io.files import ensure_private_dir, read_regular, sweep_once, write_atomic

STATUS_FILE = "status.json"
MAX_STATUS_BYTES = 64 * 1024 * 1024


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE


def write_status(state_dir: Path, status: DaemonStatus) -> None:
    ensure_private_dir(state_dir)
    sweep_once(state_dir)  # temps of a writer killed mid-write
    write_atomic(status_path(state_dir), status.to_json(), mode=0o644, durable=False)


def read_status(state_dir: Path) -> DaemonStatus:
    """Raises OSError or ValueError when there is no readable status."""
    try:
        return DaemonStatus.from_json(read_regular(status_path(state_dir), MAX_STATUS_BYTES))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unrecognised status file: {exc}") from None
    except RecursionError:  # nested past the parser's depth: not ours
        raise ValueError("unrecognised status file: nested too deep") from None
