"""The main loop's skeleton, shared by ``tokend run`` (:class:`~tokend.daemon.loop.Daemon`)
and ``tokend exec --on-rotate`` (:class:`~tokend.daemon.supervisor.Supervisor`).

The shape is gunicorn's arbiter: signal handlers only queue the signal; the main thread
takes events off one queue and dispatches them; between events it beats a heartbeat that
wakes the jobs (whose sleep does not count suspended time) and notices steps of the wall
clock against the monotonic one (the jobs are armed in wall time: re-armed then). Signal
handlers are installed for the loop's lifetime and the previous ones restored after (as
uvicorn's ``capture_signals`` does), so a loop can run in-process and leave its host as it
was. What each loop does with an event, and which duties it has besides, is its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tokend.daemon.clock import Clock
from tokend.daemon.runner import Runner

HEARTBEAT = 30.0  # the design's upper bound on noticing a missed wakeup
CLOCK_JUMP = 2.0  # wall-vs-monotonic drift that counts as a step of the wall clock


@contextlib.contextmanager
def captured_signals(signals: Iterable[int], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for each of ``signals`` while inside; the previous handlers restored after."""
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class MainLoop:
    """The queue, the heartbeat and the watch on the clocks; a subclass sets ``runner``
    (whose callbacks put onto :attr:`events`) and dispatches what :meth:`next_event` gives."""

    runner: Runner

    def __init__(self, clock: Clock, heartbeat: float = HEARTBEAT) -> None:
        self.clock = clock
        self.heartbeat = heartbeat
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.wall_offset = clock.time() - clock.monotonic()
        self.next_beat = clock.monotonic() + heartbeat

    @property
    def abandoned(self) -> int:
        """Refreshes left in flight at stop."""
        return self.runner.abandoned

    def queue_signal(self, signum: int, _frame: object) -> None:
        """The signal handler: queue it for the loop, and nothing else."""
        self.events.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def beat_due(self, now: float) -> bool:
        """Whether the heartbeat is due at monotonic ``now``; if so the next one is armed."""
        if now < self.next_beat:
            return False
        self.next_beat = now + self.heartbeat
        return True

    def clock_step(self, now: float) -> float | None:
        """How far the wall clock moved against the monotonic one (at monotonic ``now``)
        since the last step, when that is over CLOCK_JUMP (an NTP step, a VM restored, an
        operator); None otherwise."""
        offset = self.clock.time() - now
        if abs(offset - self.wall_offset) <= CLOCK_JUMP:
            return None
        step, self.wall_offset = offset - self.wall_offset, offset
        return step

    def rearm(self) -> None:
        """Re-arm every run at its monotonic moment (the jobs are armed in wall time: a
        clock stepped back must not postpone a refresh)."""
        with contextlib.suppress(Exception):  # the jobs may be shutting down
            self.runner.rearm_all()

    def next_event(self, until: float, *, block: bool = True) -> object | None:
        """The next event, waiting for it until monotonic ``until`` (at least 10 ms), or
        not at all unless ``block``; None when none came."""
        try:
            if not block:
                return self.events.get_nowait()
            return self.events.get(timeout=max(0.01, until - self.clock.monotonic()))
        except queue.Empty:
            return None

    def leave(self, code: int) -> int:
        """Return ``code``, or exit with it at once if refreshes were abandoned at stop.

        concurrent.futures joins its worker threads at interpreter exit, so a request
        hanging until its timeout would hold a stop past systemd's patience. Those workers
        can only leave a temp file behind (swept later), never a damaged sink or cache.
        """
        if self.abandoned:
            logging.shutdown()
            sys.stdout.flush()
            os._exit(code)
        return code
