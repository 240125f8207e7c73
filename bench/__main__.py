"""``python -m bench``: what tokend costs, each figure beside a baseline from the same run.

Prints a table and writes ``bench/results.json``. Runs in a few minutes on 2 cores. tokend
is measured as users run it: ``pip install .`` (regular, not editable) into a venv of the
benchmark's own, made from this interpreter, and every Python baseline runs on that venv's
interpreter too. The identity provider is tokend's own stdlib one on 127.0.0.1 (its
throughput is reported, so it can be seen not to be the bottleneck). ``--quick`` runs
fewer repetitions.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokend.devtools.idp import IdentityProvider

from .fleet import fleet_figures
from .fleet_sim import fleet_simulation
from .harness import (
    PYTHON,
    Daemon,
    bench_env,
    bench_python,
    cleanup,
    cpu_seconds,
    credentials_config,
    figure,
    install,
    machine,
    rss_kib,
    summary,
    timed,
    tokend_command,
    wait_until,
    workdir,
    write_config,
)
from .proxy import proxy_figures

CLIENTS = {"bench": "bench-secret"}
RESULTS = Path(__file__).resolve().parent / "results.json"

# The stdlib server behind the identity provider listens with a backlog of 5: the sixteen
# clients of the fan-out baseline, connecting at once on a busy machine, overflowed it and
# got connections reset (or waited for SYN retries). Real identity providers queue more.
http.server.ThreadingHTTPServer.request_queue_size = 128


def token_cached(idp: IdentityProvider, runs: int) -> dict[str, Any]:
    tmp = workdir()
    config = write_config(tmp, credentials_config(tmp, idp.url, 1))
    env = bench_env(tmp)
    timed([*tokend_command(), "fetch", "-c", str(config)], env=env)
    ours, base = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        ours.append(timed([*tokend_command(), "token", "-c", str(config), "c0"], env=env))
        base.append(timed([bench_python(), "-c", "pass"], env=env))
    ratio = summary(ours)["median"] / summary(base)["median"]
    return figure(
        "tokend token NAME (cached)",
        "s",
        ours,
        baseline=base,
        baseline_name="python3 -c pass",
        target="<= 2.5x",
        met=ratio <= 2.5,
    )


BASELINE_FETCH = """
import sys, requests
url, path = sys.argv[1], sys.argv[2]
r = requests.post(url, data={"grant_type": "client_credentials", "scope": "s0"},
                  auth=("bench", "bench-secret"), timeout=10)
r.raise_for_status()
with open(path, "w") as f:
    f.write(r.json()["access_token"] + "\\n")
