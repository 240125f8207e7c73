"""tokend/cli/exec.py and tokend/cli/check.py through the real ``tokend`` command: exec's
child environment and what ``tokend check`` says about an on_rotate pid file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tokend.core.exit_codes import ExitCode

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import assert_one_line_error, clean_env, run_tokend

EXEC_SECRET = "exec-env-secret-0xBADC0DE"
OTHER_SECRET = "other-env-secret-0xFEEDFACE"
DUMP_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def from_env(block: str, tmp: Path, name: str, variable: str) -> str:
    """credential_toml's block with its secret read from ``$variable`` instead of a file."""
    changed = block.replace(
        f'client_secret_file = "{tmp}/{name}.secret"', f'client_secret_env = "{variable}"'
    )
    assert changed != block
    return changed


def test_exec_child_keeps_the_callers_environment_but_no_secret_variable(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        from_env(credential_toml(idp.url, tmp_path), tmp_path, "api", "API_CLIENT_SECRET"),
        from_env(credential_toml(idp.url, tmp_path, "other"), tmp_path, "other", "OTHER_CLIENT_SECRET"),
    )
    env = clean_env(
        tmp_path,
        API_CLIENT_SECRET=EXEC_SECRET,
        OTHER_CLIENT_SECRET=OTHER_SECRET,
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        SOME_APP_SETTING="kept-for-the-child",
    )
    SECRETS.add(EXEC_SECRET, OTHER_SECRET)
    result = run_tokend(
        "exec", "-c", config, "api", "--", sys.executable, "-c", DUMP_ENV, tmp=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    sent = idp.seen[0]  # the secret was read from the variable, so it was there to leak
    assert EXEC_SECRET in ((sent.basic_auth or ("", ""))[1], sent.params.get("client_secret"))
    child = json.loads(result.stdout)
    assert "API_CLIENT_SECRET" not in child  # the exec'd credential's secret variable
    assert "OTHER_CLIENT_SECRET" not in child  # and any other credential's
    assert EXEC_SECRET not in result.stdout and OTHER_SECRET not in result.stdout
    assert "NOTIFY_SOCKET" not in child
    assert child["SOME_APP_SETTING"] == "kept-for-the-child"
    assert child["PATH"] == env["PATH"] and child["HOME"] == env["HOME"]
    assert child["API_ACCESS_TOKEN"] == "tok-1"
    assert child["API_ACCESS_TOKEN_EXPIRES_AT"].isdigit()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--on-rotate", "SIGFOO"], "--on-rotate 'SIGFOO' is not a signal name"),
        (["--on-rotate", "\u0661\u0665"], "is not a signal name"),  # Arabic-Indic 15
        (["--on-rotate", "KILL"], "cannot be caught"),
        (["--on-rotate", "TERM"], "--on-rotate 'TERM' would stop the program, not reload it; use restart"),
        (["--on-rotate", "sigint"], "use restart"),
        (["--on-rotate", "3"], "use restart"),  # SIGQUIT
        (["--on-rotate", "restart", "--stop-signal", "TERMINATE"], "--stop-signal 'TERMINATE'"),
        (["--on-rotate", "restart", "--stop-timeout", "2h"], "over an hour"),
        (["--on-rotate", "restart", "--stop-timeout", "\u0663s"], "not a duration"),
        (["--stop-timeout", "5s"], "need --on-rotate restart or a signal"),
    ],
)
def test_exec_refuses_bad_supervision_options_in_one_line(
    idp: TokenEndpoint, tmp_path: Path, options: list[str], expected: str
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("exec", "-c", config, "api", *options, "--", "true", tmp=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert_one_line_error(result, expected)
    assert not idp.seen  # refused before anything was asked


def test_exec_refuses_a_rotation_signal_for_a_credential_without_sinks(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """The signal asks the program to re-read a sink: with none, it would never see a new token."""
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=""))
    result = run_tokend("exec", "-c", config, "api", "--on-rotate", "HUP", "--", "true", tmp=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert_one_line_error(result, "--on-rotate HUP", "credential 'api' has no sinks", "use restart")
    assert not idp.seen


def pid_hook(tmp: Path) -> str:
    return f'[credentials.api.on_rotate]\npid_file = "{tmp}/consumer.pid"\nsignal = "HUP"\n'


def test_check_accepts_a_pid_file_only_tokend_or_root_can_write(idp: TokenEndpoint, tmp_path: Path) -> None:
    (tmp_path / "consumer.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "consumer.pid").chmod(0o644)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path) + pid_hook(tmp_path))
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "unsafe", ["world-writable", "group-writable", "owned-by-nobody", "fifo", "garbage", "pid-1"]
)
def test_check_reports_an_unsafe_pid_file(idp: TokenEndpoint, tmp_path: Path, unsafe: str) -> None:
    path = tmp_path / "consumer.pid"
    expected = {
        "world-writable": "writable by others",
        "group-writable": "writable by its group",
        "owned-by-nobody": "owned by uid 65534",
        "fifo": "not a regular file",
        "garbage": "no valid pid",
        "pid-1": "refusing pid 1",
    }[unsafe]
    if unsafe == "fifo":
        os.mkfifo(path, 0o600)  # with no writer, a blocking open would hang `check` for ever
    else:
        path.write_text({"garbage": "not-a-pid\n", "pid-1": "1\n"}.get(unsafe, f"{os.getpid()}\n"))
        path.chmod({"world-writable": 0o666, "group-writable": 0o664}.get(unsafe, 0o644))
    if unsafe == "owned-by-nobody":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(path, 65534, 65534)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path) + pid_hook(tmp_path))
    result = run_tokend("check", "-c", config, tmp=tmp_path, timeout=20)
    assert result.returncode == ExitCode.CONFIG, result.stdout + result.stderr
    assert_one_line_error(result, "credentials.api.on_rotate.pid_file", str(path), expected)
