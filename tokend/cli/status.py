"""``tokend status``: the daemon's status.json read and told, in lines, as JSON or as a
Nagios check."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend.config import ConfigError, default_state_dir, load, locate_state_dir
from tokend.core.exit_codes import ExitCode

# Where the shipped unit (systemd/tokend.service: StateDirectory=tokend) has the daemon
# write status.json. An operator's shell (or sudo) has no STATE_DIRECTORY, so the default
# would be their own ~/.local/state/tokend, where no daemon writes.
SYSTEM_STATE_DIR = Path("/var/lib/tokend")

if TYPE_CHECKING:
    from tokend.core.health import CredentialStatus, FleetHealth


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
    looked = candidates(state_dir, os.environ)
    for state_dir in looked:
        try:
            (state_dir / "status.json").stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            pass  # there, but not ours to read (0700 and tokend's): read it to say so
        break
    else:
        state_dir = looked[0]
    problem: str | None
    try:
        status = read_status(state_dir)
    except FileNotFoundError:
        places = " or ".join(str(d) for d in looked)
        problem = (
            f"no status in {places}: has `tokend run` started with this config? "
            "(the daemon's state directory is its config's state_dir, else $STATE_DIRECTORY: "
            "set either to point tokend status there)"
        )
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

        data = with_rfc3339(json.loads(status.to_json()), TOP_TIMES)
        data["running"] = running
        data["healthy"] = healthy
        for name, value in verdicts.items():
            data["credentials"][name] = with_rfc3339(data["credentials"][name], CREDENTIAL_TIMES)
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


def candidates(state_dir: Path, environ: Mapping[str, str]) -> list[Path]:
    """Where to look for status.json: the state directory the config gives, and, when that
    is only the per-user default (no state_dir in the config, no $STATE_DIRECTORY), the
    shipped unit's /var/lib/tokend after it. The config's own choice is never second-guessed."""
    if environ.get("STATE_DIRECTORY") or state_dir != default_state_dir(environ):
        return [state_dir]
    return [state_dir] if state_dir == SYSTEM_STATE_DIR else [state_dir, SYSTEM_STATE_DIR]


# status --json's times are unix seconds, as in status.json (scripts do arithmetic on
# them); each set one has a twin in RFC 3339, the json sink's form, named for its type:
# the json sink's `expires_at` is RFC 3339, so the name alone does not say which.
TOP_TIMES = ("updated_at",)
CREDENTIAL_TIMES = ("expires_at", "obtained_at", "next_refresh", "last_success", "last_attempt")


def with_rfc3339(record: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``record`` with ``KEY_rfc3339`` next to each of ``keys`` that holds a unix time."""
    from tokend.core.timestamps import rfc3339

    for key in keys:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            record[f"{key}_rfc3339"] = rfc3339(value)
    return record


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
