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
    NOT_EXECUTABLE = 126  # exec: a shell's answer to a program it cannot run
    NOT_FOUND = 127  # exec: a shell's answer to a program that is not there


def exec_failure(exc: OSError) -> ExitCode:
    """``tokend exec``'s answer to a program it cannot start, as a shell's: 127 not found,
    126 not executable."""
    return ExitCode.NOT_FOUND if isinstance(exc, FileNotFoundError) else ExitCode.NOT_EXECUTABLE


class Nagios(IntEnum):
    """``tokend status --check``: the monitoring plugins' exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3
