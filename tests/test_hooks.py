"""on_rotate hooks: what their children see, how runs coalesce, which pid files are trusted.

Real child processes, real files and a real ``tokend run`` daemon; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokend.config import HookConfig
from tokend.core.tokens import Token
from tokend.io import hooks

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import Start, clean_env, wait_for

HOOK_SECRET = "env-secret-for-hooks-0xC0FFEE"  # distinctive: grep-able wherever it leaks

DUMP_ENV = """\
import json, os, sys
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(dict(os.environ), f)
os.replace(tmp, sys.argv[1])  # whole or absent: the test never reads half a dump
"""


def token(expires_at: float = 2_000_000_000.0, value: str = "tok-unit") -> Token:
    return Token(access_token=value, expires_at=expires_at, obtained_at=expires_at - 3600)


# --------------------------------------------------------------------------- environment


def test_a_hook_run_by_the_daemon_gets_a_clean_environment(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    script = tmp_path / "dump_env.py"
    script.write_text(DUMP_ENV)
    out = tmp_path / "out"

    def hook(name: str, extra: str = "") -> str:
        return (
            f"[credentials.{name}.on_rotate]\n"
            f'command = ["{sys.executable}", "{script}", "{out}/{name}.env.json"]\n{extra}'
        )

    plain = credential_toml(idp.url, tmp_path, "plain").replace(
        f'client_secret_file = "{tmp_path}/plain.secret"', 'client_secret_env = "HOOK_TEST_SECRET"'
    )
    assert "HOOK_TEST_SECRET" in plain
    passed = credential_toml(idp.url, tmp_path, "passed")
    config = write_config(tmp_path, plain + hook("plain"), passed + hook("passed", "pass_token = true\n"))
    env = clean_env(
        tmp_path,
        HOOK_TEST_SECRET=HOOK_SECRET,
        SOME_APP_SETTING="inherited-setting",
        NOTIFY_SOCKET=str(tmp_path / "nobody-listens.sock"),
        LANG="C.UTF-8",
        LC_TIME="C.UTF-8",
        TZ="Pacific/Auckland",
    )
    SECRETS.add(HOOK_SECRET)
    daemon = daemons(config, tmp_path, env)
    dumps = {name: out / f"{name}.env.json" for name in ("plain", "passed")}
    wait_for(lambda: all(p.exists() for p in dumps.values()), 15, "both hooks' environment dumps")
    seen = {name: json.loads(path.read_text()) for name, path in dumps.items()}

    for name, child in seen.items():
        assert "HOOK_TEST_SECRET" not in child, name  # a credential's secret variable: never
        assert HOOK_SECRET not in json.dumps(child), name  # nor its value under another name
        assert "NOTIFY_SOCKET" not in child, name  # systemd's channel is tokend's own
        assert "SOME_APP_SETTING" not in child, name  # not on the allow-list
        for kept in ("PATH", "HOME", "LANG", "LC_TIME", "TZ"):
            assert child.get(kept) == env[kept], (name, kept)
        assert child["TOKEND_CREDENTIAL"] == name
        assert child["TOKEND_EXPIRES_AT"].isdigit()
    assert "TOKEND_ACCESS_TOKEN" not in seen["plain"]  # only with pass_token = true
    assert seen["passed"]["TOKEND_ACCESS_TOKEN"] == (out / "passed.token").read_text().strip()
    assert daemon.proc.poll() is None


def test_hook_environment_keeps_the_allow_list_and_adds_tokend_variables() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "API_SECRET": "s",
        "SOME_APP_SETTING": "x",
        "NOTIFY_SOCKET": "/run/n",
        "WATCHDOG_USEC": "1000",
        "CREDENTIALS_DIRECTORY": "/run/credentials/tokend.service",
        "TOKEND_ACCESS_TOKEN": "inherited-not-ours",
    }
    env = hooks.hook_environment(
        "api", token(1_900_000_000.7), HookConfig(command=("true",)), base, {"API_SECRET"}
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "TOKEND_CREDENTIAL": "api",
        "TOKEND_EXPIRES_AT": "1900000000",
    }


def test_hook_environment_has_no_home_when_tokend_has_none() -> None:
    env = hooks.hook_environment(
        "api", token(1_900_000_000), HookConfig(command=("true",)), {"PATH": "/bin", "SOME_APP_SETTING": "x"}
    )
    assert env == {"PATH": "/bin", "TOKEND_CREDENTIAL": "api", "TOKEND_EXPIRES_AT": "1900000000"}


def test_hook_environment_passes_the_token_only_with_pass_token() -> None:
    env = hooks.hook_environment(
        "api",
        token(1_900_000_000, "tok-7"),
        HookConfig(command=("true",), pass_token=True),
        {"PATH": "/bin", "SOME_APP_SETTING": "x"},
    )
    assert env == {
        "PATH": "/bin",
        "TOKEND_CREDENTIAL": "api",
        "TOKEND_EXPIRES_AT": "1900000000",
        "TOKEND_ACCESS_TOKEN": "tok-7",
    }


def test_a_secret_variable_is_dropped_even_when_its_name_is_on_the_allow_list() -> None:
    base = {"LC_SECRET": "s", "TZ": "s2", "LANG": "C.UTF-8"}
    env = hooks.hook_environment("api", token(), HookConfig(command=("true",)), base, {"LC_SECRET", "TZ"})
    assert "LC_SECRET" not in env and "TZ" not in env and env["LANG"] == "C.UTF-8"


def test_child_environment_keeps_the_callers_variables_but_no_secret_or_systemd_channel() -> None:
    base = {
        "PATH": "/bin",
        "SOME_APP_SETTING": "x",
        "API_SECRET": "s",
        "NOTIFY_SOCKET": "/run/n",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
    }
    assert hooks.child_environment(base, {"API_SECRET"}) == {"PATH": "/bin", "SOME_APP_SETTING": "x"}


# --------------------------------------------------------------------------- coalescing


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[hooks.HookRunner]:
    hook_runner = hooks.HookRunner()
    yield hook_runner
    for started in tmp_path.glob("*.started"):  # a failed test must not leave a hook waiting
        started.with_suffix(".gate").touch()
    hook_runner.pool.shutdown(wait=True)


def gated_hook(tmp: Path, name: str) -> tuple[HookConfig, Path, Path, Path]:
    """A hook that says it started, waits for its gate file, then records its token."""
    started, gate, done = tmp / f"{name}.started", tmp / f"{name}.gate", tmp / f"{name}.done"
    script = (
        f'echo "$TOKEND_EXPIRES_AT" >> {started}; '
        f"while [ ! -e {gate} ]; do sleep 0.01; done; "
        f'echo "$TOKEND_EXPIRES_AT" >> {done}'
    )
    return HookConfig(command=("sh", "-c", script), timeout=30), started, gate, done


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_hook_runs_for_one_credential_coalesce_to_the_newest_token(
    tmp_path: Path, runner: hooks.HookRunner
) -> None:
    hook, started, gate, done = gated_hook(tmp_path, "api")
    runner.submit("api", token(1001), hook)
    wait_for(lambda: lines(started) == ["1001"], 10, "the first run to start")
    for expires_at in range(1002, 1011):  # nine rotations while the first run is busy
        runner.submit("api", token(expires_at), hook)
    gate.touch()
    wait_for(lambda: "1010" in lines(done), 10, "a run for the newest token")
    runner.pool.shutdown(wait=True)  # anything still queued runs before we look
    assert lines(done) == ["1001", "1010"]  # the busy one, then only the newest


def test_a_slow_hook_runs_at_most_twice_for_ten_quick_rotations(
    tmp_path: Path, runner: hooks.HookRunner
) -> None:
    record = tmp_path / "runs"
    hook = HookConfig(command=("sh", "-c", f'sleep 0.5; echo "$TOKEND_EXPIRES_AT" >> {record}'))
    for expires_at in range(2001, 2011):
        runner.submit("api", token(expires_at), hook)
    wait_for(lambda: "2010" in lines(record), 10, "a run for the newest token")
    runner.pool.shutdown(wait=True)
    assert 1 <= len(lines(record)) <= 2 and lines(record)[-1] == "2010"


def test_a_hook_blocked_for_one_credential_does_not_hold_up_another(
    tmp_path: Path, runner: hooks.HookRunner
) -> None:
    slow, slow_started, gate, slow_done = gated_hook(tmp_path, "slow")
    quick = HookConfig(command=("sh", "-c", f'echo "$TOKEND_CREDENTIAL" >> {tmp_path}/quick.done'))
    runner.submit("slow", token(3001), slow)
    wait_for(lambda: lines(slow_started) == ["3001"], 10, "the slow hook to start")
    runner.submit("quick", token(3002), quick)
    wait_for(lambda: lines(tmp_path / "quick.done") == ["quick"], 10, "the other credential's hook")
    assert lines(slow_done) == []  # it ran while the first one was still blocked
    gate.touch()
    wait_for(lambda: lines(slow_done) == ["3001"], 10, "the slow hook to finish")


# --------------------------------------------------------------------------- pid files


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


def pid_file(tmp: Path, content: str, mode: int = 0o644) -> Path:
    path = tmp / "consumer.pid"
    path.write_text(content)
    path.chmod(mode)
    return path


def signal_hook(path: Path, signame: str = "SIGTERM") -> HookConfig:
    return HookConfig(pid_file=path, signal=signame)


def assert_not_signalled(child: subprocess.Popen[bytes]) -> None:
    """The child got no signal from tokend: it dies of our SIGKILL, not of a pending SIGTERM
    (Linux fixes a process's fatal signal at the moment it is sent)."""
    assert child.poll() is None
    child.kill()
    assert child.wait(10) == -signal.SIGKILL


def test_a_trusted_pid_file_gets_its_process_signalled(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    path = pid_file(tmp_path, f"{sleeper.pid}\n")
    assert hooks.read_pid_file(path) == sleeper.pid
    assert hooks.send_signal("api", signal_hook(path)) is True
    assert sleeper.wait(10) == -signal.SIGTERM


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o620], ids=oct)
def test_a_pid_file_others_or_the_group_could_write_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], mode: int
) -> None:
    path = pid_file(tmp_path, f"{sleeper.pid}\n", mode)
    assert hooks.send_signal("api", signal_hook(path)) is False
    assert_not_signalled(sleeper)
    with pytest.raises(ValueError, match="writable by"):
        hooks.read_pid_file(path)


