"""``tokend run`` as a real process: rotation under readers, signals, sd_notify, hooks,
restarts, locks, a stepped clock. (Timing logic runs in-process on a fake clock: test_runner.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug import Response

from tokend.core.exit_codes import ExitCode

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, Seen, TokenEndpoint, answer
from .support.processes import Start, as_plain_user, clean_env, run_tokend, wait_for
from .support.sinks import read_token

FORMATS = ("raw", "json", "env", "header")
FAST = 'min_ttl_margin = "0s"\nrefresh_at = 0.6'  # 2 s tokens due after ~1.1-1.3 s


def sinks(tmp: Path, name: str = "api") -> str:
    return "".join(
        f'[[credentials.{name}.sink]]\npath = "{tmp}/out/{name}.{fmt}"\nformat = "{fmt}"\n' for fmt in FORMATS
    )


class Readers:
    """Threads that read every sink in a tight loop and check each token against the IdP."""

    def __init__(self, idp: TokenEndpoint, paths: list[Path]) -> None:
        self.idp, self.paths = idp, paths
        self.reads = 0
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(p,), daemon=True) for p in paths]

    def loop(self, path: Path) -> None:
        while not self.stop.is_set():
            try:
                token = read_token(path)
            except Exception as exc:  # a partial file would land here
                self.problems.append(f"{path.name}: unreadable: {exc!r}")
                continue
            now = time.time()
            if token is None:
                continue
            self.reads += 1
            self.seen.add(token)
            if token not in self.idp.issued_at:
                self.problems.append(f"{path.name}: {token!r} was never issued")
            elif now >= self.idp.expires_at(token):
                self.problems.append(
                    f"{path.name}: {token} read {now - self.idp.expires_at(token):.2f}s after it expired"
                )
            time.sleep(0.002)

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_rotates_before_expiry_and_readers_never_see_a_bad_token(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 2
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=FAST, sinks=sinks(tmp_path)))
    daemon = daemons(config, tmp_path)
    paths = [tmp_path / "out" / f"api.{fmt}" for fmt in FORMATS]
    wait_for(lambda: all(p.exists() for p in paths), 10, "the first token in every sink")
    with Readers(idp, paths) as readers:
        wait_for(lambda: len(idp.issued_at) >= 5, 15, "five rotations")
    assert readers.problems == []
    assert readers.reads > 100 and len(readers.seen) >= 4
    assert daemon.proc.poll() is None


def test_old_token_kept_through_an_outage_then_replaced(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 3
    config = write_config(
        tmp_path, credential_toml(idp.url, tmp_path, extra='min_ttl_margin = "0s"\nrefresh_at = 0.5')
    )
    daemon = daemons(config, tmp_path)
    sink = tmp_path / "out" / "api.token"
    wait_for(lambda: read_token(sink) == "tok-1", 10, "the first token")
    idp.fault = answer(503)
    wait_for(lambda: len(idp.seen) >= 3, 10, "refreshes failing during the outage")
    assert read_token(sink) == "tok-1"  # still valid: readers keep working
    idp.fault = None
    wait_for(lambda: read_token(sink) == "tok-2", 10, "a new token once the IdP is back")
    assert "refresh failed" in daemon.log and "keeping token" in daemon.log


def test_unfixable_errors_are_logged_at_error_level(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.fault = answer(401, '{"error": "invalid_client"}')
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    daemon = daemons(config, tmp_path)
    wait_for(lambda: "a retry cannot fix" in daemon.log, 10, "the error line")
    line = next(x for x in daemon.log.splitlines() if "a retry cannot fix" in x)
    assert " ERROR " in line
    time.sleep(0.5)
    assert len(idp.seen) == 1  # retried at the 5-minute cap, not in a loop


def test_sigterm_stops_within_five_seconds_even_mid_request(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    from werkzeug import Response

    def hang(_: object) -> Response:
        time.sleep(8)
        return Response("{}", status=500)

    idp.script.append(hang)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra='timeout = "30s"'))
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(idp.seen) == 1, 10, "the hanging request")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - started < 5


def test_restart_reuses_the_cached_token(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    first = daemons(config, tmp_path)
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 10, "the first token")
    assert first.stop() == 0
    (tmp_path / "out" / "api.token").unlink()
    second = daemons(config, tmp_path)
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 10, "the sink restored")
    assert read_token(tmp_path / "out" / "api.token") == "tok-1"
    assert len(idp.seen) == 1
    assert second.proc.poll() is None


def test_sighup_applies_a_good_config_and_rejects_a_bad_one(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 2
    block = credential_toml(idp.url, tmp_path, extra=FAST)
    config = write_config(tmp_path, block)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: read_token(tmp_path / "out" / "api.token") is not None, 10, "the first token")

    write_config(tmp_path, block, credential_toml(idp.url, tmp_path, "extra", extra='scope = "x"'))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: read_token(tmp_path / "out" / "extra.token") is not None, 10, "the added credential")

    config.write_text(config.read_text() + "\n[credentials.api.oops]\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in daemon.log, 10, "the rejection")
    assert "credentials.api.oops" in daemon.log
    status = run_tokend("status", "-c", config, tmp=tmp_path)
    assert status.returncode == 1 and "config rejected" in status.stdout
    before = len(idp.issued_at)
    wait_for(lambda: len(idp.issued_at) >= before + 2, 10, "rotation going on with the last good config")
    assert daemon.proc.poll() is None


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    yield path, messages
    stop.set()
    thread.join()
    sock.close()


def test_sd_notify_on_a_real_socket(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start, notify_socket: tuple[str, list[str]]
) -> None:
    path, messages = notify_socket
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    env = clean_env(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    daemon = daemons(config, tmp_path, env)
    wait_for(lambda: any("READY=1" in m for m in messages), 10, "READY=1")
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=1 credential(s): 1 ok" in ready
    assert (tmp_path / "out" / "api.token").exists()  # READY only once the token is there
    wait_for(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3, 5, "watchdog pings")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: any("RELOADING=1" in m for m in messages), 10, "RELOADING=1")
    wait_for(lambda: sum("READY=1" in m for m in messages) >= 2, 10, "READY=1 after reload")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert any("STOPPING=1" in m for m in messages)


def test_ready_waits_for_a_first_failure_too(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start, notify_socket: tuple[str, list[str]]
) -> None:
    path, messages = notify_socket
    idp.fault = answer(401)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    daemons(config, tmp_path, clean_env(tmp_path, NOTIFY_SOCKET=path))
    wait_for(lambda: any("READY=1" in m for m in messages), 10, "READY=1")
    assert "0 ok" in next(m for m in messages if "READY=1" in m)


def hook_script(tmp: Path, body: str) -> Path:
    script = tmp / "hook.py"
    script.write_text(f"import os, sys, time\n{body}\n")
    return script


def test_hook_runs_with_its_environment_after_the_sinks_change(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 2
    script = hook_script(
        tmp_path,
        (
            "with open(sys.argv[1], 'a') as f:\n"
            "    f.write(' '.join([os.environ['TOKEND_CREDENTIAL'], os.environ['TOKEND_EXPIRES_AT'],"
            " os.environ.get('TOKEND_ACCESS_TOKEN', '-'), open(sys.argv[2]).read().strip()]) + '\\n')"
        ),
    )
    log = tmp_path / "hook.log"
    hook = (
        f'[credentials.api.on_rotate]\ncommand = ["{sys.executable}", "{script}", "{log}", '
        f'"{tmp_path}/out/api.token"]\n'
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=FAST) + hook)
    daemons(config, tmp_path)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 15, "two hook runs")
    name, expires_at, passed, in_sink = log.read_text().splitlines()[0].split()
    assert name == "api" and passed == "-"  # the token only with pass_token = true
    assert in_sink == "tok-1"  # the sink was written before the hook ran
    assert abs(int(expires_at) - idp.expires_at("tok-1")) <= 1


def test_a_hanging_hook_is_killed_and_never_blocks_refreshing(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 2
    script = hook_script(tmp_path, "time.sleep(60)")
    hook = f'[credentials.api.on_rotate]\ncommand = ["{sys.executable}", "{script}"]\ntimeout = "1s"\n'
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=FAST) + hook)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(idp.issued_at) >= 4, 15, "rotations while hooks hang")
    wait_for(lambda: "killed after 1s" in daemon.log, 10, "the hook killed at its timeout")


def test_status_reports_health_and_exit_codes(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> None:
    config = write_config(
        tmp_path,
        credential_toml(idp.url, tmp_path),
        credential_toml(idp.url, tmp_path, "bad", extra='scope = "nope"'),
    )
    idp.then(200, {"access_token": "tok-x", "expires_in": 3600})  # whichever comes first
    idp.then(400, {"error": "invalid_scope", "error_description": "nope is not a scope"})
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(idp.seen) >= 2, 10, "both first attempts")
    status_file = tmp_path / "state" / "status.json"

    def attempted_both() -> bool:
        if not status_file.exists():
            return False
        creds = json.loads(status_file.read_text())["credentials"].values()
        return len(creds) == 2 and all(c["last_attempt"] for c in creds)

    wait_for(attempted_both, 10, "the status file after both first attempts")
    text = run_tokend("status", "-c", config, tmp=tmp_path)
    assert text.returncode == 1
    assert "running" in text.stdout.splitlines()[0]
    as_json = run_tokend("status", "--json", "-c", config, tmp=tmp_path)
    data = json.loads(as_json.stdout)
    verdicts = sorted(c["verdict"] for c in data["credentials"].values())
    assert verdicts == ["expired", "ok"] and data["running"] and not data["healthy"]
    failing = next(c for c in data["credentials"].values() if c["verdict"] == "expired")
    assert "invalid_" in failing["last_error"] and failing["failures"] == 1
    assert "tok-x" not in text.stdout + as_json.stdout

    assert daemon.stop() == 0
    stopped = run_tokend("status", "-c", config, tmp=tmp_path)
    assert stopped.returncode == 1 and "NOT RUNNING" in stopped.stdout


def test_exec_puts_the_token_in_the_environment(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend(
        "exec",
        "-c",
        config,
        "api",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['API_ACCESS_TOKEN'], "
        "os.environ['API_ACCESS_TOKEN_EXPIRES_AT'].isdigit())",
        tmp=tmp_path,
    )
    assert (result.returncode, result.stdout) == (0, "tok-1 True\n")
    named = run_tokend(
        "exec",
        "-c",
        config,
        "api",
        "--env-name",
        "TOKEN",
        "--",
        "sh",
        "-c",
        'printf %s "$TOKEN"',
        tmp=tmp_path,
    )
    assert named.stdout == "tok-1" and len(idp.seen) == 1
    missing = run_tokend("exec", "-c", config, "api", "--", "no-such-program-tokend", tmp=tmp_path)
    assert missing.returncode == 127 and "no-such-program-tokend" in missing.stderr


def test_demo_rotates_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokend",
            "demo",
            "--lifetime",
            "2",
            "--for",
            "5",
            "--dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("eventbookings rotated") >= 3
    assert result.stdout.count("rfc6749 rotated") >= 3
    assert "(json body)" in result.stdout and "(form body)" in result.stdout
    run = tmp_path / "demo" / "run"
    assert read_token(run / "eventbookings.token") is not None
    assert json.loads((run / "rfc6749.json").read_text())["access_token"].startswith("demo-")
    secret = (tmp_path / "demo" / "eventbookings.secret").read_text().strip()
    assert secret not in result.stdout + result.stderr
    assert os.stat(tmp_path / "demo" / "eventbookings.secret").st_mode & 0o777 == 0o600


def test_hook_signals_the_pid_in_pid_file(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> None:
    marker = tmp_path / "got-hup"
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, sys, time\n"
                f"signal.signal(signal.SIGHUP, lambda *a: open({str(marker)!r}, 'a').write('hup\\n'))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None and consumer.stdout.readline() == "ready\n"
        (tmp_path / "consumer.pid").write_text(f"{consumer.pid}\n")
        hook = f'[credentials.api.on_rotate]\npid_file = "{tmp_path}/consumer.pid"\nsignal = "HUP"\n'
        config = write_config(tmp_path, credential_toml(idp.url, tmp_path) + hook)
        daemon = daemons(config, tmp_path)
        wait_for(marker.exists, 10, "the consumer's SIGHUP")
        assert "sent SIGHUP to pid" in daemon.log
    finally:
        consumer.kill()
        consumer.wait()


def test_a_notify_socket_nobody_reads_never_freezes_the_daemon(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    """Regression (found by the benchmark): a blocking sd_notify hung the main loop once
    the supervisor's queue was full, and config edits stopped being applied."""
    path = str(tmp_path / "deaf.sock")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)  # bound, never read: its queue fills after a few messages
    try:
        config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
        daemon = daemons(config, tmp_path, clean_env(tmp_path, NOTIFY_SOCKET=path))
        wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 10, "the first token")
        for i in range(1, 41):  # far more RELOADING/READY/STATUS messages than the queue holds
            daemon.signal(signal.SIGHUP)
            wait_for(lambda: daemon.log.count("reload applied") >= i, 10, f"reload {i}")  # noqa: B023
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0 and time.monotonic() - started < 5
    finally:
        deaf.close()