"""


def fetch_cold(idp: IdentityProvider, runs: int) -> dict[str, Any]:
    tmp = workdir()
    env = bench_env(tmp)
    ours, script, curl = [], [], []
    for i in range(runs):
        run_dir = tmp / f"run{i}"
        run_dir.mkdir()
        config = write_config(run_dir, credentials_config(run_dir, idp.url, 1))
        ours.append(timed([*tokend_command(), "fetch", "-c", str(config)], env=env))
        assert (run_dir / "out" / "c0.token").exists()
        script.append(
            timed(
                [bench_python(), "-c", BASELINE_FETCH, idp.url, str(run_dir / "out" / "script.token")],
                env=env,
            )
        )
        curl.append(
            timed(
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "-u",
                    "bench:bench-secret",
                    "-d",
                    "grant_type=client_credentials",
                    "-o",
                    str(run_dir / "out" / "curl.token"),
                    idp.url,
                ],
                env=env,
            )
        )
    ratio = summary(ours)["median"] / summary(script)["median"]
    return figure(
        "tokend fetch, cold, 1 credential",
        "s",
        ours,
        baseline=script,
        baseline_name="python script: import requests, POST, write",
        target="<= 1.3x",
        met=ratio <= 1.3,
        extra={"reference_curl": summary(curl)},
    )


def daemon_rss(idp: IdentityProvider, n: int) -> tuple[int, float]:
    """RSS (KiB) of a settled daemon with n credentials, and its seconds to READY."""
    tmp = workdir()
    config = write_config(tmp, credentials_config(tmp, idp.url, n))
    daemon = Daemon(config, tmp)
    try:
        ready = daemon.wait_ready()
        time.sleep(1.0)  # let the startup burst's garbage go
        return rss_kib(daemon.proc.pid), ready
    finally:
        daemon.stop()


def idle_python_rss() -> int:
    proc = subprocess.Popen([bench_python(), "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def rss_figures(idp: IdentityProvider, quick: bool) -> list[dict[str, Any]]:
    one = [daemon_rss(idp, 1)[0] for _ in range(3)]
    bare = [idle_python_rss() for _ in range(3)]
    results = [
        figure(
            "daemon RSS, 1 credential",
            "KiB",
            one,
            baseline=bare,
            baseline_name="idle python3",
            target="<= 3x",
            met=summary(one)["median"] / summary(bare)["median"] <= 3,
        )
    ]
    base = summary(one)["median"]
    for n in (1000,) if quick else (1000, 10000):
        rss, ready = daemon_rss(idp, n)
        per = (rss - base) / (n - 1)
        results.append(
            figure(
                f"daemon RSS, {n} credentials",
                "KiB",
                [rss],
                baseline=one,
                baseline_name="1-credential RSS",
                target="<= +5 KiB per credential",
                met=per <= 5,
                ratio=rss / base,
                extra={"kib_per_credential": per, "seconds_to_ready": ready},
            )
        )
    return results


def idle_cpu(seconds: float) -> list[dict[str, Any]]:
    """Two idle daemons side by side, one with the metrics endpoint on: CPU time is counted
    per process, so they measure the same window without disturbing each other."""
    # A 75 s token with refresh_at 0.8: one refresh a minute, as the target says.
    with IdentityProvider(CLIENTS, lifetime=75) as idp:
        daemons = {}
        for variant in ("plain", "metrics"):
            tmp = workdir()
            body = credentials_config(tmp, idp.url, 1, extra='min_ttl_margin = "5s"')
            config = write_config(tmp, body)
            if variant == "metrics":
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                config.write_text(
                    config.read_text().replace(
                        "[tokend]\n", f'[tokend]\nmetrics_listen = "127.0.0.1:{port}"\n', 1
                    )
                )
            daemons[variant] = Daemon(config, tmp)
        try:
            for daemon in daemons.values():
                daemon.wait_ready()
            time.sleep(1.0)
            before = {v: cpu_seconds(d.proc.pid) for v, d in daemons.items()}
            time.sleep(seconds)
            used = {v: cpu_seconds(d.proc.pid) - before[v] for v, d in daemons.items()}
            refreshes = sum(1 for e in idp.events if e.status == 200) - 2
        finally:
            for daemon in daemons.values():
                daemon.stop()
    plain, metrics = (used[v] * 1000 * 60 / seconds for v in ("plain", "metrics"))
    return [
        figure(
            "daemon CPU while idle (1 refresh/min)",
            "ms per minute",
            [plain],
            target="<= 20 ms per minute",
            met=plain <= 20,
            extra={"window_s": seconds, "refreshes_in_window_both_daemons": refreshes},
        ),
        figure(
            "daemon CPU while idle, metrics endpoint on",
            "ms per minute",
            [metrics],
            baseline=[plain],
            baseline_name="the same, metrics off",
            target="no measurable difference (< 2 ms per minute)",
            met=metrics - plain < 2,
        ),
    ]


BASELINE_FANOUT = """
import sys, threading, requests
from concurrent.futures import ThreadPoolExecutor
url, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
local = threading.local()
def one(i):
    s = getattr(local, "s", None) or setattr(local, "s", requests.Session()) or local.s
    r = s.post(url, data={"grant_type": "client_credentials", "scope": f"s{i}"},
               auth=("bench", "bench-secret"), timeout=10)
    r.raise_for_status()
    with open(f"{out}/c{i}.token", "w") as f:
        f.write(r.json()["access_token"] + "\\n")
with ThreadPoolExecutor(16) as pool:
    list(pool.map(one, range(n)))
"""


# The same requests, and for each token the durable write tokend makes of one raw sink
# (io/files.write_atomic): a temp file beside it (O_EXCL, 0600), write, fsync, rename,
# fsync of the directory. Against this baseline the ratio is what tokend costs beyond the
# writes it must make anyway.
BASELINE_FANOUT_DURABLE = """
import os, sys, threading, requests
from concurrent.futures import ThreadPoolExecutor
url, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
local = threading.local()
def write(path, data):
    tmp = f"{out}/.{os.path.basename(path)}.{os.getpid()}-{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
def one(i):
    s = getattr(local, "s", None) or setattr(local, "s", requests.Session()) or local.s
    r = s.post(url, data={"grant_type": "client_credentials", "scope": f"s{i}"},
               auth=("bench", "bench-secret"), timeout=10)
    r.raise_for_status()
    write(f"{out}/c{i}.token", (r.json()["access_token"] + "\\n").encode("ascii"))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(one, range(n)))
