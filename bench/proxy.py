"""The local servers' figures (issue 21): tokend's proxy beside nginx, and the endpoint.

Side by side in one run, one upstream, one load generator (wrk 4.1, ``-t1``):

- the upstream is an nginx of its own (one worker) answering ``ok`` from memory: measured
  alone, it is the "direct" line, and far faster than either proxy, so it is not the
  bottleneck;
- the anchor is an nginx (one worker) adding the same ``Authorization: Bearer`` header, with
  keep-alive to the upstream; tokend's is a real ``tokend run`` of the pip-installed tokend,
  one credential against the stdlib IdP and one ``[[credentials.NAME.proxy]]``;
- each is driven with 16 connections (throughput, p99) and one (the median added over
  going direct), the three interleaved so that drift hits all alike.

Then the endpoint's lookups per second over its unix socket (a small asyncio client with
keep-alive connections: wrk cannot speak unix sockets, and curl in a loop measures curl),
RSS with a proxy on and off, RSS while 1 GiB streams through (upload and download), and
the failed requests across 20 rotations under load, against an upstream that checks every
token's expiry (the IdP stamps it into the token).

nginx and wrk are not installed in CI: without either, one line says so and the figures
are skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokend.devtools.idp import IdentityProvider

from .harness import (
    PYTHON,
    Daemon,
    bench_python,
    credentials_config,
    figure,
    rss_kib,
    summary,
    wait_until,
    workdir,
    write_config,
)

NGINX = "nginx"
WRK = "wrk"
GIB = 1 << 30


def missing_tools() -> list[str]:
    return [
        tool for tool in (NGINX, WRK) if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]


def tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, what: str, timeout: float = 30) -> None:
    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(listening, timeout, what, interval=0.02)


# --------------------------------------------------------------------------- nginx

NGINX_COMMON = """
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    default_type text/plain;
{servers}
}}
"""

UPSTREAM_SERVER = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
        location = /big {{ alias {prefix}/big; sendfile on; }}
    }}
"""

ANCHOR_SERVER = """
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
"""


@contextmanager
def nginx(servers: str, what: str, port: int) -> Iterator[Path]:
    """One nginx, one worker, in a prefix of its own, as the current user, in the foreground."""
    prefix = Path(tempfile.mkdtemp(prefix="tokend-bench-nginx-"))
    conf = prefix / "nginx.conf"
    # As the current user: as root, nginx's workers would otherwise become nobody.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    servers = servers.replace("{prefix}", str(prefix))
    conf.write_text(NGINX_COMMON.format(user=user, prefix=prefix, servers=servers))
    log = open(prefix / "stderr.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [tool(NGINX), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], stdout=log, stderr=log
    )
    try:
        wait_port(port, what)
        yield prefix
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(prefix, ignore_errors=True)


