"""Notice when the config, an env file, a secret file or a template file may have changed.

Editors save by writing a temp file and renaming it over the original, ``sed -i`` does the
same, config management swaps whole directories, Kubernetes flips a ``..data`` symlink. A
watch on the file itself loses track after the first of these, so tokend watches the
*directories*, and counts an event as relevant when its source or destination is a
"watch point": the file's path or any symlink met on the way to its content. Whether
anything really changed is decided afterwards, by content hash, so a touch or a rewrite
with the same bytes costs nothing. A slow stat-and-hash poll backs this up for queue
overflows and filesystems without inotify.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from tokend.config import MAX_CONFIG_BYTES, Config
from tokend.io.files import read_regular

log = logging.getLogger("tokend.watch")

MAX_WATCHED_BYTES = MAX_CONFIG_BYTES  # the largest watched file: the config
QUIET = 0.3  # a burst of events becomes one reload after this much quiet...
MAX_WAIT = 2.0  # ...and never waits longer than this after its first event
RELEVANT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
# Subscribed to at the kernel (it becomes the inotify mask): without it every read of a
# secret, a thousand at a fan-out, comes back as open/access/close events for watchdog to
# build and discard under the GIL, which cost a third of a 1,000-credential fan-out.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


# --------------------------------------------------------------------------- what to watch


def watched_files(config: Config) -> set[Path]:
    """The config, the files its credentials' tokens depend on, and the template files of
    template sinks (a change there re-renders the sinks, with no request)."""
    files = {config.path}
    for cred in config.credentials.values():
        files |= cred.files()
        files |= {sink.template_file for sink in cred.sinks if sink.template_file is not None}
    return files


def watch_points(path: Path, *, limit: int = 40) -> set[Path]:
    """The file's path and every symlink met while resolving it, all as unresolved paths.

    For a Kubernetes secret ``/s/password -> ..data/password`` with ``/s/..data -> ..2024``
    that is ``/s/password``, ``/s/..data`` and ``/s/..2024/password``: the swap renames
    ``..data``, which is what makes it visible.
    """
    points: set[Path] = set()
    pending = [Path(os.path.normpath(Path(path).absolute()))]  # absolute, symlinks kept
    while pending and limit > 0:
        limit -= 1
        current = pending.pop()
        walked = Path(current.anchor)
        parts = current.parts[1:]
        for i, part in enumerate(parts):
            walked = walked / part
            if walked.is_symlink():
                points.add(walked)
                try:
                    target = walked.parent / walked.readlink()
                except OSError:
                    break
                rest = parts[i + 1 :]
                pending.append(Path(os.path.normpath(target.joinpath(*rest))))
                break
        else:
            points.add(walked)
    return points


# --------------------------------------------------------------------------- did it change


@dataclass(frozen=True, slots=True)
class FileState:
    signature: tuple[int, ...] | None  # stat of the content (through symlinks); None: missing
    digest: str | None  # sha256 of the content; None: missing or unreadable


def read_state(path: Path, previous: FileState | None = None) -> FileState:
    """Stat the file and hash it only when the stat says it may have changed."""
    try:
        st = path.stat()
    except OSError:
        return FileState(None, None)
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if previous is not None and previous.signature == signature:
        return previous
    try:  # never open() a FIFO here: it would block the main loop until someone writes
        digest = hashlib.sha256(read_regular(path, MAX_WATCHED_BYTES)).hexdigest()
    except OSError:
        digest = None
    return FileState(signature, digest)


def read_states(paths: Iterable[Path], previous: Mapping[Path, FileState]) -> dict[Path, FileState]:
    return {path: read_state(path, previous.get(path)) for path in paths}


def changed(old: Mapping[Path, FileState], new: Mapping[Path, FileState]) -> set[Path]:
    """Files whose content differs; a file new to the watch counts only if it differs from
    what it was when first seen, which is nothing to compare with, so it does not count."""
    return {path for path, state in new.items() if path in old and old[path].digest != state.digest}


# --------------------------------------------------------------------------- debounce (pure)


class Debouncer:
    """Turns a burst of events into one action: after QUIET of silence, or MAX_WAIT at most."""

    def __init__(self, quiet: float = QUIET, max_wait: float = MAX_WAIT) -> None:
        self.quiet, self.max_wait = quiet, max_wait
        self.first: float | None = None
        self.last: float | None = None

    @property
    def pending(self) -> bool:
        return self.first is not None

    def touch(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_wait)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        self.first = self.last = None


# --------------------------------------------------------------------------- the observer


class Watcher:
    """A watchdog observer on the directories of the watch points.

    ``notify`` is called from the observer's thread and must only queue; whatever it or the
    matching raises is logged and swallowed, because an exception in a handler kills the
    observer thread for good.
    """

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify
        self.points: frozenset[str] = frozenset()
        self.directories: frozenset[str] = frozenset()
        self.observer: BaseObserver | None = None
        self.lock = threading.Lock()

    def update(self, files: Iterable[Path]) -> None:
        """Watch these files from now on (rescheduling only if the directories changed).

        A reschedule stops one observer and starts another: a change in between (kubelet
        rotating again right after the swap that moved the directories) has no observer to
        see it. So after a reschedule ``notify`` is called once: the reloader compares the
        content hashes, which costs nothing when nothing changed."""
        points = {p for f in files for p in watch_points(f)}
        directories = {str(p.parent) for p in points if p.parent.is_dir()}
        with self.lock:
            self.points = frozenset(str(p) for p in points)
            if frozenset(directories) == self.directories and self.alive():
                return
            self.directories = frozenset(directories)
            rescheduled = self.observer is not None
        self.restart()
        if rescheduled:
            self.notify()

    def alive(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def restart(self) -> None:
        """A new observer on the directories. One of them may vanish between being listed
        and being watched (watchdog adds the inotify watches only when it starts): kubelet
        removes the previous ``..TIMESTAMP`` directory right after its ``..data`` swap. Then
        the directories still there are tried again; a watch that cannot start costs the
        watch (the 30 s poll stays, the heartbeat restarts it), never the daemon."""
        self.stop()
        for _ in range(3):
            observer = Observer()
            handler = _Handler(self)
            for directory in sorted(self.directories):
                try:
                    observer.schedule(handler, directory, recursive=False, event_filter=EVENT_FILTER)
                except OSError as exc:
                    log.warning("cannot watch %s (%s); relying on the 30 s poll", directory, exc.strerror)
            observer.daemon = True
            try:
                observer.start()
            except OSError as exc:
                with contextlib.suppress(Exception):  # the emitters started before the failure
                    observer.stop()
                log.debug("the watch did not start (%s); trying the directories still there", exc.strerror)
                with self.lock:
                    self.directories = frozenset(d for d in self.directories if Path(d).is_dir())
                continue
            self.observer = observer
            return
        log.warning("the file watcher cannot start; relying on the 30 s poll")

    def ensure_alive(self) -> bool:
        """Restart a dead observer; True if it had to."""
        if self.alive():
            return False
        log.warning("the file watcher stopped; restarting it")
        self.restart()
        return True

    def stop(self) -> None:
        if self.observer is not None:
            # watchdog's inotify reader, woken by the stop, logs a bare ERROR ("queue_events()
            # called when the thread is inactive") to the root logger: the stop's own noise.
            logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
            self.observer.stop()
            self.observer = None

    def relevant(self, event: FileSystemEvent) -> bool:
        if event.event_type not in RELEVANT_EVENTS:
            return False
        paths = {_text(event.src_path), _text(event.dest_path)}
        return not paths.isdisjoint(self.points)


class _Handler(FileSystemEventHandler):
    """watchdog calls ``dispatch`` for every event; nothing may escape it."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            if self.watcher.relevant(event):
                log.debug("%s %s %s", event.event_type, _text(event.src_path), _text(event.dest_path))
                self.watcher.notify()
        except Exception:
            log.exception("file watch handler failed; the event is dropped, the watch goes on")


def _text(path: str | bytes) -> str:
    return os.fsdecode(path) if path else ""
