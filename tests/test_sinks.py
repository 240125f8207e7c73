"""Sinks: every format as its real reader reads it, written atomically, only on change."""

from __future__ import annotations

import base64
import json
import netrc
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values
from pytest_httpserver import HTTPServer

from tokend.config import SinkConfig, SinkFormat
from tokend.core.exit_codes import ExitCode
from tokend.core.templates import check
from tokend.core.tokens import Token
from tokend.io.sinks import SinkError, write_sink

from .support.configs import credential_toml, write_config
from .support.disks import fill
from .support.endpoint import TokenEndpoint
from .support.processes import run_tokend

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
    out = subprocess.run(
        ["sh", "-c", 'printf %s "$(cat "$1")"', "sh", tmp_path / "t"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == ACCESS


def test_env_is_read_by_posix_sh(tmp_path: Path) -> None:
    t = token()
    write_sink(t, sink(tmp_path / "t.env", "env"))
    out = subprocess.run(
        [
            "sh",
            "-c",
            '. "$1"; printf "%s|%s" "$API_ACCESS_TOKEN" "$API_ACCESS_TOKEN_EXPIRES_AT"',
            "sh",
            tmp_path / "t.env",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
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
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-H", f"@{tmp_path / 't.header'}", httpserver.url_for("/api")],
        capture_output=True,
        text=True,
        timeout=30,
    )
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
    assert set(data) == {
        "access_token",
        "token_type",
        "expires_at",
        "expires_at_unix",
        "obtained_at",
        "scope",
    }


@pytest.mark.parametrize("fmt", ["raw", "json", "env", "header"])
def test_no_format_carries_the_refresh_token(tmp_path: Path, fmt: SinkFormat) -> None:
    write_sink(token(), sink(tmp_path / "t", fmt))
    assert REFRESH not in (tmp_path / "t").read_text()


# --------------------------------------------------------------------------- template sinks


def template(path: Path, text: str, **kw: object) -> SinkConfig:
    """A template sink as the config makes it: the template checked, its credential named."""
    check(text)
    return SinkConfig(path=path, format="template", template=text, template_text=text, credential="api", **kw)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_netrc_template_is_read_by_curl_and_by_python(tmp_path: Path, httpserver: HTTPServer) -> None:
    basic = base64.b64encode(f"oauth:{ACCESS}".encode()).decode()
    httpserver.expect_request("/api", headers={"Authorization": f"Basic {basic}"}).respond_with_data("ok")
    host = httpserver.host
    netrc_file = tmp_path / "netrc"
    write_sink(
        token(), template(netrc_file, f"machine {host}\n  login oauth\n  password ${{access_token}}\n")
    )
    assert netrc.netrc(netrc_file).authenticators(host) == ("oauth", "", ACCESS)
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--netrc-file", str(netrc_file), httpserver.url_for("/api")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout) == (0, "ok"), out.stderr
    assert stat.S_IMODE(netrc_file.stat().st_mode) == 0o600


def test_a_docker_config_template_parses_back_as_json(tmp_path: Path) -> None:
    t = token()
    text = (
        '{\n  "auths": {\n    "registry.example.com": {\n'
        '      "registrytoken": ${access_token_json}\n'
        '    }\n  },\n  "x-expires-at": ${expires_at_unix}, "x-by": "tokend ${credential} ★"\n}\n'
    )
    write_sink(t, template(tmp_path / "config.json", text, mode=0o640))
    data = json.loads((tmp_path / "config.json").read_bytes())
    assert data["auths"]["registry.example.com"] == {"registrytoken": ACCESS}
    assert data["x-expires-at"] == int(t.expires_at) and data["x-by"] == "tokend api ★"  # UTF-8 kept
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o640


def test_a_template_using_every_placeholder_carries_no_refresh_token(tmp_path: Path) -> None:
    from tokend.core.templates import PLACEHOLDERS

    write_sink(token(), template(tmp_path / "t", "".join(f"${{{name}}}\n" for name in PLACEHOLDERS)))
    assert REFRESH not in (tmp_path / "t").read_text() and ACCESS in (tmp_path / "t").read_text()


def test_an_unchanged_rendering_is_not_rewritten_and_a_new_one_is_renamed_in(tmp_path: Path) -> None:
    t, path = token(), tmp_path / "t.netrc"
    netrc_sink = template(path, "machine a password ${access_token}\n")
    assert write_sink(t, netrc_sink).written
    before = os.stat(path)
    assert not write_sink(t, netrc_sink).written
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert write_sink(t, template(path, "machine b password ${access_token}\n")).written  # same token
    assert os.stat(path).st_ino != before.st_ino and path.read_text() == f"machine b password {ACCESS}\n"
    assert temp_files(tmp_path) == []


def test_a_template_that_cannot_render_fails_that_sink_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_sink(token(), template(path, "scope ${scope}\n"))
    evil = Token(ACCESS, time.time() + 60, time.time(), scope="a\nmachine evil password x")
    with pytest.raises(SinkError, match="control characters"):
        write_sink(evil, template(path, "scope ${scope}\n"))
    assert path.read_text() == "scope api\n"
    with pytest.raises(SinkError, match="without a template"):  # only the config makes them
        write_sink(token(), SinkConfig(path=path, format="template"))
    assert path.read_text() == "scope api\n"


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

    from tokend.io.files import write_atomic

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


# ---------------------------------------------------------- sink paths that are not regular files or not safe

OTHER_ID = 65534  # nobody / nogroup: not root, not the daemon


def make_in_the_way(path: Path, kind: str) -> None:
    """Put something that is not a regular file at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("creating a device node needs CAP_MKNOD")
    else:
        path.symlink_to("/dev/null")


def file_type(path: Path) -> tuple[int, str | None]:
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), os.readlink(path) if stat.S_ISLNK(st.st_mode) else None


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "symlink to /dev/null"])
def test_a_sink_path_that_is_not_a_regular_file_is_refused_and_left_untouched(
    tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "api.token"
    make_in_the_way(target, kind)
    before = file_type(target)
    with pytest.raises(SinkError, match="tokend only replaces regular files"):
        write_sink(token(), sink(target))
    assert file_type(target) == before
    assert temp_files(tmp_path) == []
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_sink_in_a_directory_others_can_write_is_refused_unless_allowed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could swap the sink for a link to their file
    with pytest.raises(SinkError, match=f"directory path is not safe: {shared} is writable by others"):
        write_sink(token(), sink(shared / "api.token"))
    assert list(shared.iterdir()) == []
    assert write_sink(token(), sink(shared / "api.token", allow_shared_dir=True)).written
    assert (shared / "api.token").read_text() == ACCESS + "\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_sink_in_a_directory_owned_by_another_user_is_refused_unless_allowed(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_ID, OTHER_ID)
    with pytest.raises(SinkError, match=f"{theirs} is owned by uid {OTHER_ID}"):
        write_sink(token(), sink(theirs / "api.token"))
    assert list(theirs.iterdir()) == []
    assert write_sink(token(), sink(theirs / "api.token", allow_shared_dir=True)).written


def test_check_reports_a_sink_on_a_fifo_and_one_in_an_unsafe_directory_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "fifo.token")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/fifo.token"\n'
        f'[[credentials.api.sink]]\npath = "{shared}/api.token"\n'
    )
    config = write_config(tmp_path, credential_toml("https://idp.example.com/t", tmp_path, sinks=sinks))
    result = run_tokend("check", "-c", config, tmp=tmp_path, timeout=10)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    assert "credentials.api.sink[0].path" in lines[0]
    assert "fifo.token is a FIFO; tokend only replaces regular files" in lines[0]
    assert "credentials.api.sink[1].path" in lines[1]
    assert f"directory path is not safe: {shared} is writable by its group" in lines[1]
    assert "allow_shared_dir = true" in lines[1]  # and it says how to accept it
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out" / "fifo.token").st_mode)
    assert list(shared.iterdir()) == []


def test_one_failing_sink_never_stops_the_credentials_other_sinks(tmp_path: Path, idp: TokenEndpoint) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "fifo.token")
    sinks = (
        f'[[credentials.api.sink]]\npath = "{out}/owned.token"\nowner = "no-such-user-tokend"\n'
        f'[[credentials.api.sink]]\npath = "{out}/fifo.token"\n'
        f'[[credentials.api.sink]]\npath = "{out}/healthy.token"\n'
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path, timeout=20)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "healthy.token").read_text() == "tok-1\n"
    assert not (out / "owned.token").exists()
    assert stat.S_ISFIFO(os.lstat(out / "fifo.token").st_mode)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 2, result.stderr
    assert "owned.token" in errors[0] and "no such user" in errors[0]
    assert "fifo.token" in errors[1] and "is a FIFO" in errors[1]


TEMP_OPEN = re.compile(
    r'^(?P<pid>\d+) openat\(AT_FDCWD, "(?P<path>[^"]*/\.api\.token\.tokend-[^"]*\.tmp)", '
    r"(?P<flags>[^,]+), (?P<mode>0\d+)\) = (?P<fd>\d+)$"
)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a sink for another group needs root's fchown")
def test_a_sink_temp_is_created_0600_and_gets_its_final_mode_only_after_its_group(
    tmp_path: Path, idp: TokenEndpoint
) -> None:
    """Created 0640 in the daemon's group, the token would be readable by that group
    until the fchown to the consumer's: the kernel's own record of the calls says not."""
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.token"\ngroup = {OTHER_ID}\nmode = "0640"\n'
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    trace = tmp_path / "strace.out"
    result = run_tokend(
        "fetch",
        "-c",
        config,
        tmp=tmp_path,
        timeout=30,
        prefix=["strace", "-f", "-qq", "-e", "trace=openat,fchown,fchmod", "-o", str(trace)],
    )
    assert result.returncode == 0, result.stderr
    st = os.stat(tmp_path / "out" / "api.token")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, OTHER_ID)

    lines = [" ".join(line.split()) for line in trace.read_text().splitlines()]  # no padding
    opens = [(i, m) for i, line in enumerate(lines) if (m := TEMP_OPEN.match(line))]
    assert len(opens) == 1, [line for line in lines if ".tokend-" in line]
    at, opened = opens[0]
    assert "O_CREAT" in opened["flags"] and "O_EXCL" in opened["flags"]
    assert opened["mode"] == "0600"
    pid, fd = opened["pid"], opened["fd"]
    calls = [
        line.split(None, 1)[1]
        for line in lines[at + 1 :]
        if line.startswith(f"{pid} ") and re.match(rf"\d+ fch(own|mod)\({fd}, ", line)
    ]
    assert calls[:2] == [f"fchown({fd}, -1, {OTHER_ID}) = 0", f"fchmod({fd}, 0640) = 0"], calls


@pytest.fixture
def nobodys_dir() -> Iterator[Path]:
    """A directory of uid/gid 65534 that 65534 can reach (tmp_path's parents are root's 0700)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as another uid with CAP_CHOWN needs root and setpriv")
    directory = Path(tempfile.mkdtemp(prefix="tokend-nobody-", dir="/tmp"))
    try:
        os.chown(directory, OTHER_ID, OTHER_ID)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_non_root_daemon_with_cap_chown_can_give_a_sink_to_another_owner(
    nobodys_dir: Path, idp: TokenEndpoint
) -> None:
    tmp = nobodys_dir
    sinks = f'[[credentials.api.sink]]\npath = "{tmp}/out/api.token"\nowner = 1\nmode = "0640"\n'
    config = write_config(tmp, credential_toml(idp.url, tmp, sinks=sinks))
    for path in (config, tmp / "api.secret", tmp / "out"):
        os.chown(path, OTHER_ID, OTHER_ID)
    as_nobody_with_cap_chown = [
        "setpriv",
        f"--reuid={OTHER_ID}",
        f"--regid={OTHER_ID}",
        "--clear-groups",
        "--inh-caps=+chown",
        "--ambient-caps=+chown",
    ]
    result = run_tokend("fetch", "-c", config, tmp=tmp, timeout=20, prefix=as_nobody_with_cap_chown)
    assert result.returncode == 0, result.stderr
    st = os.stat(tmp / "out" / "api.token")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, OTHER_ID, 0o640)


# The seccomp filter of tokend.service, in small: fchown and fchownat answer EPERM.
REFUSE_CHOWN = r"""
import ctypes, os, struct, sys, time
from pathlib import Path

def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)

LD_NR, JEQ, RET = 0x20, 0x15, 0x06
program = b"".join([
    insn(LD_NR, 0, 0, 0),  # seccomp_data.nr
    insn(JEQ, 2, 0, 93),  # fchown (x86_64)
    insn(JEQ, 1, 0, 260),  # fchownat
    insn(RET, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    insn(RET, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
])
buffer = ctypes.create_string_buffer(program)
fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
fprog_buffer = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.addressof(fprog_buffer), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER

from tokend.config import SinkConfig
from tokend.core.tokens import Token
from tokend.io.sinks import SinkError, write_sink

now = time.time()
try:
    sink = SinkConfig(path=Path(sys.argv[1]), group=int(sys.argv[2]), mode=0o640)
    write_sink(Token("tok", now + 60, now), sink)
except SinkError as exc:
    print(exc)
else:
    print("written")
"""


def test_a_chown_refused_by_a_system_call_filter_names_the_filter_and_the_setgid_directory(
    tmp_path: Path,
) -> None:
    """tokend.service's SystemCallFilter= refuses chown with EPERM: the error said "need root
    or CAP_CHOWN", which sent an operator after privileges the unit will never give."""
    if os.uname().machine != "x86_64":
        pytest.skip("the filter's system-call numbers are x86_64's")
    other_group = os.stat(tmp_path).st_gid + 4242
    result = subprocess.run(
        [sys.executable, "-c", REFUSE_CHOWN, str(tmp_path / "api.header"), str(other_group)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "cannot give the file group" in line and "Operation not permitted" in line, line
    assert "a system-call filter refuses chown here" in line and "setgid directory" in line, line
    assert not (tmp_path / "api.header").exists() and not temp_files(tmp_path)


def test_a_chown_refused_without_a_filter_says_what_it_needs(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may give a file any group")
    other_group = next(g for g in range(60000, 65000) if g not in os.getgroups())
    with pytest.raises(SinkError) as info:
        write_sink(token(), sink(tmp_path / "t", group=other_group, mode=0o640))
    assert "CAP_CHOWN or membership" in str(info.value) and "system-call filter" not in str(info.value)
