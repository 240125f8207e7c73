"""The daemon's two clocks, behind one seam: tests hand it a fake one and move time
themselves, in milliseconds of real time.

Wall time is what tokens, Retry-After and files speak; monotonic time is what the daemon
schedules by, since the wall clock can step (NTP, a VM restored, an operator).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...  # wall clock, unix seconds
    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
