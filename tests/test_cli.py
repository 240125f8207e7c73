"""The ``tokend`` command as an operator runs it: real process, real IdP, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokend.core.exit_codes import ExitCode

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import DaemonProcess, assert_one_line_error, clean_env, run_tokend, wait_for

SECRET = "s3cret-value"


def all_sink_formats(tmp: Path, name: str = "api") -> str:
    return "".join(
        f'[[credentials.{name}.sink]]\npath = "{tmp}/out/{name}.{fmt}"\nformat = "{fmt}"\n'
        for fmt in ("raw", "json", "env", "header")
    )


def test_fetch_writes_every_sink_and_a_second_run_reuses_the_cache(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=all_sink_formats(tmp_path)))
    first = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert (out / "api.raw").read_text() == "tok-1\n"
    assert json.loads((out / "api.json").read_text())["access_token"] == "tok-1"
    assert "API_ACCESS_TOKEN='tok-1'" in (out / "api.env").read_text()
    assert (out / "api.header").read_text() == "Authorization: Bearer tok-1\n"

    (out / "api.raw").unlink()  # a sink that went missing is put back from the cache
    second = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(idp.seen) == 1
    assert (out / "api.raw").read_text() == "tok-1\n"


def test_fetch_force_asks_again(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    run_tokend("fetch", "-c", config, tmp=tmp_path)
    result = run_tokend("fetch", "--force", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(idp.seen) == 2
    assert (tmp_path / "out" / "api.token").read_text() == "tok-2\n"


def test_fetch_only_the_named_credentials(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        credential_toml(idp.url, tmp_path, "a"),
        credential_toml(idp.url, tmp_path, "b", extra='scope = "b"'),
    )
    assert run_tokend("fetch", "b", "-c", config, tmp=tmp_path).returncode == 0
    assert [s.params.get("scope") for s in idp.seen] == ["b"]
    assert not (tmp_path / "out" / "a.token").exists()


def test_unknown_credential_name_is_a_usage_error(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("fetch", "nope", "-c", config, tmp=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "no credential named nope", "known: api")


def test_token_prints_only_the_token_and_reuses_the_cache(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    first = run_tokend("token", "api", "-c", config, tmp=tmp_path)
    second = run_tokend("token", "api", "-c", config, tmp=tmp_path)
    assert (first.returncode, first.stdout) == (0, "tok-1\n")
    assert (second.returncode, second.stdout) == (0, "tok-1\n")
    assert len(idp.seen) == 1
    assert not (tmp_path / "out" / "api.token").exists()  # token does not touch the sinks


def test_token_from_cache_imports_no_network_or_scheduler_code(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    # After a fetch the fast path serves the cached token: beyond tokend's own few modules,
    # json and hashlib (the cache key's), and re with the enum it imports (json's; tokend's
    # console script imports re anyway). Counted from what the interpreter had loaded at
    # start, which an editable install's finder makes more.
    forbidden = (
        *("requests", "urllib3", "apscheduler", "watchdog", "dotenv", "logging"),
        *("dataclasses", "argparse", "typing", "tomllib", "pathlib", "inspect", "datetime"),
        *("tokend.config", "tokend.core.tokens", "tokend.core.policy", "tokend.io", "tokend.daemon"),
    )
    probe = (
        "import sys; loaded = set(sys.modules); from tokend.cli.main import main;"
        " rc = main(['token', 'api', '-c', sys.argv[1]]);"
        f" forbidden = {forbidden!r};"
        " heavy = sorted(m for m in set(sys.modules) - loaded if m.partition('.')[0] in forbidden"
        " or any(m == f or m.startswith(f + '.') for f in forbidden));"
        " print(heavy, file=sys.stderr); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tok-1\n"
    assert result.stderr.strip() == "[]"


def test_fetch_without_a_token_exits_1_with_one_clear_line(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.then(401, {"error": "invalid_client", "error_description": "unknown client"})
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result, "api: no token: invalid_client (HTTP 401): unknown client")
    assert SECRET not in result.stderr


def test_a_failed_refresh_keeps_the_valid_token_in_the_sinks(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.expires_in = 3
    config = write_config(
        tmp_path, credential_toml(idp.url, tmp_path, extra='refresh_at = 0.5\nmin_ttl_margin = "1s"')
    )
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    time.sleep(1.6)  # past the refresh point (1.5 s), well before expiry (3 s)
    idp.then(503, None, {"Retry-After": "30"})
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "refresh failed" in result.stderr and "keeping token" in result.stderr
    assert (tmp_path / "out" / "api.token").read_text() == "tok-1\n"
    assert len(idp.seen) == 2
    forced = run_tokend("fetch", "--force", "-c", config, tmp=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "out" / "api.token").read_text() == "tok-2\n"


def test_one_broken_credential_does_not_stop_the_others(idp: TokenEndpoint, tmp_path: Path) -> None:
    broken = credential_toml(idp.url, tmp_path, "broken").replace(
        str(tmp_path / "broken.secret"), str(tmp_path / "missing.secret")
    )
    config = write_config(tmp_path, broken, credential_toml(idp.url, tmp_path, "good"))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert "credentials.broken.client_secret_file" in result.stderr
    assert (tmp_path / "out" / "good.token").read_text() == "tok-1\n"


def test_a_failing_sink_does_not_stop_the_other_sinks(idp: TokenEndpoint, tmp_path: Path) -> None:
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/nodir/api.token"\n'
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.token"\n'
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 1
    assert "nodir does not exist" in result.stderr
    assert (tmp_path / "out" / "api.token").read_text() == "tok-1\n"


def test_check_validates_offline_and_online(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    offline = run_tokend("check", "-c", config, tmp=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("ok: api: ") and idp.seen == []
    online = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert online.returncode == 0, online.stderr
    assert "online: api: token sha256:" in online.stdout and len(idp.seen) == 1
    assert "tok-1" not in online.stdout + online.stderr
    assert not (tmp_path / "out" / "api.token").exists()

    idp.then(401, {"error": "invalid_client"})
    failed = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert failed.returncode == 1 and "invalid_client" in failed.stderr


def test_check_lists_every_path_problem(idp: TokenEndpoint, tmp_path: Path) -> None:
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/nodir/a"\n'
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/b"\nowner = "no-such-user-tokend"\n'
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert "credentials.api.sink[0].path" in lines[0] and "does not exist" in lines[0]
    assert "credentials.api.sink[1].owner" in lines[1] and "no such user" in lines[1]


def test_a_token_of_an_unknown_type_is_refused_unless_the_config_names_its_type(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """idpyoidc 5.0.0 answers token_type "access_token": copied into a header sink that is
    "Authorization: access_token …", which resource servers refuse. Refused, and said so
    by check --online; token_type = "Bearer" takes it as what it is."""
    sinks = f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.header"\nformat = "header"\n'
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    mislabelled = {"access_token": "tok-m", "token_type": "access_token", "expires_in": 300}
    idp.then(200, mislabelled)
    online = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert online.returncode == 1
    assert "token_type 'access_token' is not one tokend understands" in online.stderr
    idp.then(200, mislabelled)
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 1
    assert not (tmp_path / "out" / "api.header").exists()

    config = write_config(
        tmp_path, credential_toml(idp.url, tmp_path, extra='token_type = "Bearer"', sinks=sinks)
    )
    idp.then(200, mislabelled)
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    assert (tmp_path / "out" / "api.header").read_text() == "Authorization: Bearer tok-m\n"


def test_a_secret_file_readable_by_others_is_warned_about_with_its_path_and_mode(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    quiet = run_tokend("check", "-c", config, tmp=tmp_path)
    assert quiet.returncode == 0 and "readable by others" not in quiet.stderr
    (tmp_path / "api.secret").chmod(0o644)
    loud = run_tokend("check", "-c", config, tmp=tmp_path)
    assert loud.returncode == 0  # a warning, not a refusal
    (line,) = [line for line in loud.stderr.splitlines() if "readable by others" in line]
    assert "credentials.api.client_secret_file" in line and f"{tmp_path}/api.secret" in line
    assert "(mode 0644); chmod 600 it" in line and "s3cret" not in loud.stderr


def test_no_secret_or_token_in_any_log(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.refresh_tokens = True
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=all_sink_formats(tmp_path)))
    outputs = []
    for args in (["fetch"], ["fetch", "--force"], ["check", "--online"], ["token", "api"]):
        result = run_tokend(*args, "-c", config, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stderr)
        if args[0] != "token":
            outputs.append(result.stdout)
    text = "\n".join(outputs)
    assert "sha256:" in text  # tokens are named by fingerprint...
    for leaked in (SECRET, "tok-1", "tok-2", "tok-3", "refresh-1", "refresh-2"):
        assert leaked not in text  # ...and never shown


# --------------------------------------------------------------------------- config errors and secrets

PASTED = "hunter2"  # what an operator pasted where a name or a URL belonged


def pasted_secret_env(block: str, tmp: Path) -> str:
    changed = block.replace(
        f'client_secret_file = "{tmp}/api.secret"', f'client_secret_env = "{PASTED} pasted by mistake"'
    )
    assert changed != block
    return changed


def url_with_password(block: str, idp_url: str) -> str:
    changed = block.replace(f'token_url = "{idp_url}"', f'token_url = "ftp://user:{PASTED}@host/x"')
    assert changed != block
    return changed


def test_check_does_not_echo_a_secret_pasted_into_the_config(idp: TokenEndpoint, tmp_path: Path) -> None:
    SECRETS.add(PASTED)
    block = credential_toml(idp.url, tmp_path)
    for bad, key in (
        (pasted_secret_env(block, tmp_path), "credentials.api.client_secret_env"),
        (url_with_password(block, idp.url), "credentials.api.token_url"),
    ):
        config = write_config(tmp_path, bad)
        result = run_tokend("check", "-c", config, tmp=tmp_path)
        assert result.returncode == ExitCode.CONFIG
        assert_one_line_error(result, key)
        assert PASTED not in result.stdout + result.stderr


def test_check_never_prints_a_token_urls_query_string(idp: TokenEndpoint, tmp_path: Path) -> None:
    """Some endpoints are configured with the secret in the query (a bad habit, but real):
    ``check`` and ``check --online`` show the URL without its query, whether it works or not."""
    SECRETS.add(PASTED)
    block = credential_toml(idp.url, tmp_path)
    config = write_config(tmp_path, block.replace(idp.url, f"{idp.url}?client_secret={PASTED}&x=1"))
    for args in (["check"], ["check", "--online"]):
        result = run_tokend(*args, "-c", config, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"{idp.url}?…" in result.stdout
        assert PASTED not in result.stdout + result.stderr
    idp.then(401, {"error": "invalid_client"})
    failed = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert failed.returncode == 1 and f"{idp.url}?…: invalid_client" in failed.stderr
    assert PASTED not in failed.stdout + failed.stderr


def test_a_reload_rejecting_a_pasted_secret_echoes_it_nowhere(
    idp: TokenEndpoint, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    SECRETS.add(PASTED)  # and the suite-wide hygiene check reads the log and status.json too
    block = credential_toml(idp.url, tmp_path)
    config = write_config(tmp_path, block)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 10, "the first token")
    for bad, key in (
        (pasted_secret_env(block, tmp_path), "credentials.api.client_secret_env"),
        (url_with_password(block, idp.url), "credentials.api.token_url"),
    ):
        write_config(tmp_path, bad)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: key in daemon.log, 10, f"the reload rejecting {key}")  # noqa: B023
        status = run_tokend("status", "-c", config, tmp=tmp_path)
        assert "config rejected" in status.stdout and key in status.stdout
        assert PASTED not in status.stdout + status.stderr
        check = run_tokend("status", "--check", "-c", config, tmp=tmp_path)
        assert check.returncode == 1 and PASTED not in check.stdout + check.stderr
    assert "reload rejected" in daemon.log and PASTED not in daemon.log
    assert PASTED not in (tmp_path / "state" / "status.json").read_text()
    assert daemon.proc.poll() is None  # still running the last good config


# --------------------------------------------------------------------------- a config without credentials

NO_CREDENTIALS = "no credentials configured"


@pytest.mark.parametrize("content", ["", '[tokend]\nlog_level = "info"\n'], ids=["empty", "only-tokend"])
@pytest.mark.parametrize("command", [["check"], ["fetch"], ["token", "api"]], ids=" ".join)
def test_a_config_without_credentials_is_a_config_error(
    tmp_path: Path, content: str, command: list[str]
) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(content)
    result = run_tokend(*command, "-c", config, tmp=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, str(config), NO_CREDENTIALS)
    assert result.stdout == ""


@pytest.mark.parametrize("only_tokend", [False, True], ids=["empty", "only-tokend"])
def test_the_daemon_runs_on_a_config_without_credentials_warns_and_picks_one_up(
    idp: TokenEndpoint, tmp_path: Path, daemons: Callable[..., DaemonProcess], only_tokend: bool
) -> None:
    config = tmp_path / "tokend.toml"
    head = f'[tokend]\nstate_dir = "{tmp_path}/state"\n\n' if only_tokend else ""
    config.write_text(head)
    # Without a state_dir: the default under $HOME (clean_env sets it, and no XDG_*).
    state = tmp_path / "state" if only_tokend else tmp_path / "home" / ".local" / "state" / "tokend"
    status_file = state / "status.json"
    daemon = daemons(config, tmp_path)

    def status_record() -> dict[str, Any]:
        return json.loads(status_file.read_text()) if status_file.exists() else {}

    wait_for(lambda: NO_CREDENTIALS in daemon.log, 10, "the warning in the log")
    warning_lines = [line for line in daemon.log.splitlines() if NO_CREDENTIALS in line]
    assert len(warning_lines) == 1 and "WARNING" in warning_lines[0], daemon.log
    wait_for(lambda: status_record().get("warnings"), 10, "the status file with the warning")
    status = run_tokend("status", "-c", config, tmp=tmp_path)
    assert any(
        line.startswith("warning: ") and NO_CREDENTIALS in line for line in status.stdout.splitlines()
    ), status.stdout
    check = run_tokend("status", "--check", "-c", config, tmp=tmp_path)
    assert check.returncode == 1 and check.stdout.startswith("TOKEND WARNING - ")
    assert NO_CREDENTIALS in check.stdout

    config.write_text(head + credential_toml(idp.url, tmp_path))  # an edit, no signal: the watcher
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 10, "the added credential's token")
    wait_for(
        lambda: (
            not status_record().get("warnings")
            and status_record()["credentials"].get("api", {}).get("last_success")
        ),
        10,
        "the status file without the warning, with the new token",
    )
    check = run_tokend("status", "--check", "-c", config, tmp=tmp_path)
    assert (check.returncode, check.stdout.split(" - ")[0]) == (0, "TOKEND OK"), check.stdout
    assert daemon.proc.poll() is None


def test_status_json_keeps_unix_seconds_and_gives_each_time_an_rfc3339_twin(tmp_path: Path) -> None:
    """The json sink's expires_at is RFC 3339; status --json's stays unix seconds (scripts
    subtract `now` from it), with the RFC 3339 form beside it under a name that says so."""
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    record = {
        "name": "api",
        "token_fingerprint": "sha256:0123456789",
        "expires_at": 2_000_000_000.0,
        "obtained_at": 1_999_996_400.0,
        "next_refresh": 1_999_999_280.0,
        "last_success": 1_999_996_400.0,
        "last_attempt": 1_999_996_400.0,
        "last_error": None,
        "failures": 0,
    }
    (tmp_path / "state" / "status.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "updated_at": 1_999_996_401.0,
                "config": str(config),
                "config_error": None,
                "credentials": {"api": record},
            }
        )
    )
    data = json.loads(run_tokend("status", "--json", "-c", config, tmp=tmp_path).stdout)
    api = data["credentials"]["api"]
    assert api["expires_at"] == 2_000_000_000 and api["expires_at_rfc3339"] == "2033-05-18T03:33:20Z"
    assert api["obtained_at_rfc3339"] == "2033-05-18T02:33:20Z"
    assert api["next_refresh_rfc3339"] == "2033-05-18T03:21:20Z"
    assert data["updated_at"] == 1_999_996_401 and data["updated_at_rfc3339"] == "2033-05-18T02:33:21Z"
    assert "last_error_rfc3339" not in api  # only times get a twin


# --------------------------------------------------------------------------- odd but harmless input


def test_status_json_into_a_pipe_closed_early_prints_no_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    now = time.time()
    creds = {
        f"cred-{i}": {
            "name": f"cred-{i}",
            "token_fingerprint": "sha256:0123456789",
            "expires_at": now + 3600,
            "obtained_at": now,
            "next_refresh": now + 2800,
            "last_success": now,
            "last_attempt": now,
            "last_error": None,
            "last_error_retryable": None,
            "failures": 0,
        }
        for i in range(1000)
    }
    (tmp_path / "state" / "status.json").write_text(
        json.dumps(  # far more than a pipe holds
            {
                "pid": os.getpid(),
                "updated_at": now,
                "config": str(config),
                "config_error": None,
                "credentials": creds,
            }
        )
    )
    proc = status_json_into_a_pipe(config, tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.read(10).startswith(b"{")  # like `| head -c 10`
    proc.stdout.close()
    stderr, code = stderr_and_exit(proc)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert code >= 0  # it left by itself, not killed by a signal


def status_json_into_a_pipe(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    env = clean_env(tmp)
    env.pop("PYTHONUNBUFFERED", None)  # stdout block-buffered, as in a shell pipeline
    return subprocess.Popen(
        [sys.executable, "-m", "tokend", "status", "--json", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp,
        env=env,
    )


def stderr_and_exit(proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    SECRETS.output("tokend status --json stderr", stderr)
    return stderr, proc.wait(30)


def test_status_json_into_a_pipe_whose_reader_already_left_prints_no_broken_pipe(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    now = time.time()
    (tmp_path / "state" / "status.json").write_text(
        json.dumps(  # a few hundred bytes of output
            {
                "pid": os.getpid(),
                "updated_at": now,
                "config": str(config),
                "config_error": None,
                "credentials": {},
            }
        )
    )
    proc = status_json_into_a_pipe(config, tmp_path)
    assert proc.stdout is not None
    proc.stdout.close()  # like `| true`: the reader is gone before tokend writes a byte
    stderr, code = stderr_and_exit(proc)
    assert "BrokenPipeError" not in stderr and "Exception ignored" not in stderr, stderr
    assert code in (0, 1)


def test_a_byte_order_mark_at_the_start_of_the_config_is_accepted(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    config.write_bytes("\ufeff".encode() + config.read_bytes())
    check = run_tokend("check", "-c", config, tmp=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: api: ")
    fetch = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert fetch.returncode == 0, fetch.stderr
    assert (tmp_path / "out" / "api.token").read_text() == "tok-1\n"


@pytest.mark.parametrize("stdout", ["closed", "/dev/full"])
def test_token_with_nowhere_to_print_it_is_a_one_line_failure(
    idp: TokenEndpoint, tmp_path: Path, stdout: str
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    for attempt in ("fast path", "validated path"):  # the second: the fast path's memo removed
        target = "" if stdout == "closed" else " > /dev/full"
        redirect = " >&-" if stdout == "closed" else target
        result = subprocess.run(  # noqa: S602 (the shell closes or redirects stdout)
            f"{sys.executable} -m tokend token -c {config} api{redirect}",
            shell=True,
            capture_output=False,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(tmp_path),
            cwd=tmp_path,
            timeout=60,
        )
        SECRETS.output("tokend token stderr", result.stderr)
        assert result.returncode == 1, (attempt, result.stderr)
        assert "Traceback" not in result.stderr and "cannot write to standard output" in result.stderr
        for memo in (tmp_path / "state").glob("fastpath/*"):
            memo.unlink()