def test_a_reload_removing_a_credential_still_starting_lets_the_start_finish(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start, notify_socket: tuple[str, list[str]]
) -> None:
    """Once a reload removes the only credential still on its first attempt, the daemon
    is ready: READY=1 goes out once, and the status file follows the refreshes again."""
    path, messages = notify_socket
    status_file = tmp_path / "state" / "status.json"

    def quick_in_status() -> bool:
        creds = json.loads(status_file.read_text())["credentials"] if status_file.exists() else {}
        return bool(creds.get("quick", {}).get("last_success"))

    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        slow_url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/token"
        config = write_config(tmp_path, credential_toml(slow_url, tmp_path, "slow", extra='timeout = "30s"'))
        daemon = daemons(config, tmp_path, clean_env(tmp_path, NOTIFY_SOCKET=path))
        wait_for(lambda: "tokend running" in daemon.log, 10, "the start")
        time.sleep(0.3)  # the slow credential's first attempt now waits on the hole
        assert not any("READY=1" in m for m in messages)
        write_config(tmp_path, credential_toml(idp.url, tmp_path, "quick"))
        daemon.signal(signal.SIGHUP)
        wait_for(quick_in_status, 5, "the status file to show the new credential's token")
    assert sum("READY=1" in m for m in messages) == 1
    assert "RELOADING=1" in messages[0] and "READY=1" not in messages[0]


