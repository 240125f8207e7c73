"""The commands that do more than read a cache: fetch, token (when it must ask), exec,
status and check. Each maps its result to an exit code (0 ok, 1 failed, 2 usage, 78 config).

Imports of ``requests`` and friends happen inside the commands that talk to the network.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.cli.selection import UsageError, cached_token, select
from tokend.config import (
    ENV_NAME_RE,
    Config,
    ConfigError,
    CredentialConfig,
    default_env_name,
    load,
    locate_state_dir,
    shown_url,
)
from tokend.core.exit_codes import ExitCode, exec_failure
from tokend.core.timestamps import rfc3339
from tokend.core.tokens import Token
from tokend.io import logsetup
from tokend.io.cache import TokenCache
from tokend.io.secret_sources import read_secret

if TYPE_CHECKING:
    from tokend.core.health import CredentialStatus, FleetHealth
    from tokend.core.results import Attempt
    from tokend.daemon.exec_options import Supervision
    from tokend.io.token_client import TokenClient


log = logging.getLogger("tokend")


def setup_logging(config: Config | None, *, quiet: bool = False) -> None:
    """Log to stderr as the config asks, and say what the config warned about."""
    if config is None or quiet:
        logsetup.setup("warning")
    else:
        logsetup.setup(config.log_level, config.log_format)
    for warning in config.warnings if config is not None else ():
        log.warning("%s", warning)


# --------------------------------------------------------------------------- fetch


def cmd_fetch(config: Config, names: Sequence[str], *, force: bool) -> int:
    creds = select(config, names)
    from tokend.daemon.refresher import Refresher
    from tokend.io.token_client import TokenClient

    cache = TokenCache(config.state_dir)
    client = TokenClient()
    worst = ExitCode.OK
    try:
        for cred in creds:
            # One credential's failure never stops the others (certbot's renewal loop).
            try:
                outcome = Refresher(cred, cache).refresh(client, force=force)
            except ConfigError as exc:
                log.error("%s", exc)
                worst = max(worst, ExitCode.CONFIG)
                continue
            if fetch_succeeded(outcome, force=force):
                log_fetch(outcome)
            else:  # the refresher has said why, in one line
                worst = max(worst, ExitCode.FAILED)
    finally:
        client.close()
    return worst


def log_fetch(outcome: Attempt) -> None:
    token = outcome.token
    assert token is not None
    how = "new token" if outcome.fetched else "cached token"
    log.info(
        "%s: fetch ok: %s %s, valid until %s, %d sink(s) written",
        outcome.name,
        how,
        token.fingerprint,
        rfc3339(token.expires_at),
        outcome.sinks_written,
        extra={
            "event": "fetch",
            "credential": outcome.name,
            "outcome": "success",
            "token": token.fingerprint,
        },
    )


def fetch_succeeded(outcome: Attempt, *, force: bool) -> bool:
    """Every sink holds a valid token; with --force, a *new* one."""
    if outcome.token is None or outcome.sink_errors:
        return False
    return not (force and outcome.request_failed)


# --------------------------------------------------------------------------- token


def valid_token(config: Config, cred: CredentialConfig) -> Token | None:
    """A token for scripts: the cached one while fresh, else a new one (sinks untouched)."""
    token = cached_token(config, cred)
    if token is not None:
        return token
    setup_logging(config, quiet=True)

    from tokend.daemon.refresher import Refresher
    from tokend.io.token_client import TokenClient

    client = TokenClient()
    try:
        return Refresher(cred, TokenCache(config.state_dir)).refresh(client, write_sinks=False).token
    finally:
        client.close()


def cmd_token(config: Config, name: str) -> int:
    (cred,) = select(config, [name])
    token = valid_token(config, cred)
    if token is None:
        return ExitCode.FAILED
    sys.stdout.write(token.access_token + "\n")
    return ExitCode.OK


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


# --------------------------------------------------------------------------- status


def cmd_status(path: Path, *, as_json: bool, check: bool = False) -> int:
    from tokend.core.exit_codes import Nagios
    from tokend.core.health import describe, health_check, verdict
    from tokend.core.results import Verdict
    from tokend.io.files import pid_alive
    from tokend.io.status_file import read_status

    try:
        state_dir = load(path).state_dir
    except ConfigError as exc:
        # The daemon keeps running the last good config; its report is what matters now.
        print(f"tokend: {exc}", file=sys.stderr)
        state_dir = locate_state_dir(path)
    problem: str | None
    try:
        status = read_status(state_dir)
    except FileNotFoundError:
        problem = f"no status in {state_dir}: has `tokend run` started with this config?"
    except (OSError, ValueError) as exc:
        problem = f"cannot read the status in {state_dir}: {exc}"
    else:
        problem = None
    if problem is not None:
        if check:
            print(f"TOKEND UNKNOWN - {problem}")
            return Nagios.UNKNOWN
        print(f"tokend: {problem}", file=sys.stderr)
        return ExitCode.FAILED
    now = time.time()
    running = pid_alive(status.pid)
    if check:
        code, line = health_check(status, running=running, now=now)
        print(line)
        return code
    verdicts = {name: verdict(cred, now) for name, cred in status.credentials.items()}
    healthy = running and status.config_error is None and all(v == Verdict.OK for v in verdicts.values())
    if as_json:
        import json

        data = json.loads(status.to_json())
        data["running"] = running
        data["healthy"] = healthy
        for name, value in verdicts.items():
            data["credentials"][name]["verdict"] = value
        print(json.dumps(data, indent=2, sort_keys=True))
        return ExitCode.OK if healthy else ExitCode.FAILED
    print(f"tokend pid {status.pid}: {'running' if running else 'NOT RUNNING'}, config {status.config}")
    if status.config_error:
        print(f"config rejected (still running the last good one): {status.config_error}")
    for warning in status.warnings:
        print(f"warning: {warning}")
    if status.fleet is not None and running:  # a stopped daemon holds no lease, leads nobody
        print(fleet_line(status.fleet, status.credentials.values(), now))
    for cred in status.credentials.values():
        print(describe(cred, now, running=running))
    return ExitCode.OK if healthy else ExitCode.FAILED


def fleet_line(fleet: FleetHealth, creds: Iterable[CredentialStatus], now: float) -> str:
    """Fleet mode's health in one line: Redis reachable (or since when not, and why) and
    each credential's role."""
    from tokend.core.health import human_duration

    since = fleet.since
    ago = f" since {human_duration(max(0.0, now - since))} ago" if isinstance(since, int | float) else ""
    if fleet.reachable:
        state = "reachable"
    else:
        state = f"UNREACHABLE{ago} ({fleet.last_error or 'no answer'}); every credential on its own"
    roles = ", ".join(f"{c.name} {c.role}" for c in creds if c.role)
    return f"fleet: Redis {fleet.redis} {state}" + (f"; {roles}" if roles else "")


