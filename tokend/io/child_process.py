"""``tokend exec``'s process edges: starting the program, its process group, reaping, the
signal masks, job control's view of /proc, and dying of a signal.

If tokend itself is SIGKILLed, the child gets the stop signal from the kernel
(PR_SET_PDEATHSIG), set by a few lines of Python that run between fork and the program's
exec (:data:`SHIM`, about 10 ms): ``preexec_fn`` is not safe with tokend's threads, and
``posix_spawn`` cannot call prctl. Its own children are not covered: nothing is left to
wait for them once tokend is gone.

A child subreaper (PR_SET_CHILD_SUBREAPER, :func:`become_subreaper`): the grandchildren a
dead child leaves re-parent to tokend, not to init, and tokend reaps them itself. Reaping
never uses a plain ``waitpid(-1)``, which could take the current child's exit status from
its waiter thread: :func:`reap_strays` peeks with ``WNOWAIT`` and leaves the current child
alone. A process group is polled with ``killpg(pgid, 0)`` while it empties
(:func:`group_alive`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokend.core.exit_codes import ExitCode

UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
# A terminal sends these to a background job that touches it: blocked while tokend works (see
# tokend.daemon.supervisor), so its own output never brings them.
TERMINAL_ACCESS = frozenset({signal.SIGTTIN, signal.SIGTTOU})

# Run between fork and the program's exec: the kernel sends the stop signal to the child
# when tokend's main thread (the one that forked) ends, even by SIGKILL. If tokend died
# before the prctl, nobody is left to supervise: give up rather than run unwatched.
SHIM = f"""\
import os, sys
parent, signum, path, *argv = sys.argv[1:]
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(parent):
    os._exit(1)
try:
    os.execv(path, argv)
except OSError as exc:
    sys.stderr.write(f"tokend: exec {{argv[0]}}: {{exc.strerror}}\\n")
    os._exit({int(ExitCode.NOT_FOUND)} if exc.errno == 2 else {int(ExitCode.NOT_EXECUTABLE)})
"""


# --------------------------------------------------------------------------- starting it


def resolve(program: str, search_path: str) -> str:
    """The file ``execvp`` would run (the shim execs a path), or FileNotFoundError."""
    if "/" in program:
        if not Path(program).exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        return program  # the shim reports what exec says of it (126, 127)
    found = shutil.which(program, path=search_path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


def launch_argv(command: Sequence[str], search_path: str, death_signal: signal.Signals) -> list[str]:
    """What Popen runs: the shim that sets PR_SET_PDEATHSIG, then the program (Linux with
    a known interpreter), else the program itself."""
    path = resolve(command[0], search_path)
    if sys.platform != "linux" or not sys.executable:
        return [path, *command[1:]]
    shim = [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), str(int(death_signal))]
    return [*shim, path, *command]


def spawn(
    argv: Sequence[str], env: Mapping[str, str], mask: set[int | signal.Signals]
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own, with the signal mask tokend started
    with (:func:`terminal_signals_open`). From the main thread: PR_SET_PDEATHSIG fires
    when the thread that forked ends."""
    with terminal_signals_open(mask):  # the child's mask: the one tokend started with
        return subprocess.Popen(argv, env=env, process_group=0)  # argv by design, no shell


def watch(
    proc: subprocess.Popen[bytes],
    ended: Callable[[subprocess.Popen[bytes], int], None],
    blocked: Iterable[int],
) -> None:
    """``ended(proc, returncode)`` from a thread of its own once ``proc`` ends (reaped);
    the thread blocks ``blocked`` (:func:`signals_blocked`)."""
    with signals_blocked(blocked):
        threading.Thread(target=lambda: ended(proc, proc.wait()), name="child-wait", daemon=True).start()


