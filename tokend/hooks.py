"""on_rotate: tell a consumer that its token changed, by command and/or signal.

Hooks run on their own small pool, after the sinks were written, so a hook that fails or
hangs is logged and killed at its timeout but never delays a refresh.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from tokend.config import HookConfig
from tokend.token import Token

log = logging.getLogger("tokend.hooks")


def hook_environment(name: str, token: Token, hook: HookConfig,
                     base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["TOKEND_CREDENTIAL"] = name
    env["TOKEND_EXPIRES_AT"] = str(int(token.expires_at))
    env.pop("TOKEND_ACCESS_TOKEN", None)
    if hook.pass_token:
        env["TOKEND_ACCESS_TOKEN"] = token.access_token
    # systemd's notify socket is ours, not the hook's.
    for private in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(private, None)
    return env


def run_command(name: str, token: Token, hook: HookConfig) -> bool:
    env = hook_environment(name, token, hook, os.environ)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(hook.command, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
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
        log.error("%s: on_rotate command %s exited %d%s", name, hook.command[0], proc.returncode,
                  f": {tail[0][:200]}" if tail else "")
        return False
    log.info("%s: on_rotate command %s ran in %.2fs", name, hook.command[0], elapsed)
    return True


def send_signal(name: str, hook: HookConfig) -> bool:
    assert hook.pid_file is not None and hook.signal is not None
    try:
        text = hook.pid_file.read_text().strip()
        pid = int(text.split()[0])
        if pid <= 1:
            raise ValueError(pid)
        os.kill(pid, signal.Signals[hook.signal])
    except (OSError, ValueError, IndexError) as exc:
        log.error("%s: on_rotate cannot signal the pid in %s: %s", name, hook.pid_file,
                  getattr(exc, "strerror", None) or "no valid pid")
        return False
    log.info("%s: on_rotate sent %s to pid %d", name, hook.signal, pid)
    return True


def run_hook(name: str, token: Token, hook: HookConfig) -> bool:
    ok = True
    if hook.command:
        ok = run_command(name, token, hook) and ok
    if hook.pid_file is not None:
        ok = send_signal(name, hook) and ok
    return ok


class HookRunner:
    """A small pool for hooks, apart from the refresh workers."""

    def __init__(self, workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hook")

    def submit(self, name: str, token: Token, hook: HookConfig) -> Future[bool]:
        return self.pool.submit(self._guarded, name, token, hook)

    @staticmethod
    def _guarded(name: str, token: Token, hook: HookConfig) -> bool:
        try:
            return run_hook(name, token, hook)
        except Exception:
            log.exception("%s: on_rotate failed unexpectedly", name)
            return False

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
