"""Who hears about what the daemon does: one small protocol, many observers.

The daemon tells :class:`Observers` once per event (an attempt, a reload, readiness, a
status flush, a stop); each observer takes what it needs. The status file, systemd's
notify socket, Prometheus metrics, the event log, on_rotate hooks and the demo's printer
are all observers, so the daemon has no ``if metrics is not None``, and an observer that
fails is logged and never stops the others (nor the daemon).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.config import Config, CredentialConfig
from tokend.core.fleet import FleetEvent
from tokend.core.health import CredentialStatus, DaemonStatus
from tokend.core.policy import BACKOFF_CAP
from tokend.core.results import Attempt, Origin, Result
from tokend.core.timestamps import rfc3339
from tokend.io.hooks import HookRunner
from tokend.io.status_file import write_status
from tokend.io.systemd import Notifier

if TYPE_CHECKING:
    from tokend.io.metrics import Health, Metrics

log = logging.getLogger("tokend.daemon")


class Observer:
    """Every hook is optional: the defaults do nothing. ``attempted`` is called from a
    worker thread; everything else from the main loop."""

    def configured(self, config: Config) -> None:
        """At start and after every applied reload."""

    def credential_added(self, name: str) -> None: ...

    def credential_removed(self, name: str) -> None: ...

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None: ...

    def ready(self, summary: str) -> None:
        """Every credential has a token or has failed its first try."""

    def reloading(self) -> None: ...

    def reloaded(self, error: str | None, summary: str, *, was_ready: bool) -> None:
        """A reload was applied (``error`` None) or rejected."""

    def status(self, snapshot: DaemonStatus, summary: str, *, ready: bool) -> None:
        """The coalesced status flush: at most once a second, and at every milestone."""

    def stopping(self) -> None: ...

    def fleet_event(self, event: FleetEvent, name: str | None) -> None:
        """Fleet mode: a lease taken or lost, a fallback to standalone, a token received.
        From the fleet's listener thread or a worker."""


class Observers(Observer):
    """Tells every observer, each in its own try (certbot's renewal loop)."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def metrics(self) -> Metrics | None:
        """The Prometheus metrics, when the config asks for them (the proxies count there)."""
        return next((o.metrics for o in self.observers if isinstance(o, MetricsReporter)), None)

    def _each(self, event: str, call: Callable[[Observer], None]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                log.exception("%s failed in %s; carrying on", type(observer).__name__, event)

    def configured(self, config: Config) -> None:
        self._each("configured", lambda o: o.configured(config))

    def credential_added(self, name: str) -> None:
        self._each("credential_added", lambda o: o.credential_added(name))

    def credential_removed(self, name: str) -> None:
        self._each("credential_removed", lambda o: o.credential_removed(name))

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        self._each("attempted", lambda o: o.attempted(attempt, cred, status))

    def ready(self, summary: str) -> None:
        self._each("ready", lambda o: o.ready(summary))

    def reloading(self) -> None:
        self._each("reloading", lambda o: o.reloading())

    def reloaded(self, error: str | None, summary: str, *, was_ready: bool) -> None:
        self._each("reloaded", lambda o: o.reloaded(error, summary, was_ready=was_ready))

    def status(self, snapshot: DaemonStatus, summary: str, *, ready: bool) -> None:
        self._each("status", lambda o: o.status(snapshot, summary, ready=ready))

    def stopping(self) -> None:
        self._each("stopping", lambda o: o.stopping())

    def fleet_event(self, event: FleetEvent, name: str | None) -> None:
        self._each("fleet_event", lambda o: o.fleet_event(event, name))


ORIGIN_WORDS = {
    Origin.IDP: "new token from the identity provider",
    Origin.FLEET: "token from the fleet's leader",
    Origin.CACHE: "kept the current token",
}


class EventLog(Observer):
    """One ``refresh`` event line per attempt (and a loud line for an unfixable error)."""

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        if attempt.result is Result.FATAL_ERROR:
            log.error(
                "%s: a retry cannot fix %s; trying again every %ds and at once on reload",
                cred.name,
                attempt.error_code or "this",
                BACKOFF_CAP,
            )
        next_refresh = rfc3339(attempt.next_at) if attempt.next_at is not None else None
        extra = {
            "event": "refresh",
            "credential": cred.name,
            "outcome": str(attempt.result),
            "origin": attempt.origin if attempt.token is not None else None,
            "duration_ms": round(attempt.duration * 1000),
            "next_refresh": next_refresh,
            "token": status.token_fingerprint,
        }
        token = attempt.token
        if token is not None and attempt.result is Result.SUCCESS and attempt.origin is Origin.CACHE:
            # Nobody was asked: "refresh success in 0ms" read as a refresh that never happened.
            log.info(
                "%s: using the cached token %s, valid until %s, next refresh %s",
                cred.name,
                status.token_fingerprint or token.fingerprint,
                rfc3339(token.expires_at),
                next_refresh,
                extra=extra,
            )
            return
        # "success" alone read as "asked the IdP" even when the cached token was kept.
        source = f" ({ORIGIN_WORDS[attempt.origin]})" if token is not None else ""
        log.info(
            "%s: refresh %s in %dms%s, token %s, next refresh %s",
            cred.name,
            attempt.result,
            attempt.duration * 1000,
            source,
            status.token_fingerprint or "none",
            next_refresh,
            extra=extra,
        )

    def ready(self, summary: str) -> None:
        log.info("ready: %s", summary)


class StatusFile(Observer):
    """``status.json`` in the state directory, for ``tokend status`` and monitoring."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def configured(self, config: Config) -> None:
        self.state_dir = config.state_dir

    def status(self, snapshot: DaemonStatus, summary: str, *, ready: bool) -> None:
        try:
            write_status(self.state_dir, snapshot)
        except OSError as exc:
            log.warning("cannot write status in %s: %s", self.state_dir, exc.strerror)


