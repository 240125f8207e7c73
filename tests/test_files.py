"""fsio: reads that never block on what is not a file, the StrictModes check of a directory
chain, the cross-process lock, and private directories whatever the umask."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.io.files import (
    FileLock,
    NotRegularFile,
    ensure_private_dir,
    read_regular,
    unsafe_directory_chain,
)

OTHER_UID = 65534  # nobody: neither root nor us

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")


# --------------------------------------------------------------------------- read_regular


@pytest.mark.timeout(10)  # the old read blocked here for ever: fail, do not hang the suite
def test_read_regular_refuses_a_fifo_at_once_even_with_no_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(NotRegularFile, match="not a regular file \\(a FIFO\\)"):
        read_regular(fifo, 1024)
    assert time.monotonic() - started < 2


def test_read_regular_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile, match="a directory"):
        read_regular(tmp_path, 1024)


def test_read_regular_refuses_a_device_instead_of_reading_it() -> None:
    # /dev/zero would hand out limit + 1 bytes of zeros as if they were a secret.
    with pytest.raises(NotRegularFile, match="a device"):
        read_regular("/dev/zero", 1024)


def test_not_a_regular_file_is_an_oserror_so_every_reader_already_handles_it(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        read_regular(tmp_path, 1024)
    assert caught.value.filename == str(tmp_path)


def test_read_regular_reads_at_most_limit_plus_one_bytes_and_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(tmp_path / "big")  # Kubernetes secrets are links
    assert read_regular(tmp_path / "link", 4) == b"01234"  # one more: the caller says "too large"
    assert read_regular(tmp_path / "big", 100) == b"0123456789"


# --------------------------------------------------------------------------- unsafe_directory_chain


def test_a_private_directory_chain_is_safe(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert unsafe_directory_chain(tmp_path / "a" / "b") is None


@needs_root
def test_a_directory_owned_by_another_uid_is_reported(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    reason = unsafe_directory_chain(theirs)
    assert reason == f"{theirs} is owned by uid {OTHER_UID}"


@needs_root
def test_a_directory_below_one_owned_by_another_uid_is_reported_too(tmp_path: Path) -> None:
    """The owner of a parent can rename the child away and put their own in its place."""
    theirs = tmp_path / "theirs"
    (theirs / "ours").mkdir(parents=True, mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    reason = unsafe_directory_chain(theirs / "ours")
    assert reason is not None and f"{theirs} is owned by uid {OTHER_UID}" in reason


@pytest.mark.parametrize(("mode", "who"), [(0o770, "its group"), (0o777, "others"), (0o757, "others")])
def test_a_directory_writable_by_group_or_others_and_not_sticky_is_reported(
    tmp_path: Path, mode: int, who: str
) -> None:
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    shared.chmod(mode)
    expected = f"{shared} is writable by {who} (mode {mode:04o})"
    assert unsafe_directory_chain(shared) == expected
    assert unsafe_directory_chain(shared / "sub") == expected  # anywhere on the way


@needs_root
def test_a_symlinked_directory_whose_link_is_owned_by_another_uid_is_reported(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert unsafe_directory_chain(link) is None  # a link of ours to a safe directory is fine
    os.lchown(link, OTHER_UID, OTHER_UID)  # now they can point it anywhere
    assert unsafe_directory_chain(link) == f"symlink {link} is owned by uid {OTHER_UID}"
    assert unsafe_directory_chain(link / "deeper") is not None


def test_a_symlink_is_followed_to_the_directories_it_leads_through(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "target").mkdir(parents=True)
    shared.chmod(0o777)
    (tmp_path / "link").symlink_to(shared / "target")
    reason = unsafe_directory_chain(tmp_path / "link")
    assert reason is not None and f"{shared} is writable by others" in reason


def test_a_sticky_world_writable_parent_like_tmp_is_fine(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    (sticky / "ours").mkdir(parents=True, mode=0o755)
    sticky.chmod(0o1777)  # only an entry's owner may rename or replace it
    assert unsafe_directory_chain(sticky / "ours") is None
    assert unsafe_directory_chain(sticky) is None


# --------------------------------------------------------------------------- FileLock

HOLDER = """
import sys
from pathlib import Path
from tokend.io.files import FileLock
lock = FileLock(Path(sys.argv[1]))
assert lock.acquire()
lock.write_pid()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock tmp_path/lock until told to release it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_held_lock_cannot_be_acquired_names_its_holder_and_is_free_once_released(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    lock = FileLock(tmp_path / "lock")
    started = time.monotonic()
    assert not lock.acquire(wait=0.3)
    assert time.monotonic() - started >= 0.3  # it did wait, and then gave up
    assert lock.holder() == holder.pid
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"
    assert lock.acquire()
    lock.release()


def test_a_lock_is_released_when_its_holder_is_killed(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = FileLock(tmp_path / "lock")
    assert not lock.acquire()
    holder.kill()  # kill -9: no chance to clean up, and no stale lock either
    holder.wait()
    assert lock.acquire()
    lock.release()


def test_two_locks_in_one_process_exclude_each_other_until_closed(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "lock"), FileLock(tmp_path / "lock")
    assert first.acquire()
    first.write_pid()
    assert not second.acquire()
    assert second.holder() == os.getpid()
    first.release()
    assert second.acquire()
    second.release()


# --------------------------------------------------------------------------- ensure_private_dir


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o277])
def test_ensure_private_dir_creates_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        ensure_private_dir(tmp_path / "state")
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o7777 == 0o700


def test_ensure_private_dir_creates_missing_parents_with_the_default_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ensure_private_dir(tmp_path / "var" / "lib" / "tokend")
    finally:
        os.umask(old)
    assert (tmp_path / "var" / "lib").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "var" / "lib" / "tokend").stat().st_mode & 0o7777 == 0o700


def test_ensure_private_dir_leaves_an_existing_directory_as_the_operator_made_it(tmp_path: Path) -> None:
    existing = tmp_path / "state"
    existing.mkdir()
    existing.chmod(0o750)
    ensure_private_dir(existing)
    assert existing.stat().st_mode & 0o7777 == 0o750
