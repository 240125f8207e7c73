"""Disks that fail for real."""

from __future__ import annotations

import os
from pathlib import Path


def fill(directory: Path) -> Path:
    """Fill a filesystem to the last block; unlink the returned file to free it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
