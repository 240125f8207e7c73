"""The local token endpoint and health (io/token_endpoint, daemon/token_board): real
``tokend run`` daemons with the test IdP, asked with curl (``--unix-socket``, and as a
throwaway user) and requests, over a unix socket and over TCP."""

from __future__ import annotations

import json
import logging
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

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint, answer
from .support.processes import Start, wait_for
from .support.resource import free_port

NOBODY = 65534


def curl(
    sock: Path, path: str, *, user: int | None = None, groups: tuple[int, ...] = ()
) -> tuple[int, dict[str, str], str]:
    """``curl --unix-socket`` (as ``user`` if given, its primary group nogroup and
    ``groups`` its supplementary ones): status, headers, body."""
    result = subprocess.run(
        ["/usr/bin/curl", "-s", "-i", "--max-time", "5", "--unix-socket", str(sock), f"http://tokend{path}"],
        capture_output=True,
        text=True,
        timeout=10,
        user=user,
        group=None if user is None else NOBODY,
        extra_groups=None if user is None else list(groups),
        cwd="/",
    )
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    if not lines:
        return 0, {}, result.stderr
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def ready(sock: Path) -> bool:
    return sock.exists() and curl(sock, "/readyz")[0] == 200


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory others may traverse (the socket's, for a throwaway user), safe by
    StrictModes: root's, 0755, in sticky /tmp. tmp_path is in root's 0700 tree."""
    path = Path(tempfile.mkdtemp(prefix="tokend-run-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def endpoint_config(
    tmp: Path, idp: TokenEndpoint, listen: str, *blocks: str, endpoint_extra: str = ""
) -> Path:
    head = f'[endpoint]\nlisten = "{listen}"\naccess_log = true\n{endpoint_extra}\n'
    return write_config(tmp, head, *(blocks or (credential_toml(idp.url, tmp),)))


def test_the_unix_socket_serves_json_raw_and_header_from_memory(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, run_dir: Path
) -> None:
    sock = run_dir / "tokend.sock"
    daemon = daemons(endpoint_config(tmp_path, idp, f"unix:{sock}"), tmp_path)
    wait_for(lambda: ready(sock), 15, "the endpoint to be ready")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and stat.S_ISSOCK(sock.stat().st_mode)
    status, headers, body = curl(sock, "/v1/token/api")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store"
    answer_ = json.loads(body)
    assert answer_["access_token"] == "tok-1" and answer_["token_type"] == "Bearer"
    assert answer_["expires_at"].endswith("Z") and 3590 <= answer_["expires_in"] <= 3600
    assert curl(sock, "/v1/token/api?format=raw")[2] == "tok-1\n"
    assert curl(sock, "/v1/token/api?format=header")[2] == "Authorization: Bearer tok-1\n"
    assert curl(sock, "/v1/token/api?format=xml")[0] == 400
    for _ in range(10):
        assert curl(sock, "/v1/token/api?format=raw")[2] == "tok-1\n"
    assert len(idp.seen) == 1  # from memory: no IdP request per call
    status, _, body = curl(sock, "/readyz")
    assert json.loads(body)["credentials"]["api"]["state"] == "ok"
    assert curl(sock, "/readyz/api")[0] == 200 and curl(sock, "/readyz/nope")[0] == 404
    assert curl(sock, "/livez")[0] == 200
    assert daemon.stop() == 0
    assert not sock.exists()  # removed with the daemon
    log = daemon.log
    assert "GET /v1/token/api 200" in log and "token sha256:" in log
    assert "Traceback" not in log


@pytest.mark.skipif(os.geteuid() != 0, reason="a throwaway uid needs root")
def test_a_caller_not_named_gets_the_same_404_as_for_an_unknown_credential(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, run_dir: Path
) -> None:
    sock = run_dir / "tokend.sock"
    blocks = (
        credential_toml(idp.url, tmp_path, "api"),
        credential_toml(idp.url, tmp_path, "open", extra=f"endpoint_users = [{NOBODY}]"),
        credential_toml(idp.url, tmp_path, "bygroup", extra='endpoint_groups = ["nogroup"]'),
        credential_toml(idp.url, tmp_path, "bysupp", extra="endpoint_groups = [4242]"),
    )
    config = endpoint_config(tmp_path, idp, f"unix:{sock}", *blocks, endpoint_extra='socket_mode = "0666"')
    daemons(config, tmp_path)
    wait_for(lambda: ready(sock), 15, "the endpoint to be ready")
    forbidden = curl(sock, "/v1/token/api", user=NOBODY)
    unknown = curl(sock, "/v1/token/nosuch", user=NOBODY)
    assert forbidden[0] == unknown[0] == 404
    assert forbidden[2] == unknown[2] and "tok-" not in forbidden[2]
    status, _, body = curl(sock, "/v1/token/open?format=raw", user=NOBODY)
    assert status == 200 and body.startswith("tok-")
    # nobody's primary group is nogroup (65534): allowed by group
    status, _, body = curl(sock, "/v1/token/bygroup?format=raw", user=NOBODY)
    assert status == 200 and body.startswith("tok-")
    # a supplementary group counts (SO_PEERGROUPS), and only while the caller has it
    assert curl(sock, "/v1/token/bysupp?format=raw", user=NOBODY, groups=(4242,))[0] == 200
    assert curl(sock, "/v1/token/bysupp?format=raw", user=NOBODY)[0] == 404
    assert curl(sock, "/v1/token/api")[0] == 200  # root always may
    # Health tells a caller only of what it may read: no names, states or errors of others.
    hidden, unknown_ready = curl(sock, "/readyz/api", user=NOBODY), curl(sock, "/readyz/nosuch", user=NOBODY)
    assert hidden[0] == unknown_ready[0] == 404 and hidden[2] == unknown_ready[2]
    assert curl(sock, "/readyz/open", user=NOBODY)[0] == 200
    seen = json.loads(curl(sock, "/readyz", user=NOBODY)[2])["credentials"]
    assert sorted(seen) == ["bygroup", "open"]
    assert sorted(json.loads(curl(sock, "/readyz")[2])["credentials"]) == ["api", "bygroup", "bysupp", "open"]


def test_no_valid_token_is_a_503_with_retry_after_and_ready_recovers(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, run_dir: Path
) -> None:
    sock = run_dir / "tokend.sock"
    idp.fault = answer(503, "down")
    daemons(endpoint_config(tmp_path, idp, f"unix:{sock}"), tmp_path)
    wait_for(lambda: sock.exists() and curl(sock, "/readyz")[0] == 503, 15, "not ready")
    status, headers, body = curl(sock, "/v1/token/api")
    assert status == 503 and 1 <= int(headers["retry-after"]) <= 60
    assert json.loads(body)["error"] == "temporarily_unavailable"
    state = json.loads(curl(sock, "/readyz")[2])["credentials"]["api"]
    assert state["state"] == "expired" and "503" in state["reason"]
    idp.fault = None
    wait_for(lambda: ready(sock), 20, "ready again once the IdP answers")
    assert curl(sock, "/v1/token/api?format=raw")[2].startswith("tok-")


def test_over_tcp_the_guards_refuse_what_a_browser_could_send(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    block = credential_toml(idp.url, tmp_path, extra="endpoint_tcp = true")
    daemons(endpoint_config(tmp_path, idp, f"127.0.0.1:{port}", block), tmp_path)

    def up() -> bool:
        try:
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, 15, "the endpoint to be ready")
    flag = {"X-Tokend-Request": "true"}
    ok = requests.get(f"{base}/v1/token/api", headers=flag, timeout=5)
    assert ok.status_code == 200 and ok.json()["access_token"] == "tok-1"
    refused = {
        "no flag": {},
        "flag false": {"X-Tokend-Request": "false"},
        "rebound host": {**flag, "Host": f"evil.example:{port}"},
        "another port": {**flag, "Host": "127.0.0.1:1"},
        "forwarded for": {**flag, "X-Forwarded-For": "203.0.113.1"},
        "forwarded": {**flag, "Forwarded": "for=203.0.113.1"},
    }
    for what, headers in refused.items():
        response = requests.get(f"{base}/v1/token/api", headers=headers, timeout=5)
        assert response.status_code == 403, what
        assert "tok-" not in response.text, what
    assert requests.get(f"{base}/v1/token/nosuch", headers=flag, timeout=5).status_code == 404
    assert requests.get(f"{base}/livez", timeout=5).status_code == 200  # health needs no flag
    assert requests.get(f"{base}/readyz", headers={"Host": "evil.example"}, timeout=5).status_code == 403


def test_a_listener_that_cannot_open_is_logged_and_the_tokens_go_on(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start
) -> None:
    """The socket's directory judged as a sink's: group-writable is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    daemon = daemons(endpoint_config(tmp_path, idp, f"unix:{shared}/tokend.sock"), tmp_path)
    wait_for(lambda: (tmp_path / "out" / "api.token").exists(), 15, "the sink")
    wait_for(lambda: "cannot listen on" in daemon.log, 5, "the bind error")
    assert "directory path is not safe" in daemon.log and "Traceback" not in daemon.log
    assert not (shared / "tokend.sock").exists()
    status_file = tmp_path / "state" / "status.json"
    wait_for(
        lambda: (
            status_file.exists()
            and any("cannot listen" in w for w in json.loads(status_file.read_text())["warnings"])
        ),
        5,
        "the warning in status.json",
    )
    assert json.loads(status_file.read_text())["pid"] == daemon.proc.pid


def test_without_an_endpoint_or_a_proxy_aiohttp_is_not_imported(tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml("https://idp.example.com/t", tmp_path))
    code = (
        "import sys; from tokend.config import load; from tokend.daemon.loop import Daemon;"
        f"d = Daemon(load({str(config)!r}), environ={{}});"
        "print(d.local is None, sorted(m for m in sys.modules"
        " if m.partition('.')[0] in ('aiohttp', 'yarl', 'httptools')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True []"


def test_with_an_endpoint_aiohttp_is_imported(tmp_path: Path, run_dir: Path) -> None:
    """The other side of the test above: the probe sees an import when there is one."""
    config = write_config(
        tmp_path,
        f'[endpoint]\nlisten = "unix:{run_dir}/t.sock"\n',
        credential_toml("https://idp.example.com/t", tmp_path),
    )
    code = (
        "import sys; from tokend.config import load; from tokend.daemon.loop import Daemon;"
        f"d = Daemon(load({str(config)!r}), environ={{}}); d.local = __import__('tokend.daemon.loop').daemon"
        ".loop.local_servers(d.config, d.board, {}); print('aiohttp' in sys.modules); d.local.stop()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_a_credential_name_cannot_forge_an_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """The endpoint logs the path as it came (percent-escapes kept), not decoded: a name
    holding ``%20`` or ``%0d`` cannot write a status or a control character into the log."""
    from tokend.config.schema import Listen
    from tokend.io.local_http import LocalHttp, Site
    from tokend.io.token_endpoint import endpoint_app

    from .support.local import FixedBoard, poll

    caplog.set_level(logging.INFO, logger="tokend.access")
    local = LocalHttp()
    listen = Listen(host="127.0.0.1", port=free_port())
    board = FixedBoard()
    assert (
        local.start([Site("endpoint", listen, lambda bound: endpoint_app(board, bound, log_requests=True))])
        == []
    )
    try:
        with socket.create_connection(("127.0.0.1", listen.port), timeout=5) as conn:
            conn.sendall(
                b"GET /v1/token/x%20200%22%0d?format=raw HTTP/1.1\r\n"
                + f"Host: 127.0.0.1:{listen.port}\r\nX-Tokend-Request: true\r\n\r\n".encode()
            )
            assert conn.recv(65536).startswith(b"HTTP/1.1 404")
        assert poll(lambda: any(r.name == "tokend.access" for r in caplog.records), 5)
    finally:
        local.stop()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tokend.access"]
    assert line.startswith("GET /v1/token/x%20200%22%0d 404 "), line
    assert "\r" not in line and "format" not in line
