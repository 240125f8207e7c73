"""What the daemon tells the outside world about each credential, and how healthy that is.

The records here are what ``status.json`` holds (:mod:`tokend.io.status_file` writes and
reads it); the verdict, the one-line description and the Nagios check are pure functions
of a record and the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tokend.core.exit_codes import Nagios
from tokend.core.results import Verdict


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
    role: str | None = None  # fleet mode: leader, follower or standalone; None without it
    dpop_key: str | None = None  # a DPoP credential: its key's RFC 7638 thumbprint (public)
    issued_token_type: str | None = None  # a token exchange's answer: what it issued

    def updated(self, **changes: Any) -> CredentialStatus:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class FleetWait:
    """A credential without a token, waiting for the fleet's leader's (wall times)."""

    what: str  # what it waits for ("for" in status.json)
    since: float
    until: float  # then it asks the identity provider itself

    def to_dict(self) -> dict[str, Any]:
        return {"for": self.what, "since": self.since, "until": self.until}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FleetWait:
        return cls(str(data["for"]), float(data["since"]), float(data["until"]))


@dataclass(frozen=True, slots=True)
class FleetHealth:
    """Fleet mode's health, as status.json's ``fleet`` holds it."""

    redis: str  # its URL (never a password in it)
    reachable: bool
    since: float | None = None  # when it became reachable or unreachable (wall time)
    last_error: str | None = None
    lease: float = 0.0
    leases_held: int = 0
    leader_changes: int = 0
    fallbacks: int = 0
    tokens_received: int = 0
    waiting: Mapping[str, FleetWait] = field(default_factory=dict)  # credential name -> its wait

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["waiting"] = {name: wait.to_dict() for name, wait in self.waiting.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FleetHealth:
        """What a status file says (a missing key takes its default; unknown keys are ignored)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"fleet: not an object but {type(data).__name__}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        waiting = {str(name): FleetWait.from_dict(wait) for name, wait in known.pop("waiting", {}).items()}
        return cls(**{"redis": "", "reachable": False, **known, "waiting": waiting})


@dataclass(frozen=True)
class DaemonStatus:
    pid: int
    updated_at: float
    config: str
    config_error: str | None = None
    credentials: dict[str, CredentialStatus] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # not failures, but worth a look (an empty config, say)
    fleet: FleetHealth | None = None  # fleet mode's health: Redis reachable, counts

    def to_json(self) -> bytes:
        data = asdict(self)
        data["credentials"] = {name: asdict(c) for name, c in self.credentials.items()}
        data["fleet"] = None if self.fleet is None else self.fleet.to_dict()
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> DaemonStatus:
        data = json.loads(raw)
        creds = {name: CredentialStatus(**value) for name, value in data.pop("credentials").items()}
        warnings = tuple(str(w) for w in data.pop("warnings", ()))
        fleet = data.pop("fleet", None)
        health = None if fleet is None else FleetHealth.from_dict(fleet)
        return cls(credentials=creds, warnings=warnings, fleet=health, **data)


# --------------------------------------------------------------------------- health (pure)


def verdict(cred: CredentialStatus, now: float) -> Verdict:
    """``expired`` (no valid token: readers are broken), ``failing`` (still a valid token,
    but the last attempt failed) or ``ok``."""
    if cred.expires_at is None or cred.expires_at <= now:
        return Verdict.EXPIRED
    if cred.failures > 0:
        return Verdict.FAILING
    return Verdict.OK


def summary(credentials: dict[str, CredentialStatus], now: float) -> str:
    """One line for systemd's STATUS=: how many are ok, failing, expired, and which."""
    by_name = {name: verdict(status, now) for name, status in credentials.items()}
    verdicts = list(by_name.values())
    failing = sorted(name for name, v in by_name.items() if v != Verdict.OK)
    text = (
        f"{len(verdicts)} credential(s): {verdicts.count(Verdict.OK)} ok, "
        f"{verdicts.count(Verdict.FAILING)} failing, "
        f"{verdicts.count(Verdict.EXPIRED)} without a valid token"
    )
    return text + (f" ({', '.join(failing[:5])})" if failing else "")


def human_duration(seconds: float) -> str:
    whole = round(seconds)
    sign = "-" if whole < 0 else ""
    n = abs(whole)
    if n < 120:
        return f"{sign}{n}s"
    if n < 7200:
        return f"{sign}{n // 60}m{n % 60:02d}s"
    return f"{sign}{n // 3600}h{(n % 3600) // 60:02d}m"


