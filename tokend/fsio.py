"""Atomic, durable file replacement: a reader sees the old file or the new one, never a part.

Used for both the sinks other programs read and tokend's own state. The temp file is
created next to the target (same filesystem, so ``rename`` is atomic) with ``O_EXCL`` and
the final mode, so no moment exists in which it is readable by anyone it should not be.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

TEMP_INFIX = ".tokend-"
TEMP_SUFFIX = ".tmp"


def temp_name(target: Path) -> Path:
    """``.<name>.tokend-<pid>-<random>.tmp``: the pid tells a sweep whose temp it is."""
    return target.with_name(
        f".{target.name}{TEMP_INFIX}{os.getpid()}-{os.urandom(6).hex()}{TEMP_SUFFIX}")


def temp_owner(name: str) -> int | None:
    """The pid that wrote a temp file of ours, or None if the name is not one."""
    if not (name.startswith(".") and TEMP_INFIX in name and name.endswith(TEMP_SUFFIX)):
        return None
    pid = name.rsplit(TEMP_INFIX, 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, uid: int = -1, gid: int = -1,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file, fchown, write, fsync, rename, fsync dir.

    On any failure the previous file is untouched and the temp file is gone. ``durable =
    False`` skips both fsyncs: still atomic for every reader and across a process crash,
    but a power loss may bring back the previous file. For tokend's own cache and status,
    whose loss costs one more token request, never for a sink.
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
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def needs_chown(st: os.stat_result, uid: int, gid: int) -> bool:
    return (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a crash can bring the old file back."""
    _dir_sync.sync(directory)


def _fsync_dir_now(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupSync:
    """Group commit for directory fsyncs: one fsync covers every rename made before it
    started, so sixteen workers renaming into one directory wait for one or two fsyncs
    instead of queueing sixteen. A caller returns only after an fsync that *began after
    its request* has finished, so its own rename is always covered."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.requested: dict[Path, int] = {}
        self.done: dict[Path, int] = {}
        self.running: set[Path] = set()

    def sync(self, directory: Path) -> None:
        with self.cond:
            ticket = self.requested[directory] = self.requested.get(directory, 0) + 1
            while directory in self.running:
                self.cond.wait()
            if self.done.get(directory, 0) >= ticket:
                return  # an fsync that began after our request has covered us
            self.running.add(directory)
            covered = self.requested[directory]
        try:
            _fsync_dir_now(directory)
        except BaseException:
            with self.cond:  # nobody is covered; the next waiter tries for itself
                self.running.discard(directory)
                self.cond.notify_all()
            raise
        with self.cond:
            self.running.discard(directory)
            self.done[directory] = max(self.done.get(directory, 0), covered)
            self.cond.notify_all()


_dir_sync = _GroupSync()


def sweep_temps(directory: Path, *, older_than: float, now: float | None = None) -> int:
    """Remove the temp files that crashed writers left in ``directory``.

    A temp whose writer is dead goes at once (a restart right after a crash must not keep
    it); one whose pid lives on goes only when old, since it may be another writer's work
    in progress (or a reused pid).
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        pid = temp_owner(entry.name)
        if pid is None or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if not pid_alive(pid) or now - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                os.unlink(entry.path)
                removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, just not ours
    return True