def test_a_pid_file_owned_by_another_user_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = pid_file(tmp_path, f"{sleeper.pid}\n")
    os.chown(path, 65534, 65534)
    assert hooks.send_signal("api", signal_hook(path)) is False
    assert_not_signalled(sleeper)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        hooks.read_pid_file(path)


def test_a_pid_file_that_leads_into_proc_is_refused(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """/proc/<pid>/stat is root's, mode 0444, and starts with a pid: followed as a pid file
    it would let whoever planted the link pick any process."""
    link = tmp_path / "consumer.pid"
    link.symlink_to(f"/proc/{sleeper.pid}/stat")
    with pytest.raises(ValueError, match="kernel file"):
        hooks.read_pid_file(link)
    assert hooks.send_signal("api", signal_hook(link)) is False
    assert_not_signalled(sleeper)


def test_a_pid_file_reached_through_a_symlink_or_directory_another_user_controls_is_refused(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The path is judged, not only the file: a root-owned pid file is no proof when another
    user owns the link to it, or the directory it sits in."""
    if os.geteuid() != 0:
        pytest.skip("giving a link or a directory to another user needs root")
    target = pid_file(tmp_path, f"{sleeper.pid}\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    link = theirs / "myapp.pid"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    with pytest.raises(ValueError, match=r"symlink .* is owned by uid 65534"):
        hooks.read_pid_file(link)
    os.unlink(link)
    os.link(target, link)  # a hard link: the file is root's, but the directory is theirs
    os.chown(theirs, 65534, 65534)
    assert hooks.send_signal("api", signal_hook(link)) is False
    assert_not_signalled(sleeper)
    with pytest.raises(ValueError, match=r"path is not safe: .*theirs is owned by uid 65534"):
        hooks.read_pid_file(link)


def finishes(call: Callable[[], object], seconds: float) -> tuple[bool, object]:
    """Run ``call`` in a thread: (True, its result or exception), or (False, None) if it
    is still running after ``seconds``."""
    result: list[object] = []

    def target() -> None:
        try:
            result.append(call())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), result[0] if result else None)


def release_fifo(path: Path) -> None:
    """Open the FIFO's write end once, so a reader blocked on it (a failing test) returns."""
    with contextlib.suppress(OSError):  # ENXIO: nobody is blocked on it
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_as_pid_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "consumer.pid"
    os.mkfifo(fifo, 0o600)
    try:
        done, result = finishes(lambda: hooks.send_signal("api", signal_hook(fifo)), 5)
        assert (done, result) == (True, False), "the signal hook blocked on a FIFO"
        done, result = finishes(lambda: hooks.read_pid_file(fifo), 5)
        assert done, "read_pid_file blocked on a FIFO"
        assert isinstance(result, ValueError) and "not a regular file" in str(result)
    finally:
        release_fifo(fifo)


@pytest.mark.parametrize(
    "content",
    ["1\n", "0\n", "-5\n", "", "\n", "garbage\n", "12abc\n", "²\n", "1e3\n", "0x10\n", "99999999999\n"],
)
def test_a_pid_file_without_a_plausible_pid_is_refused(tmp_path: Path, content: str) -> None:
    path = pid_file(tmp_path, content)
    assert hooks.send_signal("api", signal_hook(path, "SIGCONT")) is False
    with pytest.raises(ValueError, match="pid"):
        hooks.read_pid_file(path)


def test_a_pid_file_naming_pid_1_never_signals_init(tmp_path: Path) -> None:
    path = pid_file(tmp_path, "1\n")
    with pytest.raises(ValueError, match="refusing pid 1"):
        hooks.read_pid_file(path)


def test_the_pid_is_the_first_word_of_a_trusted_pid_file(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    path = pid_file(tmp_path, f"  {sleeper.pid}  extra words\nsecond line\n")
    assert hooks.read_pid_file(path) == sleeper.pid
