"""Atomic, durable file replacement: a reader sees the old file or the new one, never a part.

Used for both the sinks other programs read and tokend's own state. The temp file is
created next to the target (same filesystem, so ``rename`` is atomic) with ``O_EXCL`` and
the final mode, so no moment exists in which it is readable by anyone it should not be.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

TEMP_INFIX = ".tokend-"
TEMP_SUFFIX = ".tmp"


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_INFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temp_of(candidate: Path, target: Path) -> bool:
    name = candidate.name
    return name.startswith(f".{target.name}{TEMP_INFIX}") and name.endswith(TEMP_SUFFIX)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, uid: int = -1, gid: int = -1) -> None:
    """Replace ``path`` with ``data``: temp file, fchown, write, fsync, rename, fsync dir.

    On any failure the previous file is untouched and the temp file is gone.
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits the operator asked for
            if needs_chown(os.fstat(fd), uid, gid):
                # Only when it changes something: the hardened unit's seccomp filter refuses
                # every chown call, but a file created in the right group needs none.
                os.fchown(fd, uid, gid)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def needs_chown(st: os.stat_result, uid: int, gid: int) -> bool:
    return (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a crash can bring the old file back."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temps(target: Path, *, older_than: float, now: float | None = None) -> int:
    """Remove temp files a crash left beside ``target``; a young one may be another writer's."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return 0
    for entry in entries:
        candidate = Path(entry.path)
        if not is_temp_of(candidate, target):
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                os.unlink(candidate)
                removed += 1
    return removed
