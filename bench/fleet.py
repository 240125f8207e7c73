"""Fleet mode, measured: N real ``tokend run`` daemons on this machine, one Redis, one IdP.

For N = 1, 5 and 20 daemons sharing one credential, with ``[fleet]`` and without it (the
baseline: the same daemons, each on its own), over a few rotations of short-lived tokens:

- identity-provider requests per rotation (the point of fleet mode: 1, not N);
- from a rotation (the IdP answering) to the last daemon's sink holding that token;
- with ``[fleet]``, fail-over: the leader is killed (SIGKILL) just before its token is due;
  how much later than due the next token reaches every surviving sink, against the lease.

Every daemon has its own state and sink directories, as separate hosts would. A thread
reads every sink every 2 ms and notes when each token first appears in each.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.redis import RedisServer
from tokend.devtools.idp import IdentityProvider

from .harness import Daemon, figure, wait_until, workdir
from .sink_format import read_token

CLIENT, SECRET = "fleet", "fleet-secret"
LIFETIME = 4  # seconds: the daemons refresh at 80 %, so a rotation every ~3.2 s
LEASE = 2.0  # seconds: short, so fail-over is measured in a bench-sized time
# Fail-over needs the proportions of real use, a token living many leases (an hour against
# 15 s): a follower waits for a silent leader only until a request's timeout (10 s) before
# its token ends, so with 4 s tokens every follower would simply ask for itself.
FAILOVER_LIFETIME = 30


class SinkWatch:
    """When each token first appeared in each sink (wall clock, as the IdP's events)."""

    def __init__(self, sinks: list[Path]) -> None:
        self.sinks = sinks
        self.seen: dict[str, dict[int, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            for i, sink in enumerate(self.sinks):
                token = read_token(sink)
                if token is not None:
                    self.seen.setdefault(token, {}).setdefault(i, now)
            time.sleep(0.002)

    def holders(self, token: str) -> dict[int, float]:
        return dict(self.seen.get(token, {}))


@contextmanager
def fleet_of(
    idp: IdentityProvider, n: int, *, fleet: bool
) -> Iterator[tuple[list[Daemon], list[Path], Path]]:
    root = workdir()
    server = RedisServer(root)
    server.start()
    daemons: list[Daemon] = []
    sinks: list[Path] = []
    try:
        secret = root / "client.secret"
        secret.write_text(SECRET + "\n")
        block = f'[fleet]\nredis_url = "{server.url}"\nlease = "{int(LEASE * 1000)}ms"\n\n' if fleet else ""
        for i in range(n):
            host = root / f"host{i}"
            host.mkdir()
            sink = host / "api.token"
            config = host / "tokend.toml"
            config.write_text(
                f'[tokend]\nstate_dir = "{host}/state"\nlog_level = "warning"\n\n{block}'
                f'[credentials.api]\ntoken_url = "{idp.url}"\nclient_id = "{CLIENT}"\n'
                f'client_secret_file = "{secret}"\nmin_ttl_margin = "0s"\n\n'
                f'[[credentials.api.sink]]\npath = "{sink}"\n'
            )
            daemons.append(Daemon(config, host))
            sinks.append(sink)
        for daemon in daemons:
            daemon.wait_ready(60)
        yield daemons, sinks, root
    finally:
        for daemon in daemons:
            if daemon.proc.poll() is None:
                daemon.stop()
        server.stop()


def role(root: Path, i: int) -> str | None:
    try:
        status = json.loads((root / f"host{i}" / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    role = status.get("credentials", {}).get("api", {}).get("role")
    return role if isinstance(role, str) else None


def rotations(idp: IdentityProvider, n: int, *, fleet: bool, seconds: float) -> dict[str, Any]:
    with fleet_of(idp, n, fleet=fleet) as (_daemons, sinks, _root):
        watch = SinkWatch(sinks)
        watch.thread.start()
        time.sleep(LIFETIME)  # past the start-up requests: steady state from here
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        time.sleep(1.0)  # let the window's last tokens reach every sink
        watch.stop.set()
        watch.thread.join()
    issued = [e for e in idp.events if start <= e.at < end and e.status == 200 and e.access_token]
    # Rotations per host: the distinct tokens host 0 held that were issued in the window.
    tokens = [e.access_token for e in issued if e.access_token]
    per_host = [sum(1 for t in tokens if i in watch.holders(t)) for i in range(n)]
    rotations_per_host = statistics.fmean(per_host) if per_host else 0.0
    spread = []
    for event in issued:
        holders = watch.holders(event.access_token or "")
        # With [fleet], a token counts once every daemon has it; without, each has its own.
        if holders and (len(holders) == n or not fleet):
            spread.append(max(holders.values()) - event.at)
    return {
        "requests": len(issued),
        "rotations_per_host": rotations_per_host,
        "requests_per_rotation": len(issued) / rotations_per_host if rotations_per_host else float("nan"),
        "to_last_sink_s": spread,
    }


def failover(n: int) -> tuple[float, int]:
    """Seconds from the leader's token coming due to the next token in every surviving
    sink, the leader having been killed 0.2 s before that due time; and how many tokens the
    identity provider issued for that one rotation."""
    with (
        IdentityProvider({CLIENT: SECRET}, lifetime=FAILOVER_LIFETIME) as idp,
        fleet_of(idp, n, fleet=True) as (daemons, sinks, root),
    ):
        watch = SinkWatch(sinks)
        watch.thread.start()
        wait_until(lambda: any(role(root, i) == "leader" for i in range(n)), 30, "a leader")
        leader = next(i for i in range(n) if role(root, i) == "leader")
        # The next rotation of the leader: the token in its sink was issued at `at`.
        token = read_token(sinks[leader])
        event = next(e for e in reversed(idp.events) if e.access_token == token)
        due = event.at + 0.8 * FAILOVER_LIFETIME * 0.95  # the leader's jitter: the early half
        time.sleep(max(0.0, due - 0.2 - time.time()))
        os.kill(daemons[leader].proc.pid, signal.SIGKILL)
        daemons[leader].proc.wait()
        survivors = [i for i in range(n) if i != leader]

        def everyone_has_a_new_token() -> bool:
            newer = [e for e in idp.events if e.at > due - 0.2 and e.status == 200]
            return any(all(i in watch.holders(e.access_token or "") for i in survivors) for e in newer)

        wait_until(everyone_has_a_new_token, FAILOVER_LIFETIME, "a new token after the leader's death")
        done = time.time()
        time.sleep(0.5)  # any request racing the new leader's would be in by now
        issued = sum(1 for e in idp.events if e.at > due - 0.2 and e.status == 200)
        watch.stop.set()
        watch.thread.join()
        return done - due, issued


def fleet_figures(idp_unused: object, quick: bool) -> list[dict[str, Any]]:
    seconds = 10.0 if quick else 20.0
    results: list[dict[str, Any]] = []
    with IdentityProvider({CLIENT: SECRET}, lifetime=LIFETIME) as idp:
        for n in (1, 5, 20):
            ours = rotations(idp, n, fleet=True, seconds=seconds)
            base = rotations(idp, n, fleet=False, seconds=seconds)
            results.append(
                figure(
                    f"fleet of {n}: IdP requests per rotation",
                    "requests",
                    [ours["requests_per_rotation"]],
                    baseline=[base["requests_per_rotation"]],
                    baseline_name=f"{n} daemons without [fleet]",
                    target="1 per rotation",
                    met=ours["requests_per_rotation"] <= 1.5,
                    extra={
                        "requests": {"fleet": ours["requests"], "baseline": base["requests"]},
                        "rotations_per_daemon": {
                            "fleet": ours["rotations_per_host"],
                            "baseline": base["rotations_per_host"],
                        },
                    },
                )
            )
            results.append(
                figure(
                    f"fleet of {n}: rotation to the last daemon's sink",
                    "s",
                    ours["to_last_sink_s"] or [float("nan")],
                    baseline=base["to_last_sink_s"] or [float("nan")],
                    baseline_name="without [fleet]: to each daemon's own sink",
                    target="<= 1 s",
                    met=max(ours["to_last_sink_s"] or [99.0]) <= 1.0,
                )
            )
        for n in (5, 20) if not quick else (5,):
            runs = [failover(n) for _ in range(1 if quick else 3)]
            late = [seconds for seconds, _ in runs]
            results.append(
                figure(
                    f"fleet of {n}: leader killed before its token is due, due to every sink",
                    "s",
                    late,
                    target=f"<= lease ({LEASE:g} s) + 1 s",
                    met=max(late) <= LEASE + 1.0,
                    extra={
                        "lease_s": LEASE,
                        "token_lifetime_s": FAILOVER_LIFETIME,
                        "tokens_issued_for_that_rotation": [issued for _, issued in runs],
                    },
                )
            )
    return results
