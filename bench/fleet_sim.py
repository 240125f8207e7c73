"""How far one Redis carries a fleet: 1,000 and 10,000 hosts, against a real Redis.

Ten thousand tokend daemons on two cores would measure the two cores, not the design. What
one fleet member costs Redis is known exactly (``tokend/io/fleet_store.py``): two
connections (commands, and a subscription to its identity's channel); nothing at all
between rotations but the leader's three lease renewals per lease; per rotation, the
leader's bounded read (``STRLEN`` + ``GETRANGE`` + ``PTTL``, one round trip), then ``SET PX``
+ ``PUBLISH`` of the sealed token in one round trip, and the message itself carries the
token to every follower (no follower sends a command).

So this opens those connections for real, 2 x 1,000 and 2 x 10,000 of them, against a real
``redis-server``, and plays the leader's rotation with a real sealed token: Redis's memory
for the connections, its CPU for a rotation (``/proc``), the bytes it sends, and the time
from ``PUBLISH`` until the last of the subscribers has the whole message. The subscribers
are raw sockets read by one process here, so that time is an upper bound: on a real fleet
each host reads its own. A host's own part after that (decrypt, write its sinks) is
measured by :mod:`bench.fleet` with real daemons. The steady load per second follows from
the counts above, for tokens of 5 minutes and of 1 hour.
"""

from __future__ import annotations

import resource
import selectors
import socket
import statistics
import time
from typing import Any

from tests.support.redis import RedisServer
from tokend.core.fleet import Shared, redis_keys
from tokend.core.tokens import Token

from .harness import figure, workdir

IDENTITY = "0" * 64  # a cache key's length
COMMANDS_PER_ROTATION = 7  # the leader's STRLEN, GETRANGE, PTTL, TIME, then TIME, SET PX, PUBLISH
RENEWALS_PER_LEASE = 3  # the leader's EVALSHA, every third of the lease
LEASE = 15.0  # the default


def sealed_token() -> bytes:
    """A real sealed blob, of an 800-character access token (a typical JWT)."""
    from tokend.io.fleet_crypto import seal

    now = time.time()
    token = Token("e" * 800, expires_at=now + 3600, obtained_at=now, scope="api.read")
    return seal(Shared(IDENTITY, token, "host-0001.example.internal", stamped=now), b"client-secret")