# --------------------------------------------------------------------------- check


def cmd_check(config: Config, *, online: bool) -> int:
    """Report every problem found, one line each, instead of stopping at the first."""
    select(config, ())  # none at all: exit 78, it is almost surely the wrong file
    problems: list[str] = []
    secrets: dict[str, tuple[str, str | None]] = {}
    for cred in config.credentials.values():
        try:
            ref = cred.client_secret
            secrets[cred.name] = (read_secret(cred, cred.client_id), read_secret(cred, ref) if ref else None)
        except ConfigError as exc:
            problems.append(str(exc))
        problems.extend(check_keys(cred))
        problems.extend(check_paths(cred))
    problems.extend(check_state_dir(config))
    problems.extend(check_fleet_password(config))
    for problem in problems:
        print(f"tokend: {problem}", file=sys.stderr)
    if problems:
        return ExitCode.CONFIG
    for cred in config.credentials.values():
        print(
            f"ok: {cred.name}: {shown_url(cred.token_url) if cred.token_url else f'issuer {cred.issuer}'} "
            f"({cred.request_format}, {cred.client_auth}), "
            f"{len(cred.sinks)} sink{'s' if len(cred.sinks) != 1 else ''}"
        )
    return check_online(config, secrets) if online else ExitCode.OK


def check_keys(cred: CredentialConfig) -> list[str]:
    """The private key and client certificate parse, suit signing_alg and belong together."""
    from tokend.io.token_client import key_auth

    try:
        key_auth(cred)
    except ConfigError as exc:
        return [str(exc)]
    return []


