"""A fake clock and jobs that run on it: the daemon's timing, in milliseconds of real time.

Both seams are the daemon's own (:class:`tokend.daemon.clock.Clock`,
:class:`tokend.daemon.jobs.Jobs`); what runs through them is real: real HTTP to a real
loopback server, real files, the real policy.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokend.daemon.reporting import Observer
from tokend.daemon.runner import Runner
from tokend.daemon.token_source import STANDALONE, TokenSource
from tokend.io.cache import TokenCache
from tokend.io.token_client import TokenClient


class FakeClock:
    """Wall and monotonic time that move only when told. ``step_wall`` moves the wall
    clock alone, as NTP or an operator does."""

    def __init__(self, wall: float = 1_900_000_000.0, mono: float = 1000.0) -> None:
        self.wall, self.mono = wall, mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


class ManualJobs:
    """One job per id, due at a monotonic moment; :meth:`run_until` runs what falls due,
    in order, synchronously, moving the clock to each job's moment."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pending: dict[str, tuple[float, int]] = {}
        self.heap: list[tuple[float, int, str, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = itertools.count()

    def start(self) -> None:
        pass

    def schedule(self, job_id: str, delay: float, fn: Callable[..., None], *args: Any) -> None:
        at, n = self.clock.monotonic() + max(0.0, delay), next(self.seq)
        self.pending[job_id] = (at, n)
        heapq.heappush(self.heap, (at, n, job_id, fn, args))

    def cancel(self, job_id: str) -> None:
        self.pending.pop(job_id, None)

    def wakeup(self) -> None:
        pass

    def shutdown(self) -> None:
        self.pending.clear()
        self.heap.clear()

    def next_at(self, job_id: str) -> float | None:
        entry = self.pending.get(job_id)
        return entry[0] if entry else None

    def run_until(self, until_mono: float, *, limit: int = 10_000) -> int:
        """Run every job due up to ``until_mono`` (including those they arm); returns how
        many ran. The clock ends at ``until_mono``."""
        ran = 0
        while self.heap and self.heap[0][0] <= until_mono and ran < limit:
            at, n, job_id, fn, args = heapq.heappop(self.heap)
            if self.pending.get(job_id) != (at, n):
                continue  # replaced or cancelled
            del self.pending[job_id]
            if at > self.clock.mono:
                self.clock.advance(at - self.clock.mono)
            fn(*args)
            ran += 1
        if until_mono > self.clock.mono:
            self.clock.advance(until_mono - self.clock.mono)
        return ran

    def run_for(self, seconds: float) -> int:
        return self.run_until(self.clock.monotonic() + seconds)


def runner_on(
    jobs: ManualJobs,
    state_dir: Path,
    *,
    client_factory: Callable[[], TokenClient] | None = None,
    source: TokenSource = STANDALONE,
    observer: Observer | None = None,
) -> Runner:
    """The daemon's Runner on the fake clock of ``jobs``, with a fixed random source."""
    clock = jobs.clock
    return Runner(
        jobs,
        observer or Observer(),
        cache=TokenCache(state_dir),
        clock=clock,
        rng=random.Random(1),
        environ={},
        on_ran=lambda name, first: None,
        client_factory=client_factory or (lambda: TokenClient(clock=clock.time)),
        source=source,
    )
