"""What the daemon tells the outside world about each credential, and how healthy that is.

The daemon writes ``status.json`` in its state directory (atomically, coalesced to at
most one write a second); ``tokend status`` reads it without talking to the daemon.
The health verdict is a pure function of the record and the clock.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tokend.io.files import ensure_private_dir, read_regular, sweep_once, write_atomic

STATUS_FILE = "status.json"


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    name: str
    token_fingerprint: str | None = None
    expires_at: float | None = None
    obtained_at: float | None = None
    next_refresh: float | None = None
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_retryable: bool | None = None
    failures: int = 0  # consecutive failed attempts (token request or sink write)

    def updated(self, **changes: Any) -> CredentialStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class DaemonStatus:
    pid: int
    updated_at: float
    config: str
    config_error: str | None = None
    credentials: dict[str, CredentialStatus] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # not failures, but worth a look (an empty config, say)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["credentials"] = {name: asdict(c) for name, c in self.credentials.items()}
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> DaemonStatus:
        data = json.loads(raw)
        creds = {name: CredentialStatus(**value) for name, value in data.pop("credentials").items()}
        warnings = tuple(str(w) for w in data.pop("warnings", ()))
        return cls(credentials=creds, warnings=warnings, **data)


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE


def write_status(state_dir: Path, status: DaemonStatus) -> None:
    ensure_private_dir(state_dir)
    sweep_once(state_dir)  # temps of a writer killed mid-write
    # 0644: status holds no secret (fingerprints only), and monitoring may run as another user.
    write_atomic(status_path(state_dir), status.to_json(), mode=0o644, durable=False)


def read_status(state_dir: Path) -> DaemonStatus:
    """Raises OSError or ValueError when there is no readable status."""
    try:
        return DaemonStatus.from_json(read_regular(status_path(state_dir), 1024 * 1024 * 64))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unrecognised status file: {exc}") from None


# --------------------------------------------------------------------------- health (pure)

OK, FAILING, EXPIRED = "ok", "failing", "expired"


def verdict(cred: CredentialStatus, now: float) -> str:
    """``expired`` (no valid token: readers are broken), ``failing`` (still a valid token,
    but the last attempt failed) or ``ok``."""
    if cred.expires_at is None or cred.expires_at <= now:
        return EXPIRED
    if cred.failures > 0:
        return FAILING
    return OK


def human_duration(seconds: float) -> str:
    whole = round(seconds)
    sign = "-" if whole < 0 else ""
    n = abs(whole)
    if n < 120:
        return f"{sign}{n}s"
    if n < 7200:
        return f"{sign}{n // 60}m{n % 60:02d}s"
    return f"{sign}{n // 3600}h{(n % 3600) // 60:02d}m"


def describe(cred: CredentialStatus, now: float) -> str:
    """One line for a terminal: verdict, expiry, next refresh, last success, last error."""
    parts = [f"{cred.name}: {verdict(cred, now)}"]
    if cred.expires_at is not None:
        remaining = cred.expires_at - now
        parts.append(
            f"expires in {human_duration(remaining)}"
            if remaining > 0
            else f"expired {human_duration(-remaining)} ago"
        )
        parts.append(f"token {cred.token_fingerprint}")
    else:
        parts.append("no token")
    if cred.next_refresh is not None:
        parts.append(f"next refresh in {human_duration(max(0.0, cred.next_refresh - now))}")
    if cred.last_success is not None:
        parts.append(f"last success {human_duration(now - cred.last_success)} ago")
    if cred.last_error:
        parts.append(f"last error ({cred.failures}x): {cred.last_error}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- --check (pure)

NAGIOS_OK, NAGIOS_WARNING, NAGIOS_CRITICAL, NAGIOS_UNKNOWN = 0, 1, 2, 3
_NAGIOS_LABEL = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def health_check(status: DaemonStatus, *, running: bool, now: float) -> tuple[int, str]:
    """A Nagios-style verdict and its one-line summary.

    CRITICAL: a credential has no valid token (readers are failing now). WARNING: a token is
    still valid but its refresh is failing, the daemon is not running, or a config edit was
    rejected (something will break if nobody acts). OK otherwise.
    """
    creds = list(status.credentials.values())
    expired = [c for c in creds if verdict(c, now) == EXPIRED]
    failing = [c for c in creds if verdict(c, now) == FAILING]
    if expired:
        code, detail = (
            NAGIOS_CRITICAL,
            "; ".join(
                f"{c.name}: no valid token" + (f" ({c.last_error})" if c.last_error else "")
                for c in expired[:3]
            ),
        )
    elif failing:
        code, detail = (
            NAGIOS_WARNING,
            "; ".join(
                f"{c.name}: refresh failing {c.failures}x ({c.last_error}), token valid "
                f"{human_duration((c.expires_at or now) - now)} more"
                for c in failing[:3]
            ),
        )
    elif not running:
        code, detail = NAGIOS_WARNING, f"tokend (pid {status.pid}) is not running"
    elif status.config_error:
        code, detail = NAGIOS_WARNING, f"config rejected: {status.config_error}"
    elif status.warnings:
        code, detail = NAGIOS_WARNING, "; ".join(status.warnings[:3])
    else:
        soonest = min((c.expires_at for c in creds if c.expires_at), default=None)
        detail = f"{len(creds)} credential(s) fresh" + (
            f", next expiry in {human_duration(soonest - now)}" if soonest else ""
        )
        code = NAGIOS_OK
    return code, f"TOKEND {_NAGIOS_LABEL[code]} - {detail}"