def check_paths(cred: CredentialConfig) -> list[str]:
    import shutil

    from tokend.io.hooks import read_pid_file
    from tokend.io.sinks import SinkError, resolve_owner, unsafe_path

    problems = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{cred.source}: {cred.where(key)}: {message}")

    for i, sink in enumerate(cred.sinks):
        directory = sink.path.parent
        if not directory.is_dir():
            problem(f"sink[{i}].path", f"directory {directory} does not exist")
        elif not os.access(directory, os.W_OK | os.X_OK):
            problem(f"sink[{i}].path", f"directory {directory} is not writable")
        elif (reason := unsafe_path(sink)) is not None:
            problem(
                f"sink[{i}].path",
                f"{sink.path} {reason}" if reason.startswith("is ") else f"{sink.path}: {reason}",
            )
        try:
            resolve_owner(sink)
        except SinkError as exc:
            key = "owner" if exc.reason.startswith("owner") else "group"
            problem(f"sink[{i}].{key}", exc.reason)
    if cred.ca_bundle is not None and not os.access(cred.ca_bundle, os.R_OK):
        problem("ca_bundle", f"{cred.ca_bundle}: cannot read")
    hook = cred.on_rotate
    if hook is not None and hook.command and shutil.which(hook.command[0]) is None:
        problem("on_rotate.command", f"{hook.command[0]!r}: no such program")
    if hook is not None and hook.pid_file is not None and hook.pid_file.exists():
        try:
            read_pid_file(hook.pid_file)
        except ValueError as exc:
            problem("on_rotate.pid_file", f"{hook.pid_file}: {exc}")
    return problems


def check_state_dir(config: Config) -> list[str]:
    directory = config.state_dir
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"{config.path}: tokend.state_dir: {directory} cannot be created or written"]
    return []


def check_online(config: Config, secrets: dict[str, tuple[str, str | None]]) -> int:
    from tokend.core.token_response import TokenRequestError
    from tokend.io.token_client import TokenClient

    client = TokenClient()
    worst = ExitCode.OK
    try:
        for cred in config.credentials.values():
            client_id, secret = secrets[cred.name]
            try:
                if cred.issuer is not None:
                    show_discovery(client, cred, config.state_dir)
                answer = client.obtain(
                    cred, client_id=client_id, client_secret=secret, state_dir=config.state_dir
                )
            except TokenRequestError as exc:
                url = shown_url(cred.token_url or cred.issuer or "")
                print(f"tokend: {cred.name}: {url}: {exc}", file=sys.stderr)
                worst = max(worst, ExitCode.FAILED)
                continue
            except ConfigError as exc:  # discovery refused the issuer's metadata
                print(f"tokend: {exc}", file=sys.stderr)
                worst = ExitCode.CONFIG
                continue
            token = answer.token
            print(
                f"online: {cred.name}: token {token.fingerprint}, {token.token_type}, "
                f"valid {round(token.lifetime)}s ({answer.style})"
            )
    finally:
        client.close()
    return max(worst, check_fleet(config))


def check_fleet_password(config: Config) -> list[str]:
    """Offline too: the Redis password can be read (``run`` would exit 78 on it)."""
    if config.fleet is None:
        return []
    from tokend.io.fleet_secret import read_password

    try:
        read_password(config.fleet, config.path, os.environ)
    except ConfigError as exc:
        return [str(exc)]
    return []


def check_fleet(config: Config) -> int:
    """``--online`` with ``[fleet]``: Redis answers a PING with the configured password."""
    if config.fleet is None:
        return ExitCode.OK
    from tokend.daemon.fleet_mode import fleet_imports

    fleet_imports(config.path)
    from tokend.io.fleet_secret import read_password
    from tokend.io.fleet_store import FleetStore, RedisDown

    store = FleetStore(config.fleet, read_password(config.fleet, config.path, os.environ))
    try:
        store.ping()
    except RedisDown as exc:
        print(f"tokend: fleet: {config.fleet.redis_url.split('?', 1)[0]}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        store.close()
    print(f"online: fleet: Redis {config.fleet.redis_url.split('?', 1)[0]} answers")
    return ExitCode.OK


def show_discovery(client: TokenClient, cred: CredentialConfig, state_dir: Path) -> None:
    """What the issuer's metadata says (fetched now), and a warning for each setting of
    the credential it does not list as supported."""
    from tokend.core.discovery import discovery_warnings
    from tokend.io.token_client import key_auth

    keys = key_auth(cred)
    found, _ = client.discover(cred, state_dir, refresh=True, tls=keys.tls)  # the certificate too
    endpoint = found.endpoint(mtls=keys.tls is not None)
    methods = ", ".join(found.auth_methods) if found.auth_methods is not None else "not listed"
    print(
        f"discovered: {cred.name}: issuer {found.issuer}: "
        f"token endpoint {shown_url(endpoint)}; auth methods: {methods}"
    )
    for warning in discovery_warnings(found, cred.client_auth, keys.signer.alg if keys.signer else None):
        print(f"tokend: warning: {cred.name}: {warning}", file=sys.stderr)