"""


def children_cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fan_out(idp: IdentityProvider, runs: int, n: int = 1000) -> list[dict[str, Any]]:
    ours: list[float] = []
    base: list[float] = []
    durable: list[float] = []
    cpu: dict[str, list[float]] = {"tokend": [], "base": [], "durable": []}
    for _ in range(runs):  # interleaved, so drift hits all three alike
        tmp = workdir()
        config = write_config(tmp, credentials_config(tmp, idp.url, n))
        daemon = Daemon(config, tmp)
        try:
            ours.append(daemon.wait_ready())
            cpu["tokend"].append(cpu_seconds(daemon.proc.pid))  # every thread's, at READY
            assert len(list((tmp / "out").glob("c*.token"))) == n
        finally:
            daemon.stop()
        baselines = ((BASELINE_FANOUT, base, "base"), (BASELINE_FANOUT_DURABLE, durable, "durable"))
        for script, times, key in baselines:
            out = tmp / "out" / key  # beside tokend's sinks, on the same filesystem
            out.mkdir()
            before = children_cpu()
            times.append(timed([bench_python(), "-c", script, idp.url, str(out), str(n)], env=bench_env(tmp)))
            cpu[key].append(children_cpu() - before)
            assert len(list(out.glob("c*.token"))) == n
    name = f"fan-out: {n} credentials due at once, to all sinks written"
    cpu_s = {key: summary(values)["median"] for key, values in cpu.items()}
    plain = figure(
        name,
        "s",
        ours,
        baseline=base,
        baseline_name="requests over a 16-thread pool, same requests",
        target="<= 1.5x",
        met=summary(ours)["median"] / summary(base)["median"] <= 1.5,
        extra={
            "idp_requests_per_s_in_baseline": n / summary(base)["median"],
            "cpu_s_median": {"tokend": cpu_s["tokend"], "baseline": cpu_s["base"]},
        },
    )
    with_writes = figure(
        f"{name}, against the same durable writes",
        "s",
        ours,
        baseline=durable,
        baseline_name="the same, each token written as tokend writes a raw sink "
        "(temp O_EXCL 0600, write, fsync, rename, directory fsync)",
        target="reported (what tokend costs beyond its writes)",
        met=None,
        extra={"cpu_s_median": {"tokend": cpu_s["tokend"], "baseline": cpu_s["durable"]}},
    )
    return [plain, with_writes]


def reload_latency(idp: IdentityProvider, edits: int) -> dict[str, Any]:
    tmp = workdir()
    body = credentials_config(tmp, idp.url, 1)
    config = write_config(tmp, body)
    daemon = Daemon(config, tmp)
    latencies = []
    try:
        daemon.wait_ready()
        for k in range(1, edits + 1):
            body += "\n" + credentials_config(tmp, idp.url, 1, first=k)
            temp = tmp / ".tokend.toml.new"  # saved the way editors save
            temp.write_text(config.read_text().split("\n\n", 1)[0] + "\n\n" + body)
            started = time.perf_counter()
            temp.replace(config)
            sink = tmp / "out" / f"c{k}.token"
            latencies.append(wait_until(sink.exists, 10, f"c{k}'s token") - started)
            time.sleep(0.3)
    finally:
        daemon.stop()
    return figure(
        "config edit -> new credential's token in its sink",
        "s",
        latencies,
        target="<= 0.5 s",
        met=summary(latencies)["median"] <= 0.5,
    )


def reader_storm(seconds: float, readers: int = 2) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with IdentityProvider(CLIENTS, lifetime=1, stamp_expiry=True) as idp:
        tmp = workdir()
        sinks = "".join(
            f'[[credentials.c0.sink]]\npath = "{tmp}/out/c0.{fmt}"\nformat = "{fmt}"\n'
            for fmt in ("raw", "json", "env", "header")
        )
        body = credentials_config(tmp, idp.url, 1, sink=False) + sinks
        config = write_config(tmp, body)
        daemon = Daemon(config, tmp)
        try:
            daemon.wait_ready()
            paths = [str(tmp / "out" / f"c0.{fmt}") for fmt in ("raw", "json", "env", "header")]
            results["tokend"] = run_readers(paths, seconds, readers)
            results["tokend"]["rotations"] = sum(1 for e in idp.events if e.status == 200)
        finally:
            daemon.stop()
        # The naive alternative: a cron-style loop of curl -o straight onto the file.
        resp = tmp / "out" / "curl.resp"
        loop = (
            f"while :; do curl -s -u bench:bench-secret -d grant_type=client_credentials "
            f"-o {resp} {idp.url}; sleep 0.5; done"
        )
        writer = subprocess.Popen(["sh", "-c", loop], start_new_session=True)
        try:
            wait_until(resp.exists, 10, "curl's first write")
            results["curl -o loop"] = run_readers([str(resp)], seconds, readers)
        finally:
            os.killpg(writer.pid, 15)
            writer.wait()
    ours = results["tokend"]
    return {
        "figure": "reader storm, 1 s tokens",
        "unit": "reads",
        "target": "0 partial, 0 expired",
        "value": ours,
        "baseline": {"name": "loop of curl -o sink", **results["curl -o loop"]},
        "met": ours["partial"] == 0 and ours["expired"] == 0 and ours["missing"] == 0,
    }


def run_readers(paths: list[str], seconds: float, readers: int) -> dict[str, int]:
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "bench.reader", str(seconds), *paths],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for _ in range(readers)
    ]
    totals = {"reads": 0, "partial": 0, "expired": 0, "missing": 0}
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        for key, value in json.loads(out).items():
            totals[key] += value
    return totals


# --------------------------------------------------------------------------- report


def cell(stats: dict[str, float], unit: str) -> str:
    def fmt(x: float) -> str:
        if unit == "s":
            return f"{x * 1000:.0f} ms"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"

    if stats.get("n", 1) == 1:
        return f"{fmt(stats['median'])}"
    return f"{fmt(stats['median'])} [{fmt(stats['min'])}..{fmt(stats['max'])}]"


MET = {True: "yes", False: "NO", None: "-"}  # None: reported, no target to meet


def table(results: list[dict[str, Any]]) -> str:
    rows = [("figure", "tokend (median [min..max])", "baseline", "ratio", "target", "met")]
    for r in results:
        unit = r["unit"]
        if "skipped" in r:
            rows.append((r["figure"], r["skipped"], "", "", "", MET[None]))
            continue
        if r["figure"].startswith("reader storm"):
            v, b = r["value"], r["baseline"]
            value = (
                f"{v['reads']:,} reads: {v['partial']} partial, {v['expired']} expired, "
                f"{v['missing']} missing"
            )
            base = f"{b['name']}: {b['reads']:,} reads: {b['partial']} partial, {b['expired']} expired"
            rows.append((r["figure"], value, base, "", r["target"], MET[r["met"]]))
            continue
        value = cell(r["value"], unit) + ("" if unit == "s" else f" {unit}")
        base = f"{r['baseline']['name']}: {cell(r['baseline'], unit)}" if "baseline" in r else ""
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        if "kib_per_credential" in r:
            ratio += f" (+{r['kib_per_credential']:.2f} KiB/cred)"
        rows.append((r["figure"], value, base, ratio, r["target"], MET[r["met"]]))
    return "\n".join(
        "| " + " | ".join(row) + " |" + ("\n|" + "---|" * 6 if i == 0 else "") for i, row in enumerate(rows)
    )


def shown(path: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def merged(path: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures of an earlier run's file that this run did not measure, then this run's.
    A kept figure says which run it came from (``from_run``: that run's date and install)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return results
    fresh = {r["figure"] for r in results}
    kept = []
    for old in earlier.get("figures", []):
        if old.get("figure") in fresh:
            continue
        old.setdefault(
            "from_run",
            {"date": earlier.get("date"), "source_sha256": earlier.get("install", {}).get("source_sha256")},
        )
        kept.append(old)
    return kept + results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no 10,000 credentials")
    parser.add_argument("--only", help="run only figures whose name contains this")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"where the JSON goes (default: {shown(RESULTS)})"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the figures in --out that this run does not measure (each marked with its run's date)",
    )
    args = parser.parse_args()
    steps: list[tuple[str, Callable[[IdentityProvider], Any]]] = [
        # 50 ms a pair: enough pairs for a median that does not move by the run
        ("token", lambda idp: token_cached(idp, 15 if args.quick else 40)),
        ("fetch", lambda idp: fetch_cold(idp, 5 if args.quick else 10)),
        ("rss", lambda idp: rss_figures(idp, args.quick)),
        ("fan-out", lambda idp: fan_out(idp, 2 if args.quick else 3)),
        ("reload", lambda idp: reload_latency(idp, 3 if args.quick else 7)),
        ("idle", lambda idp: idle_cpu(20 if args.quick else 60)),
        ("storm", lambda idp: reader_storm(5 if args.quick else 15)),
        ("fleet", lambda idp: fleet_figures(idp, args.quick)),
        ("fleet-sim", lambda idp: fleet_simulation(args.quick)),
        ("proxy", lambda idp: proxy_figures(idp, args.quick)),  # and the endpoint; needs nginx, wrk
    ]
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    installed = install()  # once per run (and kept between runs while the source is the same)
    try:
        with IdentityProvider(CLIENTS, lifetime=3600) as idp:
            for name, step in steps:
                if args.only and args.only not in name:
                    continue
                print(f"... {name}", file=sys.stderr, flush=True)
                out = step(idp)
                results.extend(out if isinstance(out, list) else [out])
    finally:
        cleanup()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "install": installed.describe(),
        "figures": results,
    }
    if args.merge:
        report["figures"] = merged(args.out, results)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"tokend benchmark, {report['date']}, {machine()['cpus']} CPUs ({machine()['cpu']}), "
        f"Python {machine()['python']}, {report['seconds']} s; tokend from a regular install "
        f"(pip install ., not editable) in {shown(installed.venv)}\n"
    )
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