# --------------------------------------------------------------------------- wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run: requests/s, median and p99 in ms, non-2xx and socket errors."""
    result = subprocess.run(
        [tool(WRK), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk: no {pct}% line in:\n{out}")
        return float(m.group(1)) * UNITS[m.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rate or not total:
        raise RuntimeError(f"wrk: no Requests/sec in:\n{out}")
    return {
        "rps": float(rate.group(1)),
        "requests": float(total.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


# --------------------------------------------------------------------------- tokend


def proxy_config(tmp: Path, idp_url: str, upstream: int, port: int | None, endpoint: bool = False) -> Path:
    body = ""
    if endpoint:
        run = tmp / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        body += f'[endpoint]\nlisten = "unix:{run}/tokend.sock"\n\n'
    body += credentials_config(tmp, idp_url, 1)
    if port is not None:
        body += f'\n[[credentials.c0.proxy]]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:{upstream}"\n'
    return write_config(tmp, body)


@contextmanager
def tokend_proxy(idp_url: str, upstream: int, endpoint: bool = False) -> Iterator[tuple[Daemon, int, Path]]:
    tmp = workdir()
    port = free_port()
    daemon = Daemon(proxy_config(tmp, idp_url, upstream, port, endpoint), tmp)
    try:
        daemon.wait_ready(60)
        wait_port(port, "tokend's proxy")
        yield daemon, port, tmp
    finally:
        daemon.stop()


# The upstream that judges every token (rotation figure) and counts an upload's bytes: the
# IdP's stamp_expiry tokens are demo-<expiry_ms>-<random>. aiohttp, from the bench venv.
CHECKING_UPSTREAM = r"""
import sys, time
from aiohttp import web
counts = {"requests": 0, "expired": 0, "missing": 0, "upload_bytes": 0}
REFUSED = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
async def judge(request):
    counts["requests"] += 1
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer demo-"):
        counts["missing"] += 1
        return web.Response(status=401, headers=REFUSED)
    try:
        expiry_ms = int(auth[len("Bearer demo-"):].split("-")[0])
    except ValueError:
        expiry_ms = None
    if expiry_ms is not None and time.time() * 1000 >= expiry_ms:
        counts["expired"] += 1
        return web.Response(status=401, headers=REFUSED)
    if request.method in ("POST", "PUT"):
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        counts["upload_bytes"] = n
    return web.Response(text="ok\n")
async def stats(request):
    return web.json_response(counts)
app = web.Application(client_max_size=1 << 40)
app.router.add_get("/__counts", stats)
app.router.add_route("*", "/{tail:.*}", judge)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@contextmanager
def checking_upstream() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([bench_python(), "-c", CHECKING_UPSTREAM, str(port)])
    try:
        wait_port(port, "the checking upstream")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def upstream_counts(port: int) -> dict[str, int]:
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__counts", timeout=5) as r:
        counts: dict[str, int] = json.load(r)
        return counts


# The reference: a plain aiohttp proxy in a few lines (same header, pooled client,
# whole bodies), on the bench venv's aiohttp: the floor of what aiohttp itself costs.
PLAIN_AIOHTTP_PROXY = r"""
import sys
import aiohttp
from aiohttp import web
port, upstream, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
async def start(app):
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
async def handle(request):
    headers = {"Authorization": f"Bearer {token}"}
    body = await request.read()
    async with request.app["session"].request(request.method, upstream + request.raw_path,
                                              headers=headers, data=body or None) as r:
        return web.Response(status=r.status, body=await r.read(),
                            headers={"Content-Type": r.headers.get("Content-Type", "text/plain")})
async def stop(app):
    await app["session"].close()
app = web.Application()
app.on_startup.append(start)
app.on_cleanup.append(stop)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


@contextmanager
def plain_aiohttp_proxy(upstream: int, token: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [bench_python(), "-c", PLAIN_AIOHTTP_PROXY, str(port), f"http://127.0.0.1:{upstream}", token]
    )
    try:
        wait_port(port, "the plain aiohttp proxy")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- the figures


def throughput_and_latency(idp: IdentityProvider, reps: int, seconds: float) -> list[dict[str, Any]]:
    upstream = free_port()
    anchor = free_port()
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with (
        nginx(UPSTREAM_SERVER.format(port=upstream, prefix="{prefix}"), "the upstream nginx", upstream),
        tokend_proxy(idp.url, upstream) as (daemon, port, tmp),
    ):
        token = (tmp / "out" / "c0.token").read_text().strip()
        servers = ANCHOR_SERVER.format(upstream=upstream, port=anchor, token=token)
        with nginx(servers, "the anchor nginx", anchor), plain_aiohttp_proxy(upstream, token) as plain:
            urls = {
                "direct": f"http://127.0.0.1:{upstream}/",
                "nginx": f"http://127.0.0.1:{anchor}/",
                "tokend": f"http://127.0.0.1:{port}/",
                "aiohttp": f"http://127.0.0.1:{plain}/",
            }
            for url in urls.values():  # warm: pools filled, code paths hot
                wrk(url, 16, 1)
            load = [os.getloadavg()[0]]  # the machine's other load, which these figures feel
            for _ in range(reps):  # interleaved, so drift hits all four alike
                for connections in (16, 1):
                    for name, url in urls.items():
                        runs.setdefault((name, connections), []).append(wrk(url, connections, seconds))
            load.append(os.getloadavg()[0])
            rss_after_load = rss_kib(daemon.proc.pid)

    def col(name: str, connections: int, key: str) -> list[float]:
        return [r[key] for r in runs[(name, connections)]]

    failed = sum(r["non2xx"] + r["socket_errors"] for rs in runs.values() for r in rs)
    ours, anchor_rps = col("tokend", 16, "rps"), col("nginx", 16, "rps")
    ratio = summary(ours)["median"] / summary(anchor_rps)["median"]
    # Added latency at one connection: each run's median minus direct's in the same round.
    added = [
        (t - d) * 1000 for t, d in zip(col("tokend", 1, "p50_ms"), col("direct", 1, "p50_ms"), strict=True)
    ]
    added_nginx = [
        (n - d) * 1000 for n, d in zip(col("nginx", 1, "p50_ms"), col("direct", 1, "p50_ms"), strict=True)
    ]
    p99 = col("tokend", 16, "p99_ms")
    common = {
        "wrk": f"wrk -t1, {seconds:g} s a run, {reps} runs each, interleaved",
        "failed_requests": failed,
    }
    return [
        figure(
            "proxy throughput, 16 connections",
            "req/s",
            ours,
            baseline=anchor_rps,
            baseline_name="nginx 1.22, 1 worker, same header, keepalive upstream",
            target=">= 0.25x nginx",
            met=ratio >= 0.25,
            extra={
                **common,
                "upstream_alone_rps": summary(col("direct", 16, "rps")),
                "reference_plain_aiohttp_proxy_rps": summary(col("aiohttp", 16, "rps")),
                "upstream": "nginx 1.22, 1 worker, return 200 from memory",
                "median_ms": {name: summary(col(name, 16, "p50_ms"))["median"] for name in urls},
                "p99_ms": {name: summary(col(name, 16, "p99_ms"))["median"] for name in urls},
                "daemon_rss_kib_after_load": rss_after_load,
                "loadavg_1min_before_after": load,
            },
        ),
        figure(
            "proxy p99 latency, 16 connections",
            "ms",
            p99,
            baseline=col("nginx", 16, "p99_ms"),
            baseline_name="nginx, same run",
            target="<= 5 ms",
            met=summary(p99)["median"] <= 5,
        ),
        figure(
            "proxy added median latency over direct, 1 connection",
            "us",
            added,
            baseline=added_nginx,
            baseline_name="nginx's added median",
            target="<= 200 us",
            met=summary(added)["median"] <= 200,
            extra={
                "median_ms_1_connection": {name: summary(col(name, 1, "p50_ms"))["median"] for name in urls},
                "rps_1_connection": {name: summary(col(name, 1, "rps"))["median"] for name in urls},
            },
        ),
    ]


# 16 keep-alive connections over the unix socket, each asking GET /v1/token/c0 in a loop;
# the stdlib only (asyncio streams); prints "ok other" counts.
LOOKUP_CLIENT = r"""
import asyncio, sys, time
path, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
REQUEST = b"GET /v1/token/c0 HTTP/1.1\r\nHost: localhost\r\n\r\n"
counts = [0, 0]
async def worker(deadline):
    reader, writer = await asyncio.open_unix_connection(path)
    while time.monotonic() < deadline:
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        counts[0 if head.startswith(b"HTTP/1.1 200") else 1] += 1
    writer.close()
async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(deadline) for _ in range(conns)))
started = time.monotonic()
asyncio.run(main())
print(counts[0], counts[1], time.monotonic() - started)
"""


def endpoint_lookups(idp: IdentityProvider, reps: int, seconds: float) -> dict[str, Any]:
    tmp = workdir()
    daemon = Daemon(proxy_config(tmp, idp.url, 0, None, endpoint=True), tmp)
    rates, other = [], 0
    try:
        daemon.wait_ready(60)
        sock = tmp / "run" / "tokend.sock"
        wait_until(sock.exists, 10, "the endpoint's socket")
        for i in range(reps + 1):
            out = subprocess.run(
                [PYTHON, "-c", LOOKUP_CLIENT, str(sock), str(1 if i == 0 else seconds), "16"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if i:  # the first is the warm-up
                rates.append(int(out[0]) / float(out[2]))
                other += int(out[1])
    finally:
        daemon.stop()
    return figure(
        "endpoint lookups over the unix socket",
        "req/s",
        rates,
        target=">= 5,000/s",
        met=summary(rates)["median"] >= 5000 and other == 0,
        extra={
            "load_generator": "asyncio streams client (stdlib), 16 keep-alive connections, one process",
            "non_200": other,
        },
    )


def rss_with_proxy(idp: IdentityProvider, reps: int) -> dict[str, Any]:
    upstream = free_port()
    with_proxy: list[int] = []
    without: list[int] = []
    with nginx(UPSTREAM_SERVER.format(port=upstream, prefix="{prefix}"), "the upstream nginx", upstream):
        for _ in range(reps):
            for port, samples in ((free_port(), with_proxy), (None, without)):
                tmp = workdir()
                daemon = Daemon(proxy_config(tmp, idp.url, upstream, port), tmp)
                try:
                    daemon.wait_ready(60)
                    if port is not None:
                        wait_port(port, "tokend's proxy")
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                    time.sleep(1.0)  # let the startup burst's garbage go
                    samples.append(rss_kib(daemon.proc.pid))
                finally:
                    daemon.stop()
    delta = summary(with_proxy)["median"] - summary(without)["median"]
    return figure(
        "daemon RSS, 1 credential with a proxy on",
        "KiB",
        with_proxy,
        baseline=without,
        baseline_name="the same without the proxy",
        target="<= +15 MiB",
        met=delta <= 15 * 1024,
        extra={"delta_kib": delta, "note": "settled, after one proxied request"},
    )


@contextmanager
def rss_peak(pid: int) -> Iterator[dict[str, int]]:
    """The highest RSS seen while the block runs (sampled every 10 ms)."""
    seen = {"before": rss_kib(pid), "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen["peak"] = max(seen["peak"], rss_kib(pid))
            done.wait(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        seen["peak"] = max(seen["peak"], rss_kib(pid))


def streamed_body(idp: IdentityProvider) -> list[dict[str, Any]]:
    upstream = free_port()
    results = []
    with (
        nginx(
            UPSTREAM_SERVER.format(port=upstream, prefix="{prefix}"), "the upstream nginx", upstream
        ) as prefix,
        checking_upstream() as checking,
    ):
        big = prefix / "big"
        with open(big, "wb") as f:  # sparse: 1 GiB read, nothing written to disk
            f.truncate(GIB)
        for direction in ("download", "upload"):
            target = upstream if direction == "download" else checking
            with tokend_proxy(idp.url, target) as (daemon, port, _tmp):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                time.sleep(0.5)
                if direction == "download":
                    command = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"]
                    url = f"http://127.0.0.1:{port}/big"
                else:
                    command = [
                        "curl",
                        "-sS",
                        "--fail",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{size_upload}",
                        "-T",
                        str(big),
                    ]
                    url = f"http://127.0.0.1:{port}/upload"
                started = time.perf_counter()
                with rss_peak(daemon.proc.pid) as seen:
                    moved = int(
                        subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
                    )
                elapsed = time.perf_counter() - started
                received = upstream_counts(checking)["upload_bytes"] if direction == "upload" else moved
            growth = seen["peak"] - seen["before"]
            results.append(
                figure(
                    f"RSS growth while 1 GiB streams through the proxy ({direction})",
                    "KiB",
                    [growth],
                    target="<= 20 MiB",
                    met=growth <= 20 * 1024 and received == GIB,
                    extra={
                        "rss_before_kib": seen["before"],
                        "rss_peak_kib": seen["peak"],
                        "bytes_arrived": received,
                        "mib_per_s": GIB / elapsed / (1 << 20),
                    },
                )
            )
    return results


def rotations_under_load(quick: bool, rotations: int = 20) -> dict[str, Any]:
    # 1 s tokens: tokend refreshes about every 0.8 s, so 20 rotations take some 16 s.
    with (
        IdentityProvider({"bench": "bench-secret"}, lifetime=1, stamp_expiry=True) as idp,
        checking_upstream() as upstream,
        tokend_proxy(idp.url, upstream) as (_daemon, port, _tmp),
    ):
        url = f"http://127.0.0.1:{port}/"
        before = sum(1 for e in idp.events if e.status == 200)
        runs = []
        while sum(1 for e in idp.events if e.status == 200) - before < rotations:
            runs.append(wrk(url, 16, 5))
            if len(runs) > 12:
                break
        seen = sum(1 for e in idp.events if e.status == 200) - before
        counts = upstream_counts(upstream)
    non2xx = int(sum(r["non2xx"] for r in runs))
    errors = int(sum(r["socket_errors"] for r in runs))
    failed = non2xx + errors + counts["expired"] + counts["missing"]
    return figure(
        f"failed requests across {rotations} rotations under load",
        "requests",
        [failed],
        target=f"0 (with >= {rotations} rotations)",
        met=failed == 0 and seen >= rotations,
        extra={
            "rotations": seen,
            "requests": int(sum(r["requests"] for r in runs)),
            "rps": summary([r["rps"] for r in runs])["median"],
            "non2xx": non2xx,
            "socket_errors": errors,
            "upstream_saw_expired": counts["expired"],
            "upstream_saw_no_token": counts["missing"],
            "load": "wrk -t1 -c16, 5 s runs until the rotations are done; 1 s tokens",
        },
    )


def proxy_figures(idp: IdentityProvider, quick: bool) -> list[dict[str, Any]]:
    missing = missing_tools()
    if missing:
        line = f"proxy figures skipped: {' and '.join(missing)} not installed (apt-get install nginx wrk)"
        print(f"... {line}", file=sys.stderr, flush=True)
        return [
            {"figure": "proxy and endpoint figures", "unit": "", "skipped": line, "target": "", "met": None}
        ]
    reps, seconds = (1, 3.0) if quick else (3, 5.0)
    return [
        *throughput_and_latency(idp, reps, seconds),
        endpoint_lookups(idp, reps, seconds),
        rss_with_proxy(idp, 1 if quick else 3),
        *streamed_body(idp),
        rotations_under_load(quick),
    ]
