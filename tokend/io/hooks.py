"""on_rotate: tell a consumer that its token changed, by command and/or signal.

Hooks run on their own small pool, after the sinks were written, so a hook that fails or
hangs is logged and killed at its timeout but never delays a refresh.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tokend.config import HookConfig
from tokend.core.tokens import Token
from tokend.io.files import (
    OpenedFile,
    kernel_file,
    opened_path,
    trusted_uids,
    unsafe_directory_chain,
    untrusted_writer,
)

log = logging.getLogger("tokend.hooks")

# What a hook may inherit from tokend's environment: enough to find programs and speak the
# right language, nothing that could carry a secret (a client_secret_env variable, say).
INHERITED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "INVOCATION_ID",
        "SYSTEMD_EXEC_PID",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
    }
)
INHERITED_PREFIXES = ("LC_",)
# Never passed on to any child, allow-listed or not: systemd's channels are tokend's own.
PRIVATE = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "CREDENTIALS_DIRECTORY",
    }
)


def hook_environment(
    name: str, token: Token, hook: HookConfig, base: Mapping[str, str], secret_variables: Collection[str] = ()
) -> dict[str, str]:
    """A clean environment: the allow-list, then what tokend documents (``TOKEND_*``)."""
    env = {
        key: value
        for key, value in base.items()
        if (key in INHERITED or key.startswith(INHERITED_PREFIXES))
        and key not in secret_variables
        and key not in PRIVATE
    }
    env["TOKEND_CREDENTIAL"] = name
    env["TOKEND_EXPIRES_AT"] = str(int(token.expires_at))
    if hook.pass_token:
        env["TOKEND_ACCESS_TOKEN"] = token.access_token
    return env


def child_environment(base: Mapping[str, str], secret_variables: Collection[str]) -> dict[str, str]:
    """For ``tokend exec``, whose child is the caller's own program: the caller's
    environment, minus every variable a credential reads a secret from and tokend's
    private systemd channels."""
    return {key: value for key, value in base.items() if key not in secret_variables and key not in PRIVATE}


def run_command(
    name: str,
    token: Token,
    hook: HookConfig,
    secret_variables: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
) -> bool:
    env = hook_environment(name, token, hook, os.environ if environ is None else environ, secret_variables)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            hook.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("%s: on_rotate command %s cannot start: %s", name, hook.command[0], exc.strerror)
        return False
    try:
        _, stderr = proc.communicate(timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        # The whole process group: a shell script's children must not outlive it.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.error("%s: on_rotate command %s killed after %gs", name, hook.command[0], hook.timeout)
        return False
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if stderr else []
        if hook.pass_token and tail:
            tail = [line.replace(token.access_token, "[token]") for line in tail]
        log.error(
            "%s: on_rotate command %s exited %d%s",
            name,
            hook.command[0],
            proc.returncode,
            f": {tail[0][:200]}" if tail else "",
        )
        return False
    log.info("%s: on_rotate command %s ran in %.2fs", name, hook.command[0], elapsed)
    return True


def read_pid_file(path: Path) -> int:
    """The pid a pid file names, if the file can be trusted to name it.

    As systemd does for ``PIDFile=``: a pid file that someone other than tokend's user or
    root could write, or *point somewhere*, would let them choose which process tokend
    signals. So the whole path is judged as a sink's directories are (every directory and
    symlink on the way owned by root or tokend's user, no directory writable by others),
    then the open file itself (``fstat``): a regular file of a trusted user, outside
    /proc, /sys and /dev (``/proc/<pid>/stat`` is root's and starts with a pid). Raises
    ValueError with the reason.
    """
    chain = unsafe_directory_chain(path)  # the file's own name too: a planted symlink
    if chain is not None:
        raise ValueError(
            f"refusing a pid file whose path is not safe: {chain}: another user could pick the process"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ValueError(exc.strerror or "cannot open") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if kernel_file(OpenedFile(st, opened_path(fd, path))):
            raise ValueError("refusing a kernel file (/proc, /sys, /dev) as a pid file")
        reason = untrusted_writer(st, trusted_uids())
        if reason is not None:
            raise ValueError(f"refusing a pid file {reason}: another user could pick the process")
        words = os.read(fd, 64).decode("ascii", "replace").split()
    except OSError as exc:
        raise ValueError(exc.strerror or "cannot read") from None
    finally:
        os.close(fd)
    if not words or not words[0].isascii() or not words[0].isdigit() or len(words[0]) > 9:
        raise ValueError("no valid pid")
    pid = int(words[0])
    if pid <= 1:
        raise ValueError(f"refusing pid {pid}")
    return pid


def send_signal(name: str, hook: HookConfig) -> bool:
    assert hook.pid_file is not None and hook.signal is not None
    try:
        pid = read_pid_file(hook.pid_file)
        os.kill(pid, signal.Signals[hook.signal])
    except ValueError as exc:
        log.error("%s: on_rotate cannot signal the pid in %s: %s", name, hook.pid_file, exc)
        return False
    except OSError as exc:
        log.error("%s: on_rotate cannot signal the pid in %s: %s", name, hook.pid_file, exc.strerror)
        return False
    log.info("%s: on_rotate sent %s to pid %d", name, hook.signal, pid)
    return True


def run_hook(
    name: str,
    token: Token,
    hook: HookConfig,
    secret_variables: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
) -> bool:
    ok = True
    if hook.command:
        ok = run_command(name, token, hook, secret_variables, environ) and ok
    if hook.pid_file is not None:
        ok = send_signal(name, hook) and ok
    return ok


class HookRunner:
    """A small pool for hooks, apart from the refresh workers.

    Runs are coalesced per credential: at most one waits while another runs, and it is
    always for the newest token. With tokens rotating faster than a hook runs, a queue
    would grow without bound and run hooks for tokens long expired.
    """

    def __init__(self, workers: int = 4, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ  # what the hooks' allow-list draws from (None: os.environ)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hook")
        self.lock = threading.Lock()
        self.waiting: dict[str, tuple[Token, HookConfig, frozenset[str]]] = {}
        self.running: set[str] = set()

    def submit(
        self, name: str, token: Token, hook: HookConfig, secret_variables: Collection[str] = ()
    ) -> None:
        with self.lock:
            self.waiting[name] = (token, hook, frozenset(secret_variables))
            if name in self.running:
                return  # the running one picks it up when it is done
            self.running.add(name)
        try:
            self.pool.submit(self._drain, name)
        except RuntimeError:  # shut down: no more hooks
            with self.lock:
                self.running.discard(name)
                self.waiting.pop(name, None)

    def _drain(self, name: str) -> None:
        while True:
            with self.lock:
                item = self.waiting.pop(name, None)
                if item is None:
                    self.running.discard(name)
                    return
            token, hook, secret_variables = item
            try:
                run_hook(name, token, hook, secret_variables, self.environ)
            except Exception:
                log.exception("%s: on_rotate failed unexpectedly", name)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
