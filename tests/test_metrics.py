"""Metrics, health checks and event logs, as a monitoring system sees a running daemon."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tokend.config import ConfigError, parse

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint, answer
from .support.processes import Start, run_tokend, wait_for

SECRET = "s3cret-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and sorted labels, as Prometheus would parse them."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def metrics_config(idp: TokenEndpoint, tmp: Path, port: int, *blocks: str) -> Path:
    head = (
        f'[tokend]\nstate_dir = "{tmp}/state"\nmetrics_listen = "127.0.0.1:{port}"\n'
        f'metrics_textfile = "{tmp}/tokend.prom"\n\n'
    )
    path = tmp / "tokend.toml"
    path.write_text(head + "\n".join(blocks))
    return path


def test_the_endpoint_and_the_textfile_tell_the_truth(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    port = free_port()
    idp.then(200, {"access_token": "tok-good", "expires_in": 3600})
    idp.then(401, {"error": "invalid_client"})
    config = metrics_config(
        idp,
        tmp_path,
        port,
        credential_toml(idp.url, tmp_path),
        credential_toml(idp.url, tmp_path, "bad", extra='scope = "x"'),
    )
    daemon = daemons(config, tmp_path)
    wait_for(
        lambda: len(idp.seen) == 2 and (tmp_path / "tokend.prom").exists(),
        10,
        "both first attempts and the textfile",
    )
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = samples(body)
    good = "api" if value(found, "tokend_refreshes_total", credential="api", result="success") == 1 else "bad"
    bad = "bad" if good == "api" else "api"
    assert value(found, "tokend_refreshes_total", credential=good, result="success") == 1
    assert value(found, "tokend_refreshes_total", credential=bad, result="fatal_error") == 1
    assert value(found, "tokend_consecutive_failures", credential=bad) == 1
    assert value(found, "tokend_consecutive_failures", credential=good) == 0
    expiry = value(found, "tokend_token_expiry_timestamp_seconds", credential=good)
    assert abs(expiry - (idp.seen[0].at + 3600)) < 5
    assert value(found, "tokend_refresh_duration_seconds_count", credential=good) == 1
    assert (
        value(
            found,
            "tokend_build_info",
            version="0.1.0",
            python=next(k for k in found if k[0] == "tokend_build_info")[1][0][1],
        )
        == 1
    )
    for secretish in (SECRET, "tok-good"):
        assert secretish not in body

    # A reload, good then bad, counted in the textfile node_exporter reads.
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log.count("reload applied") == 1, 10, "the reload")
    config.write_text(config.read_text() + "\n[credentials.api.oops]\n")
    wait_for(lambda: "reload rejected" in daemon.log, 10, "the rejection")

    def reloads_in_textfile() -> bool:
        text = (tmp_path / "tokend.prom").read_text()
        f = samples(text)
        return (
            value(f, "tokend_config_reloads_total", result="success") == 1
            and value(f, "tokend_config_reloads_total", result="failure") >= 1
        )

    wait_for(reloads_in_textfile, 10, "both reloads in the textfile")
    found = samples((tmp_path / "tokend.prom").read_text())
    assert (
        value(
            found,
            "tokend_config_last_reload_success_timestamp_seconds",
        )
        > time.time() - 60
    )


def test_metrics_refuse_a_public_address_unless_asked() -> None:
    base = '[credentials.a]\ntoken_url = "https://i/t"\nclient_id = "i"\nclient_secret = "s"\n'
    with pytest.raises(ConfigError, match=r"tokend.metrics_listen: 0.0.0.0 is not a loopback"):
        parse('[tokend]\nmetrics_listen = "0.0.0.0:9464"\n' + base, Path("/t.toml"), environ={})
    config = parse(
        '[tokend]\nmetrics_listen = "0.0.0.0:9464"\nmetrics_allow_remote = true\n' + base,
        Path("/t.toml"),
        environ={},
    )
    assert config.metrics_listen == ("0.0.0.0", 9464)


def test_no_metrics_configured_means_no_prometheus_import(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[credentials.a]\ntoken_url = "https://i/t"\nclient_id = "i"\nclient_secret = "s"\n'
    )
    probe = (
        "import sys; from tokend.config import load; from tokend.daemon.loop import Daemon;"
        f"Daemon(load({str(config)!r}), environ={{}});"
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def check(config: Path, tmp: Path) -> tuple[int, str]:
    result = run_tokend("status", "--check", "-c", config, tmp=tmp)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.returncode, lines[0]


def test_status_check_walks_ok_warning_critical_and_unknown(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    idp.expires_in = 3
    config = write_config(
        tmp_path, credential_toml(idp.url, tmp_path, extra='refresh_at = 0.5\nmin_ttl_margin = "0s"')
    )
    assert check(config, tmp_path)[0] == 3  # no daemon has run: UNKNOWN
    daemon = daemons(config, tmp_path)
    wait_for(lambda: check(config, tmp_path)[0] == 0, 10, "OK")
    assert check(config, tmp_path)[1].startswith("TOKEND OK - 1 credential(s) fresh")

    idp.fault = answer(503)  # refreshes fail while the token is still valid
    wait_for(lambda: check(config, tmp_path)[0] == 1, 10, "WARNING")
    code, line = check(config, tmp_path)
    assert line.startswith("TOKEND WARNING - api: refresh failing") and "token valid" in line

    wait_for(lambda: check(config, tmp_path)[0] == 2, 10, "CRITICAL once the token expired")
    assert check(config, tmp_path)[1].startswith("TOKEND CRITICAL - api: no valid token")

    idp.fault = None
    wait_for(lambda: check(config, tmp_path)[0] == 0, 15, "OK again after recovery")
    assert daemon.stop() == 0
    code, line = check(config, tmp_path)
    assert (code, line.startswith("TOKEND WARNING - tokend")) == (1, True)
    assert "not running" in line


def test_json_log_lines_have_stable_keys(idp: TokenEndpoint, tmp_path: Path, daemons: Start) -> None:
    idp.then(503, None)
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    config.write_text(config.read_text().replace("[tokend]\n", '[tokend]\nlog_format = "json"\n'))
    daemon = daemons(config, tmp_path)
    wait_for(lambda: '"outcome": "success"' in daemon.log, 15, "a successful refresh event")
    lines = [json.loads(line) for line in daemon.log.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    events = [line for line in lines if line.get("event") == "refresh"]
    failure, success = events[0], events[-1]
    assert failure["outcome"] == "retryable_error" and failure["credential"] == "api"
    assert set(success) == {
        "ts",
        "level",
        "logger",
        "msg",
        "event",
        "credential",
        "outcome",
        "duration_ms",
        "next_refresh",
        "token",
    }
    assert success["token"].startswith("sha256:") and success["next_refresh"].endswith("Z")
    assert "tok-1" not in daemon.log and SECRET not in daemon.log


def test_fleet_events_are_counted_from_the_first_event() -> None:
    from tokend.io.metrics import Metrics

    metrics = Metrics()
    families = {f.name for f in text_string_to_metric_families(exposition(metrics))}
    assert "tokend_fleet_events" not in families or not fleet_samples(metrics, "tokend_fleet_events_total")
    metrics.fleet_event("received")
    metrics.fleet_event("received")
    metrics.fleet_event("leader_change")
    metrics.fleet_reachable(False)
    counted = fleet_samples(metrics, "tokend_fleet_events_total")
    assert counted == {"received": 2.0, "leader_change": 1.0, "fallback": 0.0, "failover": 0.0}
    assert fleet_samples(metrics, "tokend_fleet_redis_up") == {"": 0.0}


def exposition(metrics: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()  # type: ignore[attr-defined]


def fleet_samples(metrics: object, name: str) -> dict[str, float]:
    return {
        s.labels.get("event", ""): s.value
        for family in text_string_to_metric_families(exposition(metrics))
        for s in family.samples
        if s.name == name
    }


def test_metrics_listen_answers_the_health_probes_and_ready_recovers_after_an_outage(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start
) -> None:
    """An orchestrator's liveness and readiness probes without [endpoint] (nor aiohttp):
    ``/livez``, ``/readyz`` and ``/readyz/NAME`` on ``metrics_listen``, beside /metrics."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp.fault = answer(503, "down")
    config = metrics_config(idp, tmp_path, port, credential_toml(idp.url, tmp_path, "api"))
    daemons(config, tmp_path)

    def status(path: str) -> int | None:
        try:
            return requests.get(base + path, timeout=5).status_code
        except requests.ConnectionError:
            return None

    def state() -> str | None:
        try:
            return str(requests.get(f"{base}/readyz/api", timeout=5).json().get("state"))
        except requests.ConnectionError:
            return None

    wait_for(lambda: state() == "expired", 15, "the first attempt failed while the IdP is down")
    assert status("/readyz") == 503 and status("/livez") == 200
    named = requests.get(f"{base}/readyz/api", timeout=5)
    assert named.status_code == 503 and "503" in named.json()["reason"]
    assert named.headers["Content-Type"] == "application/json"
    idp.fault = None
    wait_for(lambda: status("/readyz") == 200, 20, "ready again once the IdP answers")
    body = requests.get(f"{base}/readyz", timeout=5).json()
    assert body["status"] == "ready" and body["credentials"]["api"]["state"] == "ok"
    assert SECRET not in json.dumps(body) and "tok-" not in json.dumps(body)
    assert requests.get(f"{base}/readyz/nosuch", timeout=5).status_code == 404
    assert "tokend_refreshes_total" in requests.get(f"{base}/metrics", timeout=5).text
    probe = (
        "import sys; from tokend.config import load; from tokend.daemon.loop import Daemon;"
        f"Daemon(load({str(config)!r}), environ={{}});"
        "print('aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
