"""Prometheus metrics: per credential and daemon-wide, served over HTTP and/or written as a
node_exporter textfile.

Imported only when ``metrics_listen`` or ``metrics_textfile`` is set: prometheus_client
costs memory a daemon without metrics should not pay. Labels carry credential names and
results, never a token or a secret.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import make_wsgi_app, write_to_textfile

from tokend import __version__
from tokend.core.health import health_answer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse
    from wsgiref.types import WSGIApplication as WSGIApp

log = logging.getLogger("tokend.metrics")

RESULTS = ("success", "retryable_error", "fatal_error")
FLEET_EVENTS = ("leader_change", "fallback", "received", "failover")


Health = Callable[[], tuple[bool, dict[str, Any]]]
"""The token board's readiness (:func:`tokend.core.health.readiness`), asked per probe."""


def with_health(app: WSGIApp, health: Health) -> WSGIApp:
    """``app``, with ``/livez``, ``/readyz`` and ``/readyz/NAME`` answered first (GET/HEAD)."""

    def dispatch(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/livez" or path == "/readyz" or path.startswith("/readyz/"):
            status, body = health_answer(health(), path)
            start_response(
                f"{status} {HTTPStatus(status).phrase}",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]
        return app(environ, start_response)

    return dispatch


class Metrics:
    def __init__(self, textfile: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.textfile = textfile
        self.dirty = threading.Event()
        self.fleet_started = False  # fleet series appear only in fleet mode
        r = self.registry
        self.expiry = Gauge(
            "tokend_token_expiry_timestamp_seconds",
            "When the token in the sinks expires (unix time).",
            ["credential"],
            registry=r,
        )
        self.last_success = Gauge(
            "tokend_last_success_timestamp_seconds",
            "When the last refresh succeeded (unix time).",
            ["credential"],
            registry=r,
        )
        self.refreshes = Counter(
            "tokend_refreshes", "Refresh attempts by result.", ["credential", "result"], registry=r
        )
        self.duration = Histogram(
            "tokend_refresh_duration_seconds",
            "How long a refresh attempt took.",
            ["credential"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.failures = Gauge(
            "tokend_consecutive_failures",
            "Failed attempts in a row (0 when the last one succeeded).",
            ["credential"],
            registry=r,
        )
        self.reloads = Counter("tokend_config_reloads", "Config reloads by result.", ["result"], registry=r)
        self.last_reload = Gauge(
            "tokend_config_last_reload_success_timestamp_seconds",
            "When a config was last loaded and applied (unix time).",
            registry=r,
        )
        self.fleet_events = Counter(
            "tokend_fleet_events",
            "Fleet mode: leader changes, fallbacks to standalone (Redis unreachable), tokens received,"
            " fail-over episodes.",
            ["event"],
            registry=r,
        )
        self.fleet_up = Gauge(
            "tokend_fleet_redis_up", "Fleet mode: 1 while Redis answers, 0 while on our own.", registry=r
        )
        self.proxy_requests = Counter(
            "tokend_proxy_requests",
            "Requests through a credential's proxy, by the status class of the answer (2xx..5xx).",
            ["credential", "code"],
            registry=r,
        )
        self.proxy_upstream = Histogram(
            "tokend_proxy_upstream_seconds",
            "A proxied request's time to the upstream's answer head (the upstream's latency).",
            ["credential"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        Info("tokend_build", "tokend's version.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)  # both series exist from the start, at 0

    def serve(self, host: str, port: int, health: Health | None = None) -> None:
        """Serve /metrics (and, given ``health``, ``/livez`` and ``/readyz``: an orchestrator's
        probes for a daemon without [endpoint]) from a thread that sleeps between scrapes.

        prometheus_client's own start_http_server polls for shutdown twice a second, which
        alone cost 15 ms of CPU a minute on an idle daemon (the benchmark measured it).
        This server is never shut down, so its loop may wait an hour between looks.
        """

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        app = make_wsgi_app(self.registry)
        if health is not None:
            app = with_health(app, health)
        httpd = make_server(host, port, app, Server, handler_class=Quiet)
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 3600}, name="metrics", daemon=True
        ).start()
        log.info("metrics on http://%s:%d/metrics", host, port)

    def attempt(
        self,
        name: str,
        *,
        result: str,
        duration: float,
        failures: int,
        expires_at: float | None,
        success_at: float | None,
    ) -> None:
        self.refreshes.labels(name, result).inc()
        self.duration.labels(name).observe(duration)
        self.failures.labels(name).set(failures)
        if expires_at is not None:
            self.expiry.labels(name).set(expires_at)
        if success_at is not None:
            self.last_success.labels(name).set(success_at)
        self.dirty.set()

    def proxy_request(self, credential: str, status: int, upstream_seconds: float | None) -> None:
        """From the local servers' thread (prometheus_client is thread-safe); the textfile
        follows at the next status flush."""
        self.proxy_requests.labels(credential, f"{status // 100}xx").inc()
        if upstream_seconds is not None:
            self.proxy_upstream.labels(credential).observe(upstream_seconds)
        self.dirty.set()

    def credential_added(self, name: str) -> None:
        for result in RESULTS:
            self.refreshes.labels(name, result)
        self.failures.labels(name).set(0)

    def credential_removed(self, name: str) -> None:
        for metric in (self.expiry, self.last_success, self.failures, self.duration):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for result in RESULTS:
            with contextlib.suppress(KeyError):
                self.refreshes.remove(name, result)
        self.dirty.set()

    def reloaded(self, *, ok: bool, at: float) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        if ok:
            self.last_reload.set(at)
        self.dirty.set()

    def fleet_event(self, event: str) -> None:
        if event not in FLEET_EVENTS:
            return
        if not self.fleet_started:
            self.fleet_started = True
            for name in FLEET_EVENTS:
                self.fleet_events.labels(name)  # every series from the first, at 0
        self.fleet_events.labels(event).inc()
        self.dirty.set()

    def fleet_reachable(self, up: bool) -> None:
        if not self.fleet_started:
            self.fleet_started = True
            for name in FLEET_EVENTS:
                self.fleet_events.labels(name)
        self.fleet_up.set(1 if up else 0)
        self.dirty.set()

    def flush(self) -> None:
        """Write the textfile if anything changed (node_exporter reads it at any moment:
        prometheus_client writes a temp file and renames it)."""
        if self.textfile is None or not self.dirty.is_set():
            return
        self.dirty.clear()
        try:
            write_to_textfile(str(self.textfile), self.registry)
        except OSError as exc:
            log.warning("cannot write metrics textfile %s: %s", self.textfile, exc.strerror)
