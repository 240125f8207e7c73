"""When each credential runs next: one job per credential, armed for a moment, on a
bounded pool, so a thousand credentials need no thousand threads.

:class:`Jobs` is the seam; :class:`APSchedulerJobs` is the daemon's, a thin layer over
APScheduler (3.x). Tests use a manual implementation that runs due jobs on their clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from tokend.daemon.clock import Clock

WORKERS = 16


class Jobs(Protocol):
    def start(self) -> None: ...
    def schedule(self, job_id: str, delay: float, fn: Callable[..., None], *args: Any) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def wakeup(self) -> None: ...
    def shutdown(self) -> None: ...


class APSchedulerJobs:
    """APScheduler ``date`` jobs, one per credential id, replaced when re-armed.

    Its traps, checked in its code: the default ``misfire_grace_time`` (1 s) silently
    drops a late date job, hence None; its sleep does not count suspended time, hence
    :meth:`wakeup` from the daemon's heartbeat. Jobs are armed in wall time, which the
    daemon re-arms from the monotonic clock when the wall clock steps.
    """

    def __init__(self, clock: Clock, workers: int = WORKERS) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.clock = clock
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={
                "misfire_grace_time": None,
                "coalesce": True,
                "max_instances": 2,  # the run that re-arms its own id is still counted
            },
            timezone=UTC,
        )

    def start(self) -> None:
        self.scheduler.start()

    def schedule(self, job_id: str, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.scheduler.add_job(
            fn,
            trigger="date",
            run_date=datetime.fromtimestamp(self.clock.time() + delay, UTC),
            args=args,
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def cancel(self, job_id: str) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(job_id)

    def wakeup(self) -> None:
        self.scheduler.wakeup()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=False)
