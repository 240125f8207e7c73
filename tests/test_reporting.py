"""tokend/daemon/reporting.py: who hears about an attempt, and that one observer's failure
never silences the others."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import pytest

from tokend.config import CredentialConfig, HookConfig, parse
from tokend.core.health import CredentialStatus, DaemonStatus
from tokend.core.results import Attempt, Origin, Result
from tokend.core.tokens import Token
from tokend.daemon.reporting import EventLog, Hooks, Observer, Observers, StatusFile
from tokend.io.hooks import HookRunner
from tokend.io.status_file import read_status

TOKEN = Token("tok-abc", expires_at=2_000_000_000.0, obtained_at=1_999_996_400.0)


def cred(sinks: bool = True, hook: bool = True) -> CredentialConfig:
    text = (
        '[credentials.api]\ntoken_url = "https://idp.example/t"\nclient_id = "i"\nclient_secret_file = "/s"\n'
    )
    if sinks:
        text += '[[credentials.api.sink]]\npath = "/run/tokend/api.token"\n'
    if hook:
        text += '[credentials.api.on_rotate]\ncommand = ["true"]\n'
    return parse(text, Path("/etc/tokend/tokend.toml"), environ={}).credentials["api"]


class Broken(Observer):
    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        raise RuntimeError("a bug in one observer")


class Counting(Observer):
    def __init__(self) -> None:
        self.seen: list[Attempt] = []

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        self.seen.append(attempt)


def test_a_failing_observer_is_logged_and_the_others_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    counting = Counting()
    observers = Observers([Broken(), counting])
    attempt = Attempt("api", TOKEN, Result.SUCCESS, fetched=True)
    with caplog.at_level(logging.ERROR, logger="tokend.daemon"):
        observers.attempted(attempt, cred(), CredentialStatus("api"))
    assert counting.seen == [attempt]
    assert "Broken failed in attempted" in caplog.text


class RecordingRunner(HookRunner):
    def __init__(self) -> None:
        super().__init__(workers=1)
        self.submitted: list[tuple[str, frozenset[str]]] = []

    def submit(
        self, name: str, token: Token, hook: HookConfig, secret_variables: Collection[str] = ()
    ) -> None:
        self.submitted.append((name, frozenset(secret_variables)))


@pytest.mark.parametrize(
    ("sinks", "attempt", "runs"),
    [
        (True, Attempt("api", TOKEN, Result.SUCCESS, fetched=True, sinks_written=1), True),
        (True, Attempt("api", TOKEN, Result.SUCCESS, fetched=False, sinks_written=0), False),  # unchanged
        (True, Attempt("api", TOKEN, Result.RETRYABLE_ERROR, request_failed=True), False),
        (False, Attempt("api", TOKEN, Result.SUCCESS, fetched=True), True),  # no sinks: a new token
        (False, Attempt("api", None, Result.FATAL_ERROR, request_failed=True), False),
    ],
)
def test_hooks_run_when_the_sinks_changed_or_a_sinkless_credential_got_a_new_token(
    sinks: bool, attempt: Attempt, runs: bool
) -> None:
    runner = RecordingRunner()
    hooks = Hooks(runner)
    hooks.attempted(attempt, cred(sinks=sinks), CredentialStatus("api"))
    assert bool(runner.submitted) is runs
    runner.shutdown()


def test_event_log_writes_one_refresh_line_with_the_fingerprint_never_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempt = Attempt("api", TOKEN, Result.SUCCESS, fetched=True, duration=0.012, next_at=1_999_999_280.0)
    status = CredentialStatus("api", token_fingerprint=TOKEN.fingerprint)
    with caplog.at_level(logging.INFO, logger="tokend.daemon"):
        EventLog().attempted(attempt, cred(), status)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "refresh"]
    assert record.outcome == "success" and record.token == TOKEN.fingerprint  # type: ignore[attr-defined]
    assert "tok-abc" not in caplog.text


def test_a_token_taken_from_the_cache_is_not_logged_as_a_refresh(caplog: pytest.LogCaptureFixture) -> None:
    attempt = Attempt("api", TOKEN, Result.SUCCESS, origin=Origin.CACHE, next_at=1_999_999_280.0)
    status = CredentialStatus("api", token_fingerprint=TOKEN.fingerprint)
    with caplog.at_level(logging.INFO, logger="tokend.daemon"):
        EventLog().attempted(attempt, cred(), status)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "refresh"]
    message = record.getMessage()
    assert message == (
        f"api: using the cached token {TOKEN.fingerprint}, valid until 2033-05-18T03:33:20Z, "
        "next refresh 2033-05-18T03:21:20Z"
    )
    assert "refresh success" not in message
    assert record.outcome == "success" and record.origin == "cache"  # type: ignore[attr-defined]


def test_a_token_from_the_identity_provider_is_logged_as_a_refresh(caplog: pytest.LogCaptureFixture) -> None:
    attempt = Attempt("api", TOKEN, Result.SUCCESS, fetched=True, origin=Origin.IDP, duration=0.012)
    with caplog.at_level(logging.INFO, logger="tokend.daemon"):
        EventLog().attempted(attempt, cred(), CredentialStatus("api", token_fingerprint=TOKEN.fingerprint))
    assert "api: refresh success in 12ms (new token from the identity provider)" in caplog.text


def test_status_file_follows_the_state_dir_of_the_applied_config(tmp_path: Path) -> None:
    reporter = StatusFile(tmp_path / "old")
    new = parse(f'[tokend]\nstate_dir = "{tmp_path}/new"\n', tmp_path / "t.toml", environ={})
    reporter.configured(new)
    reporter.status(DaemonStatus(pid=1, updated_at=0.0, config="t"), "summary", ready=True)
    assert read_status(tmp_path / "new").pid == 1
    assert not (tmp_path / "old").exists()
