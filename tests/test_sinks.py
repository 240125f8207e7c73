"""Sinks: every format as its real reader reads it, written atomically, only on change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values
from pytest_httpserver import HTTPServer

from tokend.config import SinkConfig, SinkFormat
from tokend.sinks import SinkError, write_sink
from tokend.token import Token

from .conftest import fill

# Every character a real bearer token (RFC 6750 b64token, JWT) may carry.
ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_~+/ab=="
REFRESH = "refresh-must-never-leave-the-state-dir"


def token(access: str = ACCESS, expires_in: float = 3600) -> Token:
    now = time.time()
    return Token(access, now + expires_in, now, "Bearer", "api", REFRESH)


def sink(path: Path, fmt: SinkFormat = "raw", **kw: object) -> SinkConfig:
    env_name = "API_ACCESS_TOKEN" if fmt == "env" else None
    return SinkConfig(path=path, format=fmt, env_name=env_name, **kw)  # type: ignore[arg-type]


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_raw_is_the_token_and_a_newline(tmp_path: Path) -> None:
    write_sink(token(), sink(tmp_path / "t"))
    assert (tmp_path / "t").read_text() == ACCESS + "\n"
    out = subprocess.run(["sh", "-c", 'printf %s "$(cat "$1")"', "sh", tmp_path / "t"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == ACCESS


def test_env_is_read_by_posix_sh(tmp_path: Path) -> None:
    t = token()
    write_sink(t, sink(tmp_path / "t.env", "env"))
    out = subprocess.run(
        ["sh", "-c", '. "$1"; printf "%s|%s" "$API_ACCESS_TOKEN" "$API_ACCESS_TOKEN_EXPIRES_AT"',
         "sh", tmp_path / "t.env"], capture_output=True, text=True, check=True)
    assert out.stdout == f"{ACCESS}|{int(t.expires_at)}"


def test_env_is_read_by_python_dotenv_even_with_interpolation_on(tmp_path: Path) -> None:
    t = token()
    write_sink(t, sink(tmp_path / "t.env", "env"))
    values = dotenv_values(tmp_path / "t.env")  # the default: interpolate=True
    assert values == {"API_ACCESS_TOKEN": ACCESS, "API_ACCESS_TOKEN_EXPIRES_AT": str(int(t.expires_at))}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_header_works_with_curl_at_file(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api", headers={"Authorization": f"Bearer {ACCESS}"}).respond_with_data("ok")
    write_sink(token(), sink(tmp_path / "t.header", "header"))
    out = subprocess.run(["curl", "-sS", "--fail", "-H", f"@{tmp_path / 't.header'}",
                          httpserver.url_for("/api")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok"
    assert (tmp_path / "t.header").read_text() == f"Authorization: Bearer {ACCESS}\n"


def test_json_has_the_documented_fields(tmp_path: Path) -> None:
    t = token()
    write_sink(t, sink(tmp_path / "t.json", "json"))
    with open(tmp_path / "t.json") as stream:
        data = json.load(stream)
    assert data["access_token"] == ACCESS and data["token_type"] == "Bearer"
    assert data["expires_at_unix"] == int(t.expires_at)
    assert data["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t.expires_at)))
    assert data["obtained_at"].endswith("Z") and data["scope"] == "api"
    assert set(data) == {"access_token", "token_type", "expires_at", "expires_at_unix",
                         "obtained_at", "scope"}


@pytest.mark.parametrize("fmt", ["raw", "json", "env", "header"])
def test_no_format_carries_the_refresh_token(tmp_path: Path, fmt: SinkFormat) -> None:
    write_sink(token(), sink(tmp_path / "t", fmt))
    assert REFRESH not in (tmp_path / "t").read_text()


def test_mode_is_applied_exactly_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_sink(token(), sink(tmp_path / "t", mode=0o640))
    finally:
        os.umask(old)
    assert (tmp_path / "t").stat().st_mode & 0o7777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owner_and_group_are_set(tmp_path: Path) -> None:
    write_sink(token(), sink(tmp_path / "t", owner="nobody", group=65534))
    st = (tmp_path / "t").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_an_unchanged_token_is_not_rewritten(tmp_path: Path) -> None:
    t, s = token(), sink(tmp_path / "t.json", "json")
    assert write_sink(t, s).written
    before = os.stat(tmp_path / "t.json")
    assert not write_sink(t, s).written
    after = os.stat(tmp_path / "t.json")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_new_token_or_mode_is_rewritten_by_rename(tmp_path: Path) -> None:
    s = sink(tmp_path / "t")
    write_sink(token("first"), s)
    inode = os.stat(tmp_path / "t").st_ino
    assert write_sink(token("second"), s).written
    assert os.stat(tmp_path / "t").st_ino != inode  # replaced, never edited in place
    assert write_sink(token("second"), sink(tmp_path / "t", mode=0o640)).written
    assert (tmp_path / "t").read_text() == "second\n"
    assert temp_files(tmp_path) == []


def test_unknown_owner_fails_and_keeps_the_old_file(tmp_path: Path) -> None:
    write_sink(token("old"), sink(tmp_path / "t"))
    with pytest.raises(SinkError, match="no such user"):
        write_sink(token("new"), sink(tmp_path / "t", owner="no-such-user-tokend"))
    assert (tmp_path / "t").read_text() == "old\n"


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="does not exist"):
        write_sink(token(), sink(tmp_path / "gone" / "t"))


def test_temp_files_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead_pid = subprocess.Popen(["true"])  # a pid that has certainly exited
    dead_pid.wait()
    crashed = tmp_path / f".t.tokend-{dead_pid.pid}-deadbeef0000.tmp"
    crashed.write_text("half a tok")  # young, but its writer is gone: a crash's leftover
    alive = tmp_path / f".t.tokend-{os.getppid()}-0123456789ab.tmp"
    alive.write_text("another writer's")  # its writer lives: may be work in progress
    old_alive = tmp_path / f".u.tokend-{os.getppid()}-0123456789ab.tmp"
    old_alive.write_text("stale")
    an_hour_ago = time.time() - 3600
    os.utime(old_alive, (an_hour_ago, an_hour_ago))
    unrelated = tmp_path / ".t.swp"
    unrelated.write_text("an editor's")
    write_sink(token(), sink(tmp_path / "t"))
    assert not crashed.exists() and not old_alive.exists()
    assert alive.exists() and unrelated.exists()


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(small_tmpfs: Path) -> None:
    full_tmpfs = small_tmpfs
    s = sink(full_tmpfs / "api.json", "json")
    write_sink(token("old-token"), s)
    filler = fill(full_tmpfs)
    with pytest.raises(SinkError, match="No space left"):
        write_sink(token("new-token-" + "x" * 8000), s)
    assert json.loads((full_tmpfs / "api.json").read_text())["access_token"] == "old-token"
    assert temp_files(full_tmpfs) == []
    filler.unlink()
    assert write_sink(token("new-token"), s).written
    assert json.loads((full_tmpfs / "api.json").read_text())["access_token"] == "new-token"


def test_concurrent_writes_to_one_directory_all_land(tmp_path: Path) -> None:
    """Directory fsyncs are shared between writers (group commit); every write still lands."""
    import threading

    from tokend.fsio import write_atomic

    def write(i: int) -> None:
        for round_ in range(5):
            write_atomic(tmp_path / f"f{i}", f"{i}-{round_}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {p.read_text() for p in tmp_path.glob("f*")} == {f"{i}-4" for i in range(16)}
    assert temp_files(tmp_path) == []
