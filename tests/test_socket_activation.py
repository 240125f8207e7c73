"""Socket activation (io/socket_activation, and io/local_http serving what it takes): the
variables read as sd_listen_fds reads them, each passed descriptor judged on the real
kernel object, and real ``tokend run`` daemons given sockets this test made, at fd 3 and
on, with LISTEN_PID set by a wrapper to its own pid before it execs tokend (as systemd
does), asked with curl and requests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tokend.config.schema import Listen
from tokend.io.socket_activation import Activation, ActivationError, adopt, listen_fds

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.processes import DaemonProcess, clean_env, wait_for
from .support.resource import ResourceServer

# Moves the descriptors named in argv[1] to 3, 4, ... (by way of high numbers, so none is
# overwritten), sets LISTEN_PID to its own pid, and execs the rest of argv: what systemd
# does between fork and exec.
WRAPPER = """
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid() if sys.argv[2] == "self" else os.getppid())
os.execv(sys.argv[3], sys.argv[3:])
"""


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory a socket's callers may traverse, safe by StrictModes."""
    path = Path(tempfile.mkdtemp(prefix="tokend-sd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def activated() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def start_activated(
    started: list[DaemonProcess],
    config: Path,
    tmp: Path,
    passed: list[tuple[str, socket.socket]],
    *,
    pid: str = "self",
) -> DaemonProcess:
    """``tokend run`` given ``passed`` at fds 3.. with LISTEN_FDS and LISTEN_FDNAMES; our
    copies are closed once it has them, so only tokend holds them."""
    env = clean_env(tmp, LISTEN_FDS=str(len(passed)), LISTEN_FDNAMES=":".join(name for name, _ in passed))
    fds = tuple(sock.fileno() for _, sock in passed)
    prefix = [sys.executable, "-c", WRAPPER, ",".join(map(str, fds)), pid]
    daemon = DaemonProcess(config, tmp, env, prefix=prefix, pass_fds=fds)
    started.append(daemon)
    for _, sock in passed:
        sock.close()
    return daemon


def listening_unix(path: Path, mode: int) -> socket.socket:
    """A socket as systemd makes one for ListenStream=PATH, SocketMode=MODE."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(mode)
    sock.listen()
    return sock


def listening_tcp(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def curl_unix(sock: Path, path: str) -> tuple[int, str]:
    result = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            str(sock),
            f"http://tokend{path}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


# --------------------------------------------------------------------------- the variables


def test_the_variables_count_only_for_this_pid_and_names_follow_sd_listen_fds() -> None:
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env, 4242) == [("a", 3), ("b", 4)]
    assert listen_fds(env, 4243) == []  # meant for another process: not ours to take
    assert listen_fds({**env, "LISTEN_FDNAMES": "a"}, 4242) == [("unknown", 3), ("unknown", 4)]
    assert listen_fds({**env, "LISTEN_FDNAMES": ""}, 4242) == [("unknown", 3), ("unknown", 4)]
    for bad in ("0", "-1", "x", "", "257", "99999999999999999999"):
        assert listen_fds({**env, "LISTEN_FDS": bad}, 4242) == [], bad
    assert listen_fds({"LISTEN_FDS": "1"}, 4242) == []  # no LISTEN_PID: never ours


def test_an_activation_hands_each_name_once_and_closes_the_rest() -> None:
    a, b, c = (os.dup(0) for _ in range(3))
    activation = Activation([("one", a), ("two", b), ("one", c)])
    assert activation.take("one") == [a, c]  # every socket of that name
    assert activation.take("one") == []
    assert activation.close_rest() == ["two"]
    with pytest.raises(OSError):
        os.fstat(b)  # closed
    os.close(a)
    os.close(c)


# --------------------------------------------------------------------------- the judge


def judged(sock: socket.socket, listen: Listen | None = None) -> tuple[socket.socket, Listen]:
    """adopt() on a copy of ``sock``'s descriptor (adopt owns what it is given)."""
    return adopt(os.dup(sock.fileno()), listen or Listen(fd_name="x"))


def refusal(fd: int, listen: Listen | None = None) -> str:
    with pytest.raises(ActivationError) as info:
        adopt(fd, listen or Listen(fd_name="x"))
    with pytest.raises(OSError):
        os.fstat(fd)  # a refused descriptor is closed
    return str(info.value)


def test_a_passed_unix_socket_is_served_at_the_path_it_is_bound_to(tmp_path: Path) -> None:
    with listening_unix(tmp_path / "s.sock", 0o660) as sock:
        got, listen = judged(sock)
        with got:
            assert listen == Listen(path=tmp_path / "s.sock", fd_name="x")
            assert got.family == socket.AF_UNIX and got.type == socket.SOCK_STREAM


def test_a_passed_tcp_socket_is_served_at_its_address_on_loopback_only() -> None:
    sock, port = listening_tcp()
    with sock:
        got, listen = judged(sock)
        got.close()
        assert (listen.host, listen.port, listen.path) == ("127.0.0.1", port, None)
    wide = socket.socket()
    wide.bind(("0.0.0.0", 0))
    wide.listen()
    with wide:
        assert "listens on 0.0.0.0, not a loopback address" in refusal(os.dup(wide.fileno()))
        got, listen = judged(wide, Listen(fd_name="x", allow_remote=True))  # said to mean it
        got.close()
        assert listen.host == "0.0.0.0"


def test_what_is_not_a_listening_stream_socket_with_an_address_is_refused(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(write)
    assert refusal(read).endswith("not a socket")
    file = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    assert refusal(file).endswith("not a socket")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert "not a stream socket" in refusal(os.dup(udp.fileno()))
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        assert refusal(os.dup(unlistened.fileno())).endswith("not listening")
    with socket.socket(socket.AF_UNIX) as abstract:
        abstract.bind(b"\0tokend-test-abstract-%d" % os.getpid())
        abstract.listen()
        assert "a unix socket with no path (abstract or unnamed)" in refusal(os.dup(abstract.fileno()))
    with socket.socket(socket.AF_UNIX) as unnamed:
        unnamed.bind("")  # autobind: an abstract name the kernel chose
        unnamed.listen()
        assert "no path" in refusal(os.dup(unnamed.fileno()))
    closed = os.dup(0)
    os.close(closed)
    assert "not an open descriptor" in refusal(closed)


# --------------------------------------------------------------------------- real daemons


def test_tokend_run_serves_the_endpoint_on_a_unix_socket_systemd_passed(
    tmp_path: Path, idp: TokenEndpoint, run_dir: Path, activated: list[DaemonProcess]
) -> None:
    path = run_dir / "tokend.sock"
    sock = listening_unix(path, 0o660)
    spare, spare_peer = socket.socketpair()  # passed under a name no listener takes
    config = write_config(
        tmp_path,
        '[endpoint]\nlisten = "systemd:tokend-endpoint"\naccess_log = true\n',
        credential_toml(idp.url, tmp_path),
    )
    daemon = start_activated(activated, config, tmp_path, [("tokend-endpoint", sock), ("spare", spare)])
    wait_for(lambda: curl_unix(path, "/readyz")[0] == 200, 15, "the endpoint on the passed socket")
    status, body = curl_unix(path, "/v1/token/api")
    assert status == 200 and json.loads(body)["access_token"] == "tok-1"
    assert curl_unix(path, "/v1/token/api?format=raw") == (200, "tok-1\n")
    # The descriptor no listener named is closed: its peer sees the end of the stream.
    spare_peer.settimeout(10)
    assert spare_peer.recv(1) == b""
    spare_peer.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o660  # systemd's mode, untouched
    assert daemon.stop() == 0
    assert path.exists() and stat.S_ISSOCK(os.lstat(path).st_mode)  # systemd's to remove, not tokend's
    log = daemon.log
    assert f"endpoint listening on systemd:tokend-endpoint (unix:{path})" in log
    assert "closed 1 socket(s) systemd passed that no listener names: spare" in log
    assert "Traceback" not in log


def test_a_passed_tcp_socket_gets_the_tcp_guards_and_endpoint_tcp_and_a_proxy_too(
    tmp_path: Path, idp: TokenEndpoint, activated: list[DaemonProcess]
) -> None:
    resource = ResourceServer(idp).start()
    try:
        endpoint_sock, port = listening_tcp()
        proxy_sock, proxy_port = listening_tcp()
        blocks = (
            credential_toml(
                idp.url,
                tmp_path,
                "api",
                extra="endpoint_tcp = true\n[[credentials.api.proxy]]\n"
                f'listen = "systemd:tokend-api"\nupstream = "{resource.url}"\n',
            ),
            credential_toml(idp.url, tmp_path, "private"),  # not endpoint_tcp
        )
        config = write_config(tmp_path, '[endpoint]\nlisten = "systemd:tokend-endpoint"\n', *blocks)
        start_activated(
            activated, config, tmp_path, [("tokend-endpoint", endpoint_sock), ("tokend-api", proxy_sock)]
        )
        base = f"http://127.0.0.1:{port}"
        flag = {"X-Tokend-Request": "true"}

        def ready() -> bool:
            try:
                return requests.get(f"{base}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, 15, "the endpoint on the passed TCP socket")
        ok = requests.get(f"{base}/v1/token/api", headers=flag, timeout=5)
        assert ok.status_code == 200 and ok.json()["access_token"].startswith("tok-")
        private = requests.get(f"{base}/v1/token/private", headers=flag, timeout=5)
        unknown = requests.get(f"{base}/v1/token/nosuch", headers=flag, timeout=5)
        assert private.status_code == unknown.status_code == 404 and private.text == unknown.text
        # The guards compare Host with the address systemd's socket is bound to.
        assert requests.get(f"{base}/v1/token/api", timeout=5).status_code == 403  # no flag
        rebound = {**flag, "Host": f"evil.example:{port}"}
        assert requests.get(f"{base}/v1/token/api", headers=rebound, timeout=5).status_code == 403
        through = requests.get(f"http://127.0.0.1:{proxy_port}/echo?via=systemd", timeout=5)
        assert through.status_code == 200 and through.json()["path"] == "/echo?via=systemd"
        assert resource.seen[-1].token is not None and resource.seen[-1].ok
        other_host = {"Host": f"127.0.0.1:{port}"}  # the endpoint's, not the proxy's
        assert (
            requests.get(f"http://127.0.0.1:{proxy_port}/x", headers=other_host, timeout=5).status_code == 403
        )
    finally:
        resource.stop()


def test_sockets_for_another_pid_are_not_taken_and_the_tokens_go_on(
    tmp_path: Path, idp: TokenEndpoint, run_dir: Path, activated: list[DaemonProcess]
) -> None:
    sock = listening_unix(run_dir / "tokend.sock", 0o660)
    config = write_config(
        tmp_path, '[endpoint]\nlisten = "systemd:tokend-endpoint"\n', credential_toml(idp.url, tmp_path)
    )
    daemon = start_activated(activated, config, tmp_path, [("tokend-endpoint", sock)], pid="parent")
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 15, "the sink")
    wait_for(lambda: "cannot listen on systemd:tokend-endpoint" in daemon.log, 5, "the listener's error")
    assert "systemd passed no socket named 'tokend-endpoint'" in daemon.log
    assert "LISTEN_FDS is set for another process" in daemon.log
    assert curl_unix(run_dir / "tokend.sock", "/readyz")[0] != 200  # nobody serves it
    assert "Traceback" not in daemon.log


def test_a_passed_socket_tokend_refuses_is_logged_and_the_rest_goes_on(
    tmp_path: Path, idp: TokenEndpoint, activated: list[DaemonProcess]
) -> None:
    wide = socket.socket()
    wide.bind(("0.0.0.0", 0))
    wide.listen()
    config = write_config(
        tmp_path, '[endpoint]\nlisten = "systemd:tokend-endpoint"\n', credential_toml(idp.url, tmp_path)
    )
    daemon = start_activated(activated, config, tmp_path, [("tokend-endpoint", wide)])
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 15, "the sink")
    wait_for(lambda: "not a loopback address" in daemon.log, 5, "the refusal")
    line = next(line for line in daemon.log.splitlines() if "not a loopback address" in line)
    assert "endpoint: cannot listen on systemd:tokend-endpoint: fd 3: listens on 0.0.0.0" in line
    status_file = tmp_path / "state" / "status.json"
    wait_for(
        lambda: (
            status_file.exists()
            and any("not a loopback address" in w for w in json.loads(status_file.read_text())["warnings"])
        ),
        5,
        "the warning in status.json",
    )
    assert "Traceback" not in daemon.log


def test_a_daemon_without_local_servers_closes_what_systemd_passed(
    tmp_path: Path, idp: TokenEndpoint, activated: list[DaemonProcess]
) -> None:
    spare, spare_peer = socket.socketpair()
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    daemon = start_activated(activated, config, tmp_path, [("tokend-endpoint", spare)])
    spare_peer.settimeout(15)
    assert spare_peer.recv(1) == b""  # tokend closed its only copy
    spare_peer.close()
    wait_for(lambda: "closed 1 socket(s) systemd passed" in daemon.log, 5, "the log line")
