"""Keeping tokend's own process private to tokend: its memory and its environment.

A secret kept out of a child's environment is still one read of ``/proc/<tokend>/environ``
away for any process of the same user (a supervised program, a hook): that file shows the
environment tokend *started* with, which ``unsetenv`` never changes. A process that is not
dumpable (``PR_SET_DUMPABLE`` 0, as ssh-agent and gpg-agent make themselves) has its
``/proc/<pid>/environ``, ``mem`` and ``maps`` closed to every other process without
``CAP_SYS_PTRACE``, and leaves no core dump that would hold the secret.

Besides, the variables a config reads secrets from are taken out of ``os.environ`` once the
config is loaded, into :class:`ProcessEnvironment`, which still answers for them: a reload
that names them again finds them, and nothing tokend starts can inherit them by accident.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping

log = logging.getLogger("tokend")

PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Make this process non-dumpable; False (and a debug line) where the kernel or libc
    will not, e.g. outside Linux."""
    try:
        import ctypes

        ok = int(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("cannot make the process non-dumpable; /proc/%d/environ stays readable", os.getpid())
    return ok


class ProcessEnvironment(Mapping[str, str]):
    """``os.environ``, and the secret variables :meth:`hold` took out of it."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    def hold(self, names: Iterable[str]) -> None:
        """Move each named variable from ``os.environ`` here (kept: a reload may need it)."""
        for name in names:
            if name in os.environ:
                self._held[name] = os.environ.pop(name)

    def __getitem__(self, name: str) -> str:
        if name in os.environ:
            return os.environ[name]
        return self._held[name]

    def __iter__(self) -> Iterator[str]:
        yield from os.environ
        yield from (name for name in self._held if name not in os.environ)

    def __len__(self) -> int:
        return len(os.environ) + sum(1 for name in self._held if name not in os.environ)


def hold_secrets(environ: Mapping[str, str], names: Iterable[str]) -> None:
    """Take ``names`` out of the process environment, when ``environ`` is the process's."""
    if isinstance(environ, ProcessEnvironment):
        environ.hold(names)