class SystemdNotify(Observer):
    """sd_notify: READY=1 once started, RELOADING=1/READY=1 around reloads, STATUS=
    lines, STOPPING=1. (WATCHDOG=1 is the main loop's, on its own schedule.)"""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def ready(self, summary: str) -> None:
        self.notifier.notify("READY=1", f"STATUS={summary}")

    def reloading(self) -> None:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self, error: str | None, summary: str, *, was_ready: bool) -> None:
        # READY=1 ends a reload; during the start it would claim a start not yet finished.
        ready = ("READY=1",) if was_ready else ()
        self.notifier.notify(*ready, f"STATUS={summary}")

    def status(self, snapshot: DaemonStatus, summary: str, *, ready: bool) -> None:
        if ready:
            self.notifier.notify(f"STATUS={summary}")

    def stopping(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")


class MetricsReporter(Observer):
    """Prometheus: counters and gauges per credential, and reloads; flushed with the status."""

    def __init__(
        self, metrics: Metrics, listen: tuple[str, int] | None = None, health: Health | None = None
    ) -> None:
        self.metrics = metrics
        if listen is not None:
            host, port = listen
            try:
                metrics.serve(host, port, health)
            except OSError as exc:  # tokens matter more than their metrics: carry on
                log.error("cannot serve metrics on %s:%d: %s", host, port, exc.strerror)

    def credential_added(self, name: str) -> None:
        self.metrics.credential_added(name)

    def credential_removed(self, name: str) -> None:
        self.metrics.credential_removed(name)

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        self.metrics.attempt(
            cred.name,
            result=str(attempt.result),
            duration=attempt.duration,
            failures=attempt.failures,
            expires_at=status.expires_at,
            success_at=status.last_success,
        )

    def reloaded(self, error: str | None, summary: str, *, was_ready: bool) -> None:
        self.metrics.reloaded(ok=error is None, at=time.time())
        self.metrics.flush()  # rare and watched for: not left to the next status flush

    def status(self, snapshot: DaemonStatus, summary: str, *, ready: bool) -> None:
        if snapshot.fleet is not None:
            self.metrics.fleet_reachable(snapshot.fleet.reachable)
        self.metrics.flush()

    def fleet_event(self, event: FleetEvent, name: str | None) -> None:
        self.metrics.fleet_event(str(event))


class Hooks(Observer):
    """on_rotate: after the sinks changed (or a new token came, for a credential without
    sinks), on the hooks' own pool, with no secret variable in the child's environment."""

    def __init__(self, runner: HookRunner | None = None) -> None:
        self.runner = runner or HookRunner()
        self.secret_variables: frozenset[str] = frozenset()

    def configured(self, config: Config) -> None:
        self.secret_variables = config.secret_variables()

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        token = attempt.token
        if token is None or cred.on_rotate is None:
            return
        if attempt.sinks_written or (attempt.fetched and not cred.sinks):
            self.runner.submit(cred.name, token, cred.on_rotate, self.secret_variables)

    def stopping(self) -> None:
        self.runner.shutdown()


def standard_observers(
    config: Config,
    notifier: Notifier,
    environ: Mapping[str, str] | None = None,
    health: Health | None = None,
) -> list[Observer]:
    """The daemon's own: the event log, the status file, systemd, hooks, and metrics when
    the config asks for them (otherwise prometheus_client is never imported), with the
    health probes on ``metrics_listen`` when ``health`` is given."""
    hooks = Hooks(HookRunner(environ=environ))
    observers: list[Observer] = [EventLog(), StatusFile(config.state_dir), SystemdNotify(notifier), hooks]
    if config.metrics_listen is not None or config.metrics_textfile is not None:
        from tokend.io.metrics import Metrics

        observers.append(MetricsReporter(Metrics(config.metrics_textfile), config.metrics_listen, health))
    return observers