class Program:
    """The program tokend supervises: its current process (None from its end until the next
    start) and that process's group, remembered until no process is left in it."""

    def __init__(self, command: Sequence[str], death_signal: signal.Signals, blocked: Iterable[int]) -> None:
        """``death_signal``: what the kernel sends it should tokend die; ``blocked``: what
        its waiter thread blocks (the signals the main thread takes)."""
        self.command, self.death_signal, self.blocked = list(command), death_signal, tuple(blocked)
        self.proc: subprocess.Popen[bytes] | None = None
        self.group: int | None = None

    def start(
        self,
        env: Mapping[str, str],
        mask: set[int | signal.Signals],
        ended: Callable[[subprocess.Popen[bytes], int], None],
    ) -> subprocess.Popen[bytes]:
        """Start it (OSError if it cannot be), in a process group of its own, from the main
        thread (PR_SET_PDEATHSIG fires when the thread that forked ends); ``ended`` hears
        of its end."""
        argv = launch_argv(self.command, env.get("PATH", os.defpath), self.death_signal)
        proc = spawn(argv, env, mask)
        self.proc, self.group = proc, proc.pid
        watch(proc, ended, self.blocked)
        return proc

    def send(self, signum: signal.Signals) -> None:
        """To the process alone: its own children are its business."""
        if self.proc is not None:
            signal_process(self.proc, signum)

    def signal_group(self, signum: signal.Signals) -> None:
        """To every process left in its group (a restart's stop, the SIGKILL)."""
        if self.group is not None:
            signal_group(self.group, signum)

    def group_alive(self) -> bool:
        return self.group is not None and group_alive(self.group)

    def reap_strays(self) -> None:
        """Reap every ended child of tokend's but the current process (its waiter's)."""
        reap_strays(self.proc.pid if self.proc is not None else None)


# --------------------------------------------------------------------------- its group, its orphans


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER, so the child's orphans are ours to reap (Linux; best effort)."""
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_strays(current: int | None) -> None:
    """Reap every ended child of tokend's but ``current`` (the child whose waiter thread
    reaps it): the orphans a subreaper inherits."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == current:
            return  # nothing ended, or only the current child (others: at the next look)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group (a zombie counts until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # one that changed its user: still there
        return True
    return True


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """To every process left in the group; nothing when it has emptied."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def signal_process(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """To ``proc``'s pid alone, unless it has been reaped."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it has just exited: its waiter says so
        proc.send_signal(signum)


# --------------------------------------------------------------------------- job control


@dataclass(frozen=True, slots=True)
class Process:
    """What /proc/<pid>/stat says of a process's place in job control."""

    ppid: int
    pgrp: int
    session: int


def orphaned(pgrp: int, session: int, processes: Mapping[int, Process]) -> bool:
    """POSIX's orphaned process group: no member has a parent in another group of the same
    session, so no shell is there to continue it once stopped. (Pure: a judgement of the
    table :func:`process_table` reads.)"""
    for process in processes.values():
        parent = processes.get(process.ppid) if process.pgrp == pgrp else None
        if parent is not None and parent.pgrp != pgrp and parent.session == session:
            return False
    return True


def process_table() -> dict[int, Process]:
    """Every process /proc shows (empty where there is no /proc)."""
    found: dict[int, Process] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
                found[int(entry.name)] = Process(int(fields[1]), int(fields[2]), int(fields[3]))
            except (OSError, ValueError, IndexError):
                continue  # it ended while we looked
    return found


def job_control() -> bool:
    """Whether a stopped tokend has a shell to continue it: its group is not orphaned (or
    there is no /proc to tell)."""
    table = process_table()
    return not table or not orphaned(os.getpgrp(), os.getsid(0), table)


def stop_self() -> None:
    """SIGSTOP to tokend (a caught stop signal's default action is out of reach); returns
    once continued."""
    os.kill(os.getpid(), signal.SIGSTOP)


# --------------------------------------------------------------------------- signal masks


@contextlib.contextmanager
def signals_blocked(signals: Iterable[int]) -> Iterator[None]:
    """Threads started inside inherit a mask blocking ``signals``, so these are delivered
    to the main thread, whose queue wait they interrupt, and not to a worker (which would
    leave them pending until the main thread happened to wake)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def block_terminal_signals() -> set[int | signal.Signals]:
    """Block SIGTTIN and SIGTTOU in this thread; returns the mask before."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_ACCESS)


def restore_mask(mask: set[int | signal.Signals]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def terminal_signals_open(mask: set[int | signal.Signals]) -> Iterator[None]:
    """The main thread takes SIGTTIN and SIGTTOU only inside (its mask the one tokend
    started with): while it waits for an event (any sent meanwhile were kept pending), and
    while it forks the child, which inherits that mask."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_ACCESS)


# --------------------------------------------------------------------------- dying of a signal


def die_of(signum: int) -> None:
    """Kill this process with ``signum`` at its default action. No core file: tokend's
    memory holds the client secret (the child's own core, if any, is already written)."""
    import resource

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # A core_pattern that pipes to a helper ignores RLIMIT_CORE; not dumpable, it gets nothing.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    if signum not in UNCATCHABLE:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    # Still here: tokend is PID 1 (a container's init ignores even these); exit 128+N then.
