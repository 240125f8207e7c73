"""How far one Redis carries a fleet: 1,000 and 10,000 hosts, from costs measured here.

Running ten thousand tokend daemons on two cores measures the two cores, not the design. So
this measures what one host costs Redis, on a real ``redis-server`` in the same run, and
computes the rest:

- Redis's own CPU per command (``INFO commandstats``, server-side microseconds per call) for
  each command a fleet member sends, with the payload size tokend really stores;
- what a ``PUBLISH`` costs per subscriber, from real subscriber connections (0, 250, 1000);
- bytes on the wire per command (``INFO stats`` counters, not estimates).

Per-host command counts come from :data:`PER_ROTATION` and :data:`PER_LEASE` (what
``tokend/fleet`` sends; the fleet tests count them against a real server). The convergence
time after a rotation is a single-server queue: Redis serves the publish to every
subscriber, then every follower's read, one after the other, as its one thread does.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What one host sends Redis, per token rotation and per lease period (see tokend/fleet).
# A follower: the rotation message it receives, one GET after it, one GET on its own
# schedule. The leader, once per rotation: SET of the token, PUBLISH. Per lease period the
# leader extends its lease (EVALSHA); every follower checks it once (SET NX that fails).
PER_ROTATION = {"follower": {"GET": 2}, "leader": {"SET": 1, "PUBLISH": 1}}
PER_LEASE = {"follower": {"SET": 1}, "leader": {"EVALSHA": 3}}  # renewed at a third of the lease


@dataclass(frozen=True)
class Costs:
    usec: dict[str, float]  # Redis CPU per call, by command
    bytes_in: dict[str, float]  # bytes Redis received per call
    bytes_out: dict[str, float]  # bytes Redis sent per call
    publish_usec_per_subscriber: float
    publish_bytes_per_subscriber: float


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="tokend-sim-redis-")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "20000",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _stats(client: Any) -> tuple[dict[str, tuple[int, float]], int, int]:
    info = client.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_").upper(): (int(v["calls"]), float(v["usec"])) for name, v in info.items()
    }
    net = client.info("stats")
    return calls, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"])


def _measure(client: Any, command: str, run: Callable[[], object], n: int) -> tuple[float, float, float]:
    """Server-side µs per call and bytes in/out per call of ``n`` runs of one command."""
    before, in0, out0 = _stats(client)
    for _ in range(n):
        run()
    after, in1, out1 = _stats(client)
    calls = after[command][0] - before.get(command, (0, 0.0))[0]
    usec = after[command][1] - before.get(command, (0, 0.0))[1]
    # INFO itself adds a little to both byte counters; over n calls it is noise.
    return usec / calls, (in1 - in0) / n, (out1 - out0) / n


def measure(payload_bytes: int, n: int = 2000) -> Costs:
    import redis

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with redis_server() as port:
            client = redis.Redis(host="127.0.0.1", port=port)
            blob = os.urandom(payload_bytes)
            key, lease = "tokend:0123456789abcdef:token", "tokend:0123456789abcdef:lease"
            client.set(key, blob)
            client.set(lease, "holder", px=15000)
            extend = client.register_script(
                "if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
            )
            usec, b_in, b_out = {}, {}, {}
            for command, run in (
                ("GET", lambda: client.get(key)),
                ("SET", lambda: client.set(key, blob, px=3_600_000)),
                ("SET_NX", lambda: client.set(lease, "other", nx=True, px=15000)),
                ("EVALSHA", lambda: extend(keys=[lease], args=["holder", 15000])),
            ):
                name = "SET" if command == "SET_NX" else command
                usec[command], b_in[command], b_out[command] = _measure(client, name, run, n)
            # PUBLISH: its cost grows with the subscribers; fit a line through three counts.
            points = []
            subscribers: list[Any] = []
            try:
                for count in (0, 250, 1000):
                    while len(subscribers) < count:
                        pubsub = redis.Redis(host="127.0.0.1", port=port).pubsub()
                        pubsub.subscribe("tokend:rotated")
                        subscribers.append(pubsub)
                    for pubsub in subscribers:  # drain the subscribe confirmations
                        pubsub.get_message(timeout=0)
                    u, _, out = _measure(
                        client, "PUBLISH", lambda: client.publish("tokend:rotated", "x" * 64), 50
                    )
                    points.append((count, u, out))
            finally:
                for pubsub in subscribers:
                    pubsub.close()
            slope = _slope([(c, u) for c, u, _ in points])
            usec["PUBLISH"] = points[0][1]
            b_in["PUBLISH"] = 100.0
            b_out["PUBLISH"] = points[0][2]
            # Each subscriber gets the message framed as a 3-element push: ~ channel + body + 40.
            per_sub_bytes = len("tokend:rotated") + 64 + 40
            return Costs(usec, b_in, b_out, slope, per_sub_bytes)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _slope(points: list[tuple[int, float]]) -> float:
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def fleet_load(
    costs: Costs, hosts: int, *, lifetime: float, refresh_at: float = 0.8, lease: float = 15.0
) -> dict[str, float]:
    """Steady-state Redis load of ``hosts`` members sharing one credential."""
    rotation = lifetime * refresh_at
    followers = hosts - 1

    def per_second(table: dict[str, dict[str, int]], period: float) -> tuple[float, float, float]:
        ops = cpu = net = 0.0
        for role, count in (("follower", followers), ("leader", 1)):
            for command, times in table[role].items():
                key = "SET_NX" if (command == "SET" and table is PER_LEASE) else command
                if key == "SET" and role == "follower":
                    key = "SET_NX"
                ops += count * times / period
                cpu += count * times * costs.usec.get(key, costs.usec["GET"]) / period
                net += count * times * (costs.bytes_in.get(key, 0) + costs.bytes_out.get(key, 0)) / period
        return ops, cpu, net

    ops_r, cpu_r, net_r = per_second(PER_ROTATION, rotation)
    ops_l, cpu_l, net_l = per_second(PER_LEASE, lease)
    fanout_cpu = followers * costs.publish_usec_per_subscriber / rotation
    fanout_net = followers * costs.publish_bytes_per_subscriber / rotation
    return {
        "ops_per_s": ops_r + ops_l,
        "redis_cpu_percent": (cpu_r + cpu_l + fanout_cpu) / 1e6 * 100,
        "bytes_per_s": net_r + net_l + fanout_net,
        "connections": 2 * hosts,  # a command connection and a subscription per host
    }


def convergence(costs: Costs, hosts: int, *, local_write_s: float, rtt_s: float = 0.0005) -> float:
    """Seconds from the leader's PUBLISH to the last follower's sink, on one Redis thread:
    the message goes to every subscriber, then the followers' GETs queue up behind it."""
    followers = hosts - 1
    publish_done = (costs.usec["PUBLISH"] + followers * costs.publish_usec_per_subscriber) / 1e6
    gets_done = publish_done + rtt_s + followers * costs.usec["GET"] / 1e6
    return gets_done + rtt_s + local_write_s


def simulate(payload_bytes: int, local_write_s: float, quick: bool = False) -> dict[str, Any]:
    costs = measure(payload_bytes, n=500 if quick else 2000)
    rows = []
    for hosts in (1_000, 10_000):
        for lifetime in (300.0, 3600.0):
            load = fleet_load(costs, hosts, lifetime=lifetime)
            rows.append(
                {
                    "hosts": hosts,
                    "token_lifetime_s": lifetime,
                    **{k: round(v, 3) for k, v in load.items()},
                    "convergence_s": round(convergence(costs, hosts, local_write_s=local_write_s), 4),
                }
            )
    return {
        "measured": {
            "usec_per_call": {k: round(v, 2) for k, v in costs.usec.items()},
            "bytes_per_call": {k: round(costs.bytes_in[k] + costs.bytes_out[k], 1) for k in costs.usec},
            "publish_usec_per_subscriber": round(costs.publish_usec_per_subscriber, 4),
            "payload_bytes": payload_bytes,
            "local_write_s": local_write_s,
        },
        "fleets": rows,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(simulate(int(sys.argv[1]) if len(sys.argv) > 1 else 400, 0.002, quick=True), indent=2))
    _ = Path