def redis_cpu(client: Any) -> float:
    """Redis's own CPU seconds (its getrusage, to the microsecond)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def message_frame(channel: bytes, blob: bytes) -> int:
    """Bytes of one pub/sub message as RESP2 sends it to a subscriber."""
    parts = [b"message", channel, blob]
    return len(b"*3\r\n") + sum(len(b"$%d\r\n" % len(p)) + len(p) + 2 for p in parts)


def subscribe_all(
    port: int, channel: bytes, hosts: int, commands: int
) -> tuple[list[socket.socket], list[socket.socket]]:
    command = b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    confirm = len(b"*3\r\n$9\r\nsubscribe\r\n") + len(b"$%d\r\n" % len(channel)) + len(channel) + 2 + 4
    subscribers, idle = [], []
    for _ in range(hosts):
        sub = socket.create_connection(("127.0.0.1", port))
        sub.sendall(command)
        subscribers.append(sub)
        if len(idle) < commands:  # the command connections: idle between rotations
            idle.append(socket.create_connection(("127.0.0.1", port)))
    for sub in subscribers:
        got = 0
        while got < confirm:
            got += len(sub.recv(4096))
        sub.setblocking(False)
    return subscribers, idle


def one_rotation(client: Any, subscribers: list[socket.socket], blob: bytes) -> dict[str, float]:
    _, token_key, channel = redis_keys("tokend", IDENTITY)
    frame = message_frame(channel.encode(), blob)
    selector = selectors.DefaultSelector()
    for sub in subscribers:
        selector.register(sub, selectors.EVENT_READ)
    received = dict.fromkeys(subscribers, 0)
    waiting = len(subscribers)
    sent_before = int(client.info("stats")["total_net_output_bytes"])
    cpu_before = redis_cpu(client)
    started = time.perf_counter()
    read = client.pipeline(transaction=False)
    read.strlen(token_key)
    read.getrange(token_key, 0, 16383)
    read.pttl(token_key)
    read.execute()
    pipe = client.pipeline(transaction=False)
    pipe.set(token_key, blob, px=3_600_000)
    pipe.publish(channel, blob)
    pipe.execute()
    while waiting:
        for key, _ in selector.select(10):
            sub = key.fileobj
            assert isinstance(sub, socket.socket)
            received[sub] += len(sub.recv(65536))
            if received[sub] >= frame:
                selector.unregister(sub)
                waiting -= 1
    delivered = time.perf_counter() - started
    cpu = redis_cpu(client) - cpu_before
    sent = int(client.info("stats")["total_net_output_bytes"]) - sent_before
    selector.close()
    return {"delivered_s": delivered, "redis_cpu_s": cpu, "bytes_sent": sent}


def measure(hosts: int, rotations: int, file_limit: int) -> dict[str, Any]:
    """One subscription per host, and as many of the hosts' idle command connections as the
    file limit leaves room for (here and in redis-server, which inherits it)."""
    commands = max(0, min(hosts, file_limit - hosts - 200))
    blob = sealed_token()
    root = workdir()
    server = RedisServer(root, extra=("--maxclients", str(hosts + commands + 100)))
    server.start()
    try:
        client = server.client()
        before = int(client.info("memory")["used_memory"])
        _, _, channel = redis_keys("tokend", IDENTITY)
        subscribers, idle = subscribe_all(server.port, channel.encode(), hosts, commands)
        try:
            per_connection = (int(client.info("memory")["used_memory"]) - before) / (hosts + commands)
            runs = [one_rotation(client, subscribers, blob) for _ in range(rotations)]
        finally:
            for conn in subscribers + idle:
                conn.close()
    finally:
        server.stop()
    return {
        "hosts": hosts,
        "connections": 2 * hosts,
        "connections_opened": hosts + commands,
        "redis_memory_per_connection_bytes": round(per_connection),
        "sealed_token_bytes": len(blob),
        "publish_to_last_subscriber_s": [r["delivered_s"] for r in runs],
        "redis_cpu_per_rotation_s": statistics.median(r["redis_cpu_s"] for r in runs),
        "bytes_per_rotation": statistics.median(r["bytes_sent"] for r in runs),
    }


def steady_load(measured: dict[str, Any], lifetime: float, refresh_at: float = 0.8) -> dict[str, float]:
    rotation = lifetime * refresh_at
    return {
        "token_lifetime_s": lifetime,
        "commands_per_s": COMMANDS_PER_ROTATION / rotation + RENEWALS_PER_LEASE / LEASE,
        "bytes_per_s": measured["bytes_per_rotation"] / rotation,
        "redis_cpu_percent": 100 * measured["redis_cpu_per_rotation_s"] / rotation,
    }


def raise_file_limit(wanted: int) -> int:
    """As many open files as 2 x 10,000 connections need, here and in redis-server (which
    inherits it): root may raise the hard limit too. Returns the limit now in force."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fleet_simulation(quick: bool) -> list[dict[str, Any]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_file_limit(2 * 10_000 + 1_000)
    results = []
    try:
        for hosts in (1_000, 10_000):
            if hosts + 200 > limit:
                print(f"... skipping {hosts} hosts: the file limit is {limit}", flush=True)
                continue
            measured = measure(hosts, 3 if quick else 7, limit)
            delivered = measured.pop("publish_to_last_subscriber_s")
            results.append(
                figure(
                    f"fleet of {hosts:,} (simulated): PUBLISH to the last subscriber",
                    "s",
                    delivered,
                    target="<= 1 s",
                    met=max(delivered) <= 1.0,
                    extra={**measured, "steady": [steady_load(measured, life) for life in (300.0, 3600.0)]},
                )
            )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, limit)))
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(fleet_simulation(quick=True), indent=2, default=str))