def describe(cred: CredentialStatus, now: float, *, running: bool = True) -> str:
    """One line for a terminal: verdict, expiry, next refresh (only while the daemon runs:
    a stopped one refreshes nothing), last success, last error."""
    role = f" ({cred.role})" if cred.role and running else ""  # a stopped daemon has no role
    parts = [f"{cred.name}: {verdict(cred, now)}{role}"]
    if cred.expires_at is not None:
        remaining = cred.expires_at - now
        parts.append(
            f"expires in {human_duration(remaining)}"
            if remaining > 0
            else f"expired {human_duration(-remaining)} ago"
        )
        parts.append(f"token {cred.token_fingerprint}")
        if cred.dpop_key:
            parts.append(f"bound to DPoP key {cred.dpop_key}")
        if cred.issued_token_type:
            parts.append(f"issued as {cred.issued_token_type}")
    else:
        parts.append("no token")
    if cred.next_refresh is not None and running:
        parts.append(f"next refresh in {human_duration(max(0.0, cred.next_refresh - now))}")
    if cred.last_success is not None:
        parts.append(f"last success {human_duration(now - cred.last_success)} ago")
    if cred.last_error:
        parts.append(f"last error ({cred.failures}x): {cred.last_error}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- --check (pure)


def health_check(status: DaemonStatus, *, running: bool, now: float) -> tuple[Nagios, str]:
    """A Nagios-style verdict and its one-line summary.

    CRITICAL: a credential has no valid token (readers are failing now). WARNING: a token is
    still valid but its refresh is failing, the daemon is not running, or a config edit was
    rejected (something will break if nobody acts). OK otherwise.
    """
    creds = list(status.credentials.values())
    expired = [c for c in creds if verdict(c, now) == Verdict.EXPIRED]
    failing = [c for c in creds if verdict(c, now) == Verdict.FAILING]
    if expired:
        code, detail = (
            Nagios.CRITICAL,
            "; ".join(
                f"{c.name}: no valid token" + (f" ({c.last_error})" if c.last_error else "")
                for c in expired[:3]
            ),
        )
    elif failing:
        code, detail = (
            Nagios.WARNING,
            "; ".join(
                f"{c.name}: refresh failing {c.failures}x ({c.last_error}), token valid "
                f"{human_duration((c.expires_at or now) - now)} more"
                for c in failing[:3]
            ),
        )
    elif not running:
        code, detail = Nagios.WARNING, f"tokend (pid {status.pid}) is not running"
    elif status.config_error:
        code, detail = Nagios.WARNING, f"config rejected: {status.config_error}"
    elif status.warnings:
        code, detail = Nagios.WARNING, "; ".join(status.warnings[:3])
    else:
        soonest = min((c.expires_at for c in creds if c.expires_at), default=None)
        detail = f"{len(creds)} credential(s) fresh" + (
            f", next expiry in {human_duration(soonest - now)}" if soonest else ""
        )
        code = Nagios.OK
    return code, f"TOKEND {code.name} - {detail}"


# --------------------------------------------------------------------------- /readyz (pure)


def readiness(credentials: Mapping[str, CredentialStatus | None], now: float) -> tuple[bool, dict[str, Any]]:
    """``/readyz``: ready while every credential has a valid token (a failing refresh with a
    valid token is still ready: readers work); each credential's state and reason. A
    credential not tried yet is ``starting``. No token and no fingerprint in it."""
    states: dict[str, Any] = {}
    for name, status in sorted(credentials.items()):
        if status is None:
            states[name] = {"state": "starting", "reason": "no attempt yet"}
            continue
        state = verdict(status, now)
        if state == Verdict.OK:
            reason = "token valid"
        elif state == Verdict.FAILING:
            reason = f"refresh failing {status.failures}x: {status.last_error}"
        else:
            reason = "no valid token" + (f": {status.last_error}" if status.last_error else "")
        entry: dict[str, Any] = {"state": str(state), "reason": reason}
        if status.expires_at is not None:
            entry["expires_in"] = int(status.expires_at - now)
        states[name] = entry
    ready = all(entry["state"] in ("ok", "failing") for entry in states.values())
    return ready, {"status": "ready" if ready else "not ready", "credentials": states}


HEALTH_PATHS = ("/livez", "/readyz", "/readyz/{name}")


def visible_readiness(
    health: tuple[bool, dict[str, Any]], shown: Callable[[str], bool]
) -> tuple[bool, dict[str, Any]]:
    """:func:`readiness` over the credentials ``shown`` lets a caller see: on a unix socket
    a caller learns the names, states and errors of only the credentials it may read (a
    probe run as root or as tokend's user sees them all), and is ready when they are."""
    _, body = health
    states = {name: entry for name, entry in body["credentials"].items() if shown(name)}
    ready = all(entry["state"] in ("ok", "failing") for entry in states.values())
    return ready, {"status": "ready" if ready else "not ready", "credentials": states}


def _error(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode("utf-8")


def health_answer(health: tuple[bool, dict[str, Any]], path: str) -> tuple[int, bytes]:
    """``/livez``, ``/readyz`` or ``/readyz/NAME`` given :func:`readiness`'s answer: (status,
    JSON body); 404 for another path. Plain bytes, so the endpoint (aiohttp) and the metrics
    listener (WSGI, no aiohttp) serve the same answers."""
    if path == "/livez":
        return 200, b'{"status":"alive"}'
    ready, body = health
    if path == "/readyz":
        return (200 if ready else 503), json.dumps(body).encode("utf-8")
    if path.startswith("/readyz/"):
        name = path.removeprefix("/readyz/")
        entry = body["credentials"].get(name)
        if entry is None:
            return 404, _error("not_found", "no such credential")
        ok = entry["state"] in ("ok", "failing")
        return (200 if ok else 503), json.dumps({"name": name, **entry}).encode("utf-8")
    return 404, _error("not_found", "no such path")
