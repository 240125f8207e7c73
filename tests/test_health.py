"""tokend/core/health.py: the status record's JSON form and the Nagios-style health verdict
(and tokend/io/status_file.py reading a record an older version wrote)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tokend.core.exit_codes import Nagios
from tokend.core.health import CredentialStatus, DaemonStatus, FleetHealth, FleetWait, describe, health_check
from tokend.io.status_file import read_status, status_path

NOW = 1_900_000_000.0
EMPTY = "/etc/tokend/tokend.toml: no credentials configured; is this the right file?"


def fresh(name: str = "api") -> CredentialStatus:
    return CredentialStatus(
        name,
        token_fingerprint="sha256:0123456789",
        expires_at=NOW + 3600,
        obtained_at=NOW - 60,
        next_refresh=NOW + 2800,
        last_success=NOW - 60,
        last_attempt=NOW - 60,
    )


def daemon_status(*creds: CredentialStatus, warnings: tuple[str, ...] = ()) -> DaemonStatus:
    return DaemonStatus(
        pid=4242,
        updated_at=NOW,
        config="/etc/tokend/tokend.toml",
        credentials={c.name: c for c in creds},
        warnings=warnings,
    )


def test_health_check_is_warning_when_the_status_carries_a_warning() -> None:
    code, line = health_check(daemon_status(warnings=(EMPTY,)), running=True, now=NOW)
    assert code == Nagios.WARNING
    assert line == f"TOKEND WARNING - {EMPTY}"


def test_health_check_warns_even_when_every_credential_is_fresh() -> None:
    code, line = health_check(daemon_status(fresh(), warnings=("something odd",)), running=True, now=NOW)
    assert (code, line) == (Nagios.WARNING, "TOKEND WARNING - something odd")


def test_health_check_puts_an_expired_token_before_a_warning() -> None:
    expired = CredentialStatus("api", expires_at=NOW - 1, failures=2, last_error="invalid_client")
    code, line = health_check(daemon_status(expired, warnings=("something odd",)), running=True, now=NOW)
    assert code == Nagios.CRITICAL and "api: no valid token" in line and "something odd" not in line


def test_health_check_is_ok_without_warnings() -> None:
    code, line = health_check(daemon_status(fresh(), warnings=()), running=True, now=NOW)
    assert code == Nagios.OK and line.startswith("TOKEND OK - 1 credential(s) fresh")


def test_warnings_survive_the_round_trip_through_json() -> None:
    status = daemon_status(fresh(), warnings=(EMPTY, "second"))
    again = DaemonStatus.from_json(status.to_json())
    assert again == status and again.warnings == (EMPTY, "second")


def previous_version_record() -> dict[str, object]:
    """A status file as the version before warnings wrote it: no "warnings" key at all."""
    return {
        "pid": 4242,
        "updated_at": NOW,
        "config": "/etc/tokend/tokend.toml",
        "config_error": None,
        "credentials": {
            "api": {
                "name": "api",
                "token_fingerprint": "sha256:0123456789",
                "expires_at": NOW + 3600,
                "obtained_at": NOW - 60,
                "next_refresh": NOW + 2800,
                "last_success": NOW - 60,
                "last_attempt": NOW - 60,
                "last_error": None,
                "last_error_retryable": None,
                "failures": 0,
            }
        },
    }


def test_from_json_reads_a_status_file_written_without_warnings() -> None:
    status = DaemonStatus.from_json(json.dumps(previous_version_record()).encode())
    assert status.warnings == ()
    assert status.credentials["api"] == fresh()
    assert health_check(status, running=True, now=NOW)[0] == Nagios.OK


def test_read_status_reads_a_real_file_from_the_previous_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    status_path(state).write_text(json.dumps(previous_version_record()))
    os.chmod(status_path(state), 0o644)
    status = read_status(state)
    assert status.warnings == () and status.pid == 4242 and list(status.credentials) == ["api"]


def test_a_stopped_daemon_promises_no_next_refresh() -> None:
    status = fresh().updated(next_refresh=NOW + 4)
    assert "next refresh in 4s" in describe(status, NOW)
    assert "next refresh" not in describe(status, NOW, running=False)


def test_fleet_mode_adds_a_role_and_the_fleets_health_and_old_files_still_read(tmp_path: Path) -> None:
    from dataclasses import replace

    status = DaemonStatus(
        pid=1,
        updated_at=NOW,
        config="/etc/tokend/tokend.toml",
        credentials={"api": replace(fresh(), role="follower")},
        fleet=FleetHealth(
            "redis://r:6379/0", True, 1.5, tokens_received=3, waiting={"api": FleetWait("a token", 1.0, 2.0)}
        ),
    )
    again = DaemonStatus.from_json(status.to_json())
    assert again.credentials["api"].role == "follower" and again.fleet == status.fleet
    assert describe(again.credentials["api"], NOW).startswith("api: ok (follower), expires in")
    assert describe(fresh(), NOW).startswith("api: ok, expires in")  # no fleet: as before
    older = json.loads(status.to_json())
    del older["fleet"], older["credentials"]["api"]["role"]
    old = DaemonStatus.from_json(json.dumps(older).encode())
    assert old.fleet is None and old.credentials["api"].role is None


def test_the_fleets_health_keeps_its_json_keys_and_their_order() -> None:
    wait = FleetWait("the fleet's leader's token", 1.0, 2.0)
    health = FleetHealth("redis://r:6379/0", False, 5.0, "down", 10.0, 1, 2, 3, 4, {"api": wait})
    status = DaemonStatus(pid=1, updated_at=NOW, config="/etc/tokend/tokend.toml", fleet=health)
    fleet = json.loads(status.to_json())["fleet"]
    assert list(fleet.items()) == [
        ("redis", "redis://r:6379/0"),
        ("reachable", False),
        ("since", 5.0),
        ("last_error", "down"),
        ("lease", 10.0),
        ("leases_held", 1),
        ("leader_changes", 2),
        ("fallbacks", 3),
        ("tokens_received", 4),
        ("waiting", {"api": {"for": "the fleet's leader's token", "since": 1.0, "until": 2.0}}),
    ]
    assert DaemonStatus.from_json(status.to_json()).fleet == health


def test_a_status_file_nested_too_deep_is_unrecognised_not_a_crash(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    status_path(state).write_bytes(b"[" * 200_000)
    with pytest.raises(ValueError, match="nested too deep"):
        read_status(state)


def test_a_stopped_daemon_claims_no_fleet_role() -> None:
    import dataclasses

    leader = dataclasses.replace(fresh(), role="leader")
    assert "(leader)" in describe(leader, NOW, running=True)
    assert "leader" not in describe(leader, NOW, running=False)
