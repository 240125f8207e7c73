"""Atomic, durable file replacement: a reader sees the old file or the new one, never a part.

Used for both the sinks other programs read and tokend's own state. The temp file is
created next to the target (same filesystem, so ``rename`` is atomic) with ``O_EXCL`` and
mode 0600, given its group, then its final mode, then its owner: no moment exists in which
it is readable by anyone it should not be (a file created 0640 in the daemon's own group
would be, until the ``fchown`` to the consumer's group).

Reads of files an operator points tokend at go through :func:`read_regular`: a FIFO, a
device or a directory there must be a clear error, never a read that blocks the daemon.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TEMP_INFIX = ".tokend-"
TEMP_SUFFIX = ".tmp"


def temp_name(target: Path) -> Path:
    """``.<name>.tokend-<pid>-<random>.tmp``: the pid tells a sweep whose temp it is."""
    return target.with_name(f".{target.name}{TEMP_INFIX}{os.getpid()}-{os.urandom(6).hex()}{TEMP_SUFFIX}")


def temp_owner(name: str) -> int | None:
    """The pid that wrote a temp file of ours, or None if the name is not one."""
    if not (name.startswith(".") and TEMP_INFIX in name and name.endswith(TEMP_SUFFIX)):
        return None
    pid = name.rsplit(TEMP_INFIX, 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o600, uid: int = -1, gid: int = -1, durable: bool = True
) -> None:
    """Replace ``path`` with ``data``: temp file, fchown, write, fsync, rename, fsync dir.

    On any failure the previous file is untouched and the temp file is gone. ``durable =
    False`` skips both fsyncs: still atomic for every reader and across a process crash,
    but a power loss may bring back the previous file. For tokend's own cache and status,
    whose loss costs one more token request, never for a sink.
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            st = os.fstat(fd)
            # Chown only when it changes something: the hardened unit's seccomp filter
            # refuses every chown call, but a file created in the right group needs none.
            # The group first, then the final mode (the umask may also have taken bits):
            # until the group is the consumer's, it is the daemon's, which must not read
            # the token. The owner last: once the file is given away, a daemon with
            # CAP_CHOWN but not CAP_FOWNER can no longer change its mode.
            if needs_chown(st, -1, gid):
                give(fd, -1, gid)
            os.fchmod(fd, mode)
            if needs_chown(st, uid, -1):
                give(fd, uid, -1)
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


class ChownRefused(PermissionError):
    """The kernel refused to give a new file its owner (``owner``) or its group."""

    def __init__(self, errno: int, strerror: str, *, owner: bool) -> None:
        super().__init__(errno, strerror)
        self.owner = owner


def give(fd: int, uid: int, gid: int) -> None:
    try:
        os.fchown(fd, uid, gid)
    except PermissionError as exc:
        raise ChownRefused(
            exc.errno or 1, exc.strerror or "Operation not permitted", owner=uid != -1
        ) from None


def seccomp_filtered() -> bool:
    """Whether a seccomp filter (systemd's ``SystemCallFilter=``, a container's profile)
    screens this process's system calls: then an EPERM may be the filter's, not the
    kernel's permission check. (``Seccomp: 2`` in /proc/self/status.)"""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            return any(line.split() == ["Seccomp:", "2"] for line in status)
    except OSError:
        return False


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


STALE_TEMP_SECONDS = 60.0
_swept: set[Path] = set()
_swept_lock = threading.Lock()


def sweep_once(directory: Path) -> None:
    """Sweep a directory at its first write in this process, not at every write: a
    directory of a thousand sinks would otherwise be scanned a thousand times per round.
    (Temps this process leaves on a failed write it removes itself.)"""
    with _swept_lock:
        if directory in _swept:
            return
        _swept.add(directory)
    sweep_temps(directory, older_than=STALE_TEMP_SECONDS)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, just not ours
    return True


class NotRegularFile(OSError):
    """A FIFO, device, socket or directory where tokend expects a file of content."""


@dataclass(frozen=True)
class OpenedFile:
    """What an open descriptor is, for a judge to decide on before a byte is read: its
    ``fstat`` and the path the kernel opened (every symlink resolved at the open itself).
    Judging these, not the path, is what makes the file judged the file read: a symlink
    flipped after the open changes nothing."""

    st: os.stat_result
    real: str


Judge = Callable[[OpenedFile], str | None]


class RefusedFile(OSError):
    """A judge refused the open file; ``strerror`` says why, in words for a one-line error."""