# --------------------------------------------------------------------------- hardening


def test_a_second_daemon_on_the_same_state_dir_exits_naming_the_first(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    first = daemons(config, tmp_path)
    wait_for(lambda: read_token(tmp_path / "out" / "api.token") is not None, 10, "the first token")
    second = daemons(config, tmp_path)
    assert second.proc.wait(10) == ExitCode.LOCKED  # EX_TEMPFAIL: not a config error
    assert f"another tokend (pid {first.proc.pid}) is running" in second.log
    assert "Traceback" not in second.log
    assert len(idp.seen) == 1 and first.proc.poll() is None


def test_fetch_beside_the_daemon_reuses_its_token_instead_of_asking_again(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    """The daemon's first request is slow; fetches started meanwhile wait on the
    identity's lock and then find its token, rather than asking the IdP themselves."""

    def slow(seen: Seen) -> Response:
        time.sleep(1.0)
        SECRETS.add("slow-token")
        return Response(
            json.dumps({"access_token": "slow-token", "expires_in": 3600}), content_type="application/json"
        )

    idp.script.append(slow)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    daemons(config, tmp_path)
    wait_for(lambda: len(idp.seen) == 1, 10, "the daemon's request in flight")
    fetches = [
        subprocess.Popen(
            [sys.executable, "-m", "tokend", "fetch", "-c", str(config)],
            cwd=tmp_path,
            env=clean_env(tmp_path),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for fetch in fetches:
        _, err = fetch.communicate(timeout=30)
        assert fetch.returncode == 0, err
    assert len(idp.seen) == 1
    assert read_token(tmp_path / "out" / "api.token") == "slow-token"


FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_wall_clock_stepped_back_leaves_no_expired_token_in_the_sinks(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    """Two hours back, mid-rotation: refreshes still happen on time (by the monotonic
    clock), so readers never get a token past its real expiry."""
    lib = next(iter(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")), FAKETIME_LIB)
    if not lib.exists():
        pytest.skip("libfaketime is not installed (Debian: apt-get install faketime)")
    idp.expires_in = 3
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, extra=FAST, sinks=sinks(tmp_path)))
    # Only the wall clock is faked: the monotonic one must keep running as it does.
    env = clean_env(
        tmp_path,
        LD_PRELOAD=str(lib),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    daemon = daemons(config, tmp_path, env)
    paths = [tmp_path / "out" / f"api.{fmt}" for fmt in FORMATS]
    wait_for(lambda: all(p.exists() for p in paths), 10, "the first token in every sink")
    with Readers(idp, paths) as readers:
        wait_for(lambda: len(idp.issued_at) >= 2, 10, "a rotation before the step")
        offset.write_text("-2h\n")
        stepped = len(idp.issued_at)
        try:
            wait_for(lambda: len(idp.issued_at) >= stepped + 3, 15, "three rotations after the step")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon's log:\n{daemon.log}") from None
    assert readers.problems == []
    assert "wall clock moved -7200s" in daemon.log
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("obstacle", ["read-only directory", "directory at the path"])
def test_remove_on_stop_that_cannot_remove_is_logged_and_the_daemon_lives(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start, obstacle: str
) -> None:
    out = tmp_path / "gone"
    out.mkdir()
    name = "api.token" if obstacle == "read-only directory" else "a-dir"
    block = credential_toml(
        idp.url,
        tmp_path,
        "old",
        sinks=(f'[[credentials.old.sink]]\npath = "{out}/{name}"\nremove_on_stop = true\n'),
    )
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path), block)
    if obstacle == "directory at the path":
        (out / name).mkdir()  # the sink refuses to replace it; the removal must too
    daemon = daemons(config, tmp_path, prefix=as_plain_user())
    wait_for(lambda: "ready:" in daemon.log, 10, "the start")
    if obstacle == "read-only directory":
        wait_for(lambda: (out / name).exists(), 10, "the sink")
        out.chmod(0o555)
    write_config(tmp_path, credential_toml(idp.url, tmp_path))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload applied" in daemon.log, 10, "the reload")
    assert (out / name).exists()
    assert "remove_on_stop" in daemon.log and "Traceback" not in daemon.log
    daemon.signal(signal.SIGHUP)  # and it goes on reloading
    wait_for(lambda: daemon.log.count("SIGHUP") >= 2, 10, "a second reload")
    assert daemon.proc.poll() is None
    out.chmod(0o755)


def test_a_reload_cannot_move_the_state_directory_under_a_running_daemon(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    """The lock, the cache and the status live there: moving them would let a second
    daemon start on the new directory while this one runs."""
    block = credential_toml(idp.url, tmp_path)
    config = write_config(tmp_path, block)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: read_token(tmp_path / "out" / "api.token") is not None, 10, "the first token")
    config.write_text(f'[tokend]\nstate_dir = "{tmp_path}/elsewhere"\n\n{block}')
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in daemon.log, 10, "the rejection")
    assert "tokend.state_dir: cannot change" in daemon.log
    assert not (tmp_path / "elsewhere").exists()  # nothing moved: cache, lock, status stay
    assert daemon.proc.poll() is None
