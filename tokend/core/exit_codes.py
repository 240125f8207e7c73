"""What the ``tokend`` command returns, defined once.

Its own module, importing only ``enum`` (which ``re`` has loaded already): ``tokend token``'s
fast path returns these before anything heavier is imported.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the ``tokend`` command returns (sysexits.h where one fits)."""

    OK = 0
    FAILED = 1  # a token could not be had, a sink not written; status: unhealthy
    USAGE = 2  # the command line names something that is not there
    LOCKED = 75  # EX_TEMPFAIL: another daemon holds the state directory
    CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops the restart loop


class Nagios(IntEnum):
    """``tokend status --check``: the monitoring plugins' exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3