def opened_path(fd: int, fallback: Path | str) -> str:
    """The path of what ``fd`` is open on (``/proc/self/fd``); without /proc, the path's
    realpath now (weaker: resolved again, not at the open)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def read_regular(path: Path | str, limit: int, judge: Judge | None = None) -> bytes:
    """At most ``limit + 1`` bytes of a regular file (the caller judges "too large").

    Opened with ``O_NONBLOCK`` so that a FIFO cannot block the open, then refused by
    ``fstat``: a FIFO, device or directory is never read. Follows symlinks (Kubernetes
    secrets and systemd credentials are links). ``judge``, given the open file, may refuse
    it (:class:`RefusedFile`) before anything is read from it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(0, f"not a regular file ({file_kind(st.st_mode)})", str(path))
        if judge is not None and (reason := judge(OpenedFile(st, opened_path(fd, path)))) is not None:
            raise RefusedFile(0, reason, str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class UnreadableFile(ValueError):
    """Why a small file could not be had, in words for a one-line error (the caller adds
    the file and the key)."""


def read_small(
    path: Path | str, limit: int, *, limit_words: str | None = None, judge: Judge | None = None
) -> bytes:
    """A whole small regular file (:func:`read_regular`), or :class:`UnreadableFile`
    saying why not: missing, a directory, a FIFO or device, unreadable, refused by
    ``judge``, or over ``limit`` bytes (``limit_words`` says the limit otherwise, e.g. "64 KiB")."""
    try:
        raw = read_regular(path, limit, judge)
    except FileNotFoundError:
        raise UnreadableFile("no such file") from None
    except IsADirectoryError:
        raise UnreadableFile("is a directory") from None
    except RefusedFile as exc:
        raise UnreadableFile(exc.strerror) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read: {exc.strerror}") from None
    if len(raw) > limit:
        raise UnreadableFile(f"larger than {limit_words or f'{limit} bytes'}; is this the right file?")
    return raw


def file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


KERNEL_TREES = ("/proc", "/sys", "/dev")  # their "files" are the host's state, never ours to read


def _tree_devices() -> frozenset[int]:
    """The filesystems mounted on the kernel trees; one that is the root's own (a chroot's
    plain /dev directory) says nothing and is left out."""
    devices = set()
    with contextlib.suppress(OSError):
        root = os.stat("/").st_dev
        for tree in KERNEL_TREES:
            with contextlib.suppress(OSError):
                if (device := os.stat(tree).st_dev) != root:
                    devices.add(device)
    return frozenset(devices)


def kernel_file(opened: OpenedFile) -> bool:
    """Whether an open file lies in /proc, /sys or /dev, by where the kernel opened it and
    by its filesystem (a bind mount of /proc elsewhere is still /proc)."""
    if any(opened.real == tree or opened.real.startswith(tree + os.sep) for tree in KERNEL_TREES):
        return True
    return opened.st.st_dev in _tree_devices()


def readable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o004)


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 (and its missing parents with the default mode): it holds
    refresh tokens. An existing directory is left as the operator made it."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # the umask may have been wider than 0077


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def untrusted_writer(st: os.stat_result, trusted: frozenset[int]) -> str | None:
    """Why someone other than tokend's user or root could change this entry, or None."""
    if st.st_uid not in trusted:
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = "others" if st.st_mode & 0o002 else "its group"
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def unsafe_directory_chain(
    directory: Path, *, trusted: frozenset[int] | None = None, max_links: int = 40
) -> str | None:
    """Why a directory's path could be redirected by someone else, or None if it cannot.

    Like sshd's StrictModes: every directory on the way (through every symlink) must be
    owned by root or tokend's user and not writable by group or others, except a sticky
    directory such as /tmp, whose entries only their owners may replace; every symlink on
    the way must be owned by root or tokend's user.
    """
    trusted = trusted_uids() if trusted is None else trusted
    # Strings, not Paths: this runs at every sink write, and pathlib's parsing cost more
    # than the lstat calls. Components split as pathlib would: no "" or "." ones.
    pending = _components(os.path.abspath(directory))
    current = "/"
    links = 0
    try:
        reason = untrusted_writer(os.lstat(current), trusted)
        if reason:
            return f"/ is {reason}"
        while pending:
            part = pending.pop(0)
            if part == "..":
                current = os.path.dirname(current)
                continue
            candidate = f"/{part}" if current == "/" else f"{current}/{part}"
            st = os.lstat(candidate)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > max_links:
                    return f"{candidate}: too many symlinks"
                if st.st_uid not in trusted:
                    return f"symlink {candidate} is owned by uid {st.st_uid}"
                target = os.readlink(candidate)
                if target.startswith("/"):
                    current = "/"
                pending[:0] = _components(target)
                continue
            reason = untrusted_writer(st, trusted)
            if reason:
                return f"{candidate} is {reason}"
            current = candidate
    except FileNotFoundError:
        return None  # nothing there to redirect; the write will say the directory is missing
    except OSError as exc:
        return f"{exc.filename or directory}: {exc.strerror}"
    return None


def _components(path: str) -> list[str]:
    """A path's names, as ``Path(path).parts`` less the root (no empty or "." ones)."""
    return [part for part in path.split("/") if part not in ("", ".")]


class FileLock:
    """An exclusive ``flock`` on a file: released by the kernel when the process dies, so
    a ``kill -9`` never leaves a stale lock. Locks of one process on separate opens of a
    file exclude each other too, so worker threads can use it among themselves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, poll: float = 0.05) -> bool:
        """Try for up to ``wait`` seconds; False if someone else still holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll)
                continue
            except OSError:
                os.close(fd)
                raise
            self.fd = fd
            return True

    def write_pid(self) -> None:
        """Say who holds it, for the message of the one that cannot have it."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def holder(self) -> int | None:
        try:
            text = read_regular(self.path, 64).decode("ascii", "replace").strip()
        except OSError:
            return None
        return int(text) if text.isascii() and text.isdigit() else None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def socket_directory_problem(directory: Path) -> str | None:
    """Why a unix socket may not be made in ``directory``, or None. Its path must be safe as
    a sink's (StrictModes), and the directory itself must be tokend's user's or root's and
    writable by no one else, sticky or not: in a sticky world-writable directory such as
    /tmp another user can bind the name first and have the callers talk to them."""
    reason = unsafe_directory_chain(directory)
    if reason is not None:
        return f"directory path is not safe: {reason}"
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"directory {directory}: {exc.strerror}"
    if st.st_uid not in trusted_uids():
        return f"directory {directory} is owned by uid {st.st_uid}, not tokend's user or root"
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        return (
            f"directory {directory} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): "
            "another user could take the socket's name first; use a directory of tokend's own "
            "(e.g. RuntimeDirectory=, /run/tokend)"
        )
    return None
