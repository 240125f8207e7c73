"""``tokend exec NAME -- CMD``: CMD with the token in its environment, by ``execvpe``, or
supervised (``--on-rotate``): restarted or signalled on each new token (daemon/supervisor)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from tokend.cli.selection import UsageError, bearer_usable, select
from tokend.cli.token import valid_token
from tokend.config import ENV_NAME_RE, Config, CredentialConfig, default_env_name
from tokend.core.exit_codes import ExitCode, exec_failure
from tokend.core.tokens import Token
from tokend.io import logsetup
from tokend.io.cache import TokenCache

if TYPE_CHECKING:
    from tokend.daemon.exec_options import Supervision


def cmd_exec(
    config: Config,
    name: str,
    command: list[str],
    *,
    env_name: str | None,
    on_rotate: str = "none",
    stop_signal: str | None = None,
    stop_timeout: str | None = None,
) -> int:
    """Run CMD with the token in its environment: by ``execvpe`` (``--on-rotate none``), or
    as its parent, restarting or signalling it on each new token (see daemon/supervisor)."""
    (cred,) = select(config, [name])
    bearer_usable(cred, "exec")
    variable = env_name or default_env_name(cred.name)
    if not ENV_NAME_RE.fullmatch(variable):
        raise UsageError(f"--env-name {variable!r} is not a valid variable name")
    supervision = exec_supervision(on_rotate, stop_signal, stop_timeout)
    if supervision is not None:
        if supervision.rotate_signal is not None and not cred.sinks:
            raise UsageError(
                f"--on-rotate {on_rotate.strip()}: credential {cred.name!r} has no sinks, so the "
                "signal would bring the program no new token; add a sink or use restart"
            )
        return supervise(config, cred, command, variable, supervision)
    token = valid_token(config, cred)
    if token is None:
        return ExitCode.FAILED
    env = exec_environment(config, variable, token)
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 (argv by design, no shell)
    except OSError as exc:
        print(f"tokend: exec {command[0]}: {exc.strerror}", file=sys.stderr)
        return exec_failure(exc)
    raise AssertionError("unreachable: execvpe returned")


def exec_environment(config: Config, variable: str, token: Token) -> dict[str, str]:
    """The child's: the caller's environment minus secrets, plus the token and its expiry."""
    from tokend.io.hooks import child_environment

    env = child_environment(os.environ, config.secret_variables())
    env[variable] = token.access_token
    env[f"{variable}_EXPIRES_AT"] = str(int(token.expires_at))
    return env


def exec_supervision(on_rotate: str, stop_signal: str | None, stop_timeout: str | None) -> Supervision | None:
    """The options as one value, or None for a plain exec (which then imports nothing more)."""
    if on_rotate.strip().lower() == "none" and stop_signal is None and stop_timeout is None:
        return None
    import dataclasses

    from tokend.daemon.exec_options import parse_on_rotate, parse_signal, parse_stop_timeout

    try:
        supervision = parse_on_rotate(on_rotate)
        if supervision is None:
            raise ValueError("--stop-signal and --stop-timeout need --on-rotate restart or a signal")
        if stop_signal is not None:
            supervision = dataclasses.replace(
                supervision, stop_signal=parse_signal(stop_signal, "--stop-signal")
            )
        if stop_timeout is not None:
            supervision = dataclasses.replace(supervision, stop_timeout=parse_stop_timeout(stop_timeout))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return supervision


def supervise(
    config: Config, cred: CredentialConfig, command: list[str], variable: str, supervision: Supervision
) -> int:
    """Stay the parent: the first token as ``fetch`` gets it (sinks written, so a child
    that reads them finds it), then the daemon's runner keeps it fresh."""
    from tokend.daemon.refresher import Refresher
    from tokend.daemon.supervisor import Supervisor
    from tokend.io.private_process import ProcessEnvironment, make_undumpable
    from tokend.io.token_client import TokenClient

    # Long-lived now, like the daemon: its log level, not exec's quiet one; its memory and
    # environment closed to the program it supervises (same user: /proc/$PPID/environ).
    logsetup.setup(config.log_level, config.log_format)
    make_undumpable()
    environ = ProcessEnvironment()
    environ.hold(config.secret_variables())
    cache = TokenCache(config.state_dir)
    client = TokenClient()
    try:
        refresher = Refresher(cred, cache, environ=environ)
        first = refresher.refresh(client)
        if (
            first.token is not None
            and not first.fetched
            and not first.request_failed
            and starts_due(first.token, cred, time.time())
        ):
            # Cached, but inside its jitter window: the runner would replace it within
            # seconds and restart the program it just started. Start it with a new one.
            again = refresher.refresh(client, force=True)
            first = again if again.token is not None else first
    finally:
        client.close()
    if first.token is None:  # the refresher has said why, in one line
        return ExitCode.FAILED
    sys.stdout.flush()
    supervisor = Supervisor(
        cred,
        command,
        lambda token: exec_environment(config, variable, token),
        supervision,
        first.token,
        cache=cache,
        environ=environ,
    )
    return supervisor.leave(supervisor.run())


def starts_due(token: Token, cred: CredentialConfig, now: float) -> bool:
    """Whether ``token`` is already inside its refresh window (its earliest jittered due time)."""
    from tokend.core import policy

    earliest = policy.refresh_due_at(
        token, refresh_at=cred.refresh_at, min_ttl_margin=cred.min_ttl_margin, jitter=-1.0
    )
    return now >= earliest
