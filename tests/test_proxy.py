"""The injecting reverse proxy (io/proxy): real ``tokend run`` daemons with the test IdP, a
resource server that checks every token against it (tests/support/resource.py), and real
clients: requests, curl (``-x`` and ``-p``, which must be refused) and raw sockets."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tokend.core.local_access import loggable_path

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.local import RawUpstream, local_proxy, poll
from .support.processes import DaemonProcess, Start, wait_for
from .support.resource import ResourceServer, free_port


@pytest.fixture
def resource(idp: TokenEndpoint) -> Iterator[ResourceServer]:
    server = ResourceServer(idp).start()
    yield server
    server.stop()


def proxy_config(tmp: Path, idp: TokenEndpoint, upstream: str, port: int, extra: str = "") -> Path:
    block = credential_toml(
        idp.url,
        tmp,
        extra=f'{extra}\n[[credentials.api.proxy]]\nlisten = "127.0.0.1:{port}"\nupstream = "{upstream}"\n'
        "access_log = true\n",
    )
    return write_config(tmp, block)


def start_proxy(
    tmp: Path, idp: TokenEndpoint, daemons: Start, upstream: str, extra: str = ""
) -> tuple[DaemonProcess, str]:
    port = free_port()
    daemon = daemons(proxy_config(tmp, idp, upstream, port, extra), tmp)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return "refresh success" in daemon.log

    wait_for(up, 15, "the proxy to listen with a token")
    return daemon, base


def test_the_proxy_keeps_path_and_query_and_swaps_the_authorization(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    daemon, base = start_proxy(tmp_path, idp, daemons, resource.url + "/base")
    response = requests.get(
        f"{base}/echo/a%2Fb?x=1&y=%20z",
        headers={
            "Authorization": "Bearer the-callers-own",
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Drop",
            "X-Drop": "hop",
            "Proxy-Authorization": "Basic x",
        },
        timeout=5,
    )
    assert response.status_code == 200, response.text
    seen = resource.seen[-1]
    assert seen.path == "/base/echo/a%2Fb?x=1&y=%20z"
    assert seen.token == "tok-1" and seen.ok
    assert seen.headers["Host"] == f"127.0.0.1:{resource.port}"
    echoed = response.json()["headers"]
    assert echoed["x-custom"] == "kept"
    assert "x-drop" not in echoed and "proxy-authorization" not in echoed
    # a body, buffered (small) and streamed (large, chunked from a generator)
    small = requests.post(f"{base}/up", data=b"hello", timeout=5).json()
    assert small["received"] == 5 and small["sha256"] == hashlib.sha256(b"hello").hexdigest()
    blob = b"0123456789abcdef" * 65536 * 4  # 4 MiB
    big = requests.post(
        f"{base}/up", data=iter([blob[i : i + 65536] for i in range(0, len(blob), 65536)]), timeout=20
    )
    assert big.json()["sha256"] == hashlib.sha256(blob).hexdigest()
    download = requests.get(f"{base}/download?size={8 * 1024 * 1024}", timeout=20)
    assert len(download.content) == 8 * 1024 * 1024
    assert all(s.token == "tok-1" for s in resource.seen)
    daemon.stop()
    assert "api GET /echo/a%2Fb 200" in daemon.log
    assert "y=%20z" not in daemon.log, [line for line in daemon.log.splitlines() if "y=" in line]  # no query


def test_many_refused_tokens_cost_one_token_request_and_are_replayed(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    _, base = start_proxy(tmp_path, idp, daemons, resource.url)
    resource.refused.add("tok-1")  # the upstream now says tok-1 is invalid
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda i: requests.get(f"{base}/r/{i}", timeout=20), range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    assert len(idp.seen) == 2  # the first token, and one refresh for fifty 401s
    assert {s.token for s in resource.seen if s.token not in resource.refused} == {"tok-2"}
    # a request with a large streamed body is not replayable: its 401 passes
    resource.refused.add("tok-2")
    blob = b"x" * (256 * 1024)
    refused = requests.post(f"{base}/up", data=iter([blob]), timeout=20)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]


def test_absolute_form_connect_and_another_host_are_refused(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    _, base = start_proxy(tmp_path, idp, daemons, resource.url)
    before = len(resource.seen)
    as_proxy = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", base, "http://example.com/x"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert as_proxy.stdout == "400"
    tunnel = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_connect}", "-p", "-x", base, "http://example.com/x"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert tunnel.stdout == "400"  # CONNECT answered 400, no tunnel
    assert requests.get(f"{base}/x", headers={"Host": "evil.example"}, timeout=5).status_code == 403
    assert requests.get(f"{base}/x", headers={"X-Forwarded-For": "1.2.3.4"}, timeout=5).status_code == 403
    assert len(resource.seen) == before  # none of them reached the upstream


def test_a_cookie_one_callers_upstream_set_never_reaches_another_caller(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    """The proxy's one upstream session serves every caller: it keeps no cookie jar. The
    Set-Cookie goes to the caller who got it, and a caller's own Cookie passes as sent.
    By the name ``localhost``: aiohttp's default jar keeps no cookie of an IP address, so
    an upstream by address would hide a shared jar."""
    _, base = start_proxy(tmp_path, idp, daemons, resource.url.replace("127.0.0.1", "localhost"))
    first = requests.get(f"{base}/set-cookie", timeout=5)
    assert first.headers["Set-Cookie"].startswith("session=for-the-first-caller")
    requests.get(f"{base}/echo", timeout=5)  # another caller, with no cookie of its own
    assert "Cookie" not in resource.seen[-1].headers
    requests.get(f"{base}/echo", headers={"Cookie": "mine=1"}, timeout=5)
    assert resource.seen[-1].headers["Cookie"] == "mine=1"


def test_dot_segments_a_second_host_and_a_loop_back_to_tokend_are_refused(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    """``/../`` would leave the upstream's base path once the upstream resolves it; two
    Host headers let two readers see two hosts; a Via naming tokend is a request that came
    through a tokend proxy already (an upstream pointing back at one: a loop)."""
    _, base = start_proxy(tmp_path, idp, daemons, resource.url + "/base")
    host = base.removeprefix("http://")
    before = len(resource.seen)

    def curl_as_is(path: str, *headers: str) -> str:
        args = ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"]
        for header in headers:
            args += ["-H", header]
        return subprocess.run([*args, base + path], capture_output=True, text=True, timeout=10).stdout

    for path in ("/../admin", "/a/./b", "/a/%2e%2E/admin", "/a/.."):
        assert curl_as_is(path) == "400", path
    with socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=5) as raw:
        raw.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n".encode())
        assert raw.recv(65536).split(b" ", 2)[1] == b"400"
    assert curl_as_is("/x", "Via: 1.1 edge, 1.1 tokend") == "508"
    assert len(resource.seen) == before  # none of them reached the upstream
    assert requests.get(f"{base}/a..b/.hidden", timeout=5).status_code == 200  # dots inside a name pass
    assert resource.seen[-1].headers["Via"] == "1.1 tokend"


def test_another_sites_page_cannot_drive_the_proxy_through_a_browser(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    """A page of any site can make a browser send a form or a simple fetch to a loopback
    port with the right Host: its Origin, its Fetch metadata or its preflight gives it away,
    and such a request never reaches the upstream with the token. TRACE would echo the
    token back, and Expect is tokend's own server's to answer."""
    _, base = start_proxy(tmp_path, idp, daemons, resource.url)
    before = len(resource.seen)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Access-Control-Request-Method": "DELETE", "Origin": base},
    ):
        answer = requests.post(f"{base}/api/delete-all", data={"confirm": "yes"}, headers=headers, timeout=5)
        assert answer.status_code == 403, headers
    assert requests.request("TRACE", f"{base}/t", timeout=5).status_code == 405
    assert len(resource.seen) == before  # none of them reached the upstream
    own = requests.get(f"{base}/x", headers={"Origin": base, "Sec-Fetch-Site": "same-origin"}, timeout=5)
    assert own.status_code == 200
    expecting = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "abc",
            "-H",
            "Expect: 100-continue",
            f"{base}/x",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert expecting.stdout == "200"  # answered, not left waiting for a 100 from upstream


def test_an_upstream_that_is_down_is_a_502_without_a_token(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start
) -> None:
    daemon, base = start_proxy(tmp_path, idp, daemons, f"http://127.0.0.1:{free_port()}")
    response = requests.get(f"{base}/x", timeout=15)
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway" and "tok-" not in response.text
    daemon.stop()
    assert "Traceback" not in daemon.log


def test_a_client_leaving_mid_download_costs_nothing_after(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    daemon, base = start_proxy(tmp_path, idp, daemons, resource.url)
    port = int(base.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(
                f"GET /download?size={512 * 1024 * 1024} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            got = 0
            while got < 1024 * 1024:
                got += len(conn.recv(65536))
    assert requests.get(f"{base}/after", timeout=5).status_code == 200
    rss = int(
        next(
            line
            for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS")
        ).split()[1]
    )
    assert rss < 200 * 1024, rss  # KiB: 1.5 GiB asked for and left, none of it kept
    daemon.stop()
    assert "Traceback" not in daemon.log


def test_rotation_under_load_fails_no_request_and_sends_no_expired_token(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    idp.expires_in = 3
    _, base = start_proxy(
        tmp_path, idp, daemons, resource.url, extra='refresh_at = 0.5\nmin_ttl_margin = "1s"'
    )
    failures: list[str] = []
    count = [0]
    stop = time.monotonic() + 6

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                response = session.get(f"{base}/load", timeout=5)
                count[0] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:80]}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert all(s.ok for s in resource.seen), [s.token for s in resource.seen if not s.ok][:5]
    assert len({s.token for s in resource.seen}) >= 3  # it rotated under the load
    assert count[0] > 200


def test_the_proxy_on_a_unix_socket(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    sock = tmp_path / "api.sock"
    block = credential_toml(
        idp.url,
        tmp_path,
        extra=f'[[credentials.api.proxy]]\nlisten = "unix:{sock}"\nupstream = "{resource.url}"\n'
        'socket_mode = "0600"\n',
    )
    daemon = daemons(write_config(tmp_path, block), tmp_path)
    wait_for(lambda: sock.exists() and "refresh success" in daemon.log, 15, "the proxy's socket")
    assert sock.stat().st_mode & 0o777 == 0o600
    result = subprocess.run(
        ["curl", "-s", "--unix-socket", str(sock), "http://anything/echo?q=1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert json.loads(result.stdout)["path"] == "/echo?q=1"
    assert resource.seen[-1].token == "tok-1"


def test_an_upstream_behind_a_private_ca_is_trusted_through_the_credentials_ca_bundle(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start
) -> None:
    from .thirdparty.tls_front import Pki

    pki = Pki(tmp_path)
    server = ResourceServer(idp, tls=(pki.server_cert, pki.server_key)).start()
    try:
        _, base = start_proxy(tmp_path, idp, daemons, server.url, extra=f'ca_bundle = "{pki.ca_file}"')
        response = requests.get(f"{base}/echo?over=tls", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/echo?over=tls"
        assert [(s.path, s.token, s.ok) for s in server.seen] == [("/echo?over=tls", "tok-1", True)]
    finally:
        server.stop()


def test_an_upstream_whose_certificate_is_not_trusted_is_a_502_and_never_sees_the_token(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start
) -> None:
    from .thirdparty.tls_front import Pki

    trusted = tmp_path / "trusted"
    other = tmp_path / "other"
    trusted.mkdir()
    other.mkdir()
    ours, theirs = Pki(trusted), Pki(other)  # the upstream's certificate is from another CA
    server = ResourceServer(idp, tls=(theirs.server_cert, theirs.server_key)).start()
    try:
        daemon, base = start_proxy(tmp_path, idp, daemons, server.url, extra=f'ca_bundle = "{ours.ca_file}"')
        response = requests.get(f"{base}/secret-path", timeout=15)
        assert response.status_code == 502
        assert response.json()["error"] == "bad_gateway"
        assert "TLS certificate is not trusted" in response.json()["error_description"]
        assert "tok-" not in response.text and "Authorization" not in response.text
        assert server.seen == []  # the handshake failed before any request was sent
        daemon.stop()
        assert "Traceback" not in daemon.log
    finally:
        server.stop()


def test_oversize_request_heads_are_refused_before_the_upstream(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    """aiohttp's limits, as README says: request line and each header line 8 KiB, 64 headers;
    each refused with a 400 and never proxied (no token goes anywhere for them)."""
    _, base = start_proxy(tmp_path, idp, daemons, resource.url)
    port = int(base.rsplit(":", 1)[1])
    host = f"Host: 127.0.0.1:{port}\r\n".encode()

    def ask(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(raw)
            data = b""
            while chunk := conn.recv(65536):  # the server closes after its 400
                data += chunk
            return data

    heads = {
        "a long request line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        "a long header": b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",
        "too many headers": b"GET / HTTP/1.1\r\n"
        + host
        + b"".join(b"X-%d: a\r\n" % i for i in range(70))
        + b"\r\n",
    }
    for what, raw in heads.items():
        answer = ask(raw)
        assert answer.split(b" ", 2)[1] == b"400", (what, answer[:100])
        assert b"tok-" not in answer, what
    assert resource.seen == []
    # and just under the limits, it is served
    fine = b"GET /ok HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n"
    assert ask(fine).split(b" ", 2)[1] == b"200"
    assert [s.path for s in resource.seen] == ["/ok"]


# ------------------------------------------------------------------ in process: callers who leave or stall


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    server = RawUpstream()
    yield server
    server.stop()


def raw_client(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_callers_who_leave_mid_request_release_their_upstream_connections(upstream: RawUpstream) -> None:
    """150 callers (more than the pool's 100) leave while the upstream is silent, before its
    answer and in the middle of its body, or mid-upload: each one's upstream connection is
    closed at once, and a normal request after them passes quickly."""
    with local_proxy(upstream.url) as base:
        host = base.removeprefix("http://")
        heads = {
            "silent": b"GET /silent HTTP/1.1\r\nHost: %s\r\n\r\n",
            "stall": b"GET /stall HTTP/1.1\r\nHost: %s\r\n\r\n",
            "upload": b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 1048576\r\n\r\n" + b"u" * 65536,
        }
        for what, head in heads.items():
            clients = [raw_client(base) for _ in range(150)]
            for client in clients:
                client.sendall(head % host.encode())
            assert poll(lambda: upstream.open >= 100, 10), (what, upstream.open)
            if what == "stall":
                assert clients[0].recv(65536).startswith(b"HTTP/1.1 200")
            for client in clients:
                client.close()
            assert poll(lambda: upstream.open == 0, 5), (what, upstream.open)
            started = time.monotonic()
            assert requests.get(f"{base}/ok", timeout=5).text == "ok", what
            assert time.monotonic() - started < 2, what


def test_a_stalled_upload_is_cut_and_its_upstream_request_aborted(upstream: RawUpstream) -> None:
    with local_proxy(upstream.url, body_idle_timeout=0.5) as base:
        host = base.removeprefix("http://").encode()
        for body in (b"s" * 100, b"s" * 100_000):  # held to be replayable, and streamed
            with raw_client(base) as client:
                client.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (host, len(body) + 1)
                    + body[:-1]
                )
                started = time.monotonic()
                answer = b""
                while b"request_timeout" not in answer and (chunk := client.recv(65536)):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
                assert b"tok-fixed" not in answer
                assert time.monotonic() - started < 5
            assert poll(lambda: upstream.open == 0, 5), upstream.open
        assert requests.post(f"{base}/upload", data=b"fine", timeout=5).text == "ok"


def test_a_caller_who_stops_reading_a_download_is_cut_and_the_upstream_closed(upstream: RawUpstream) -> None:
    with local_proxy(upstream.url, body_idle_timeout=0.5) as base:
        client = raw_client(base)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % base.removeprefix("http://").encode())
        assert client.recv(1024).startswith(b"HTTP/1.1 200")
        assert poll(lambda: upstream.open == 1, 5)
        # the caller takes nothing more: the proxy gives up on it and closes the upstream
        assert poll(lambda: upstream.open == 0, 10), upstream.open
        client.close()
        assert requests.get(f"{base}/ok", timeout=5).text == "ok"


# ------------------------------------------------------------------ the access log


def test_the_access_log_shows_the_raw_path_escaped_and_never_the_query() -> None:
    assert loggable_path("/v1/token/a%0aFAKE%20line?secret=1") == "/v1/token/a%0aFAKE%20line"
    assert loggable_path('/a"b\\c%zz/é\x7f') == "/a%22b%5Cc%25zz/%C3%A9%7F"
    rng = random.Random(7)
    alphabet = '/%?aZ09.-_~"\\ \t\r\n\x00\x7fé€' + "".join(map(chr, range(32)))
    for case in range(2000):
        target = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        shown = loggable_path(target)
        assert all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in shown), (case, target, shown)
        assert "?" not in shown, (case, target)


def test_a_path_cannot_forge_an_access_log_line(
    upstream: RawUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend.access")
    with local_proxy(upstream.url, log_requests=True) as base:
        with raw_client(base) as client:
            host = base.removeprefix("http://").encode()
            client.sendall(
                b"GET /ok%0a%0dapi%20GET%20/forged%20200?q=secret HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            )
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        assert poll(lambda: any(r.name == "tokend.access" for r in caplog.records), 5)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tokend.access"]
    assert line.startswith("api GET /ok%0a%0dapi%20GET%20/forged%20200 200 ")
    assert "\n" not in line and "secret" not in line and "tok-fixed" not in line


def test_the_proxys_requests_are_counted_by_status_class_with_the_upstreams_latency(
    tmp_path: Path, idp: TokenEndpoint, daemons: Start, resource: ResourceServer
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics_port = free_port()
    port = free_port()
    config = proxy_config(tmp_path, idp, resource.url, port)
    head = f'[tokend]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
    config.write_text(config.read_text().replace("[tokend]\n", head, 1))
    daemon = daemons(config, tmp_path)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/echo", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, 15, "the proxy to answer with a token")
    for _ in range(4):
        assert requests.get(f"{base}/echo", timeout=5).status_code == 200
    assert requests.request("TRACE", f"{base}/echo", timeout=5).status_code == 405

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    found = scraped()
    ok = found[("tokend_proxy_requests_total", (("code", "2xx"), ("credential", "api")))]
    assert ok == 5  # the first request that found the proxy up, and four more
    assert found[("tokend_proxy_requests_total", (("code", "4xx"), ("credential", "api")))] == 1
    assert found[("tokend_proxy_upstream_seconds_count", (("credential", "api"),))] == 5
    assert 0 < found[("tokend_proxy_upstream_seconds_sum", (("credential", "api"),))] < 5
    daemon.stop()
