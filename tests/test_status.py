"""``tokend status`` finds the daemon's report where the shipped unit has it written: an
operator's shell (or sudo) has no $STATE_DIRECTORY, and the per-user default
(~/.local/state/tokend) is where no daemon under systemd writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tokend.cli import status as status_command
from tokend.cli.status import candidates, cmd_status
from tokend.config import default_state_dir

CONFIG = """\
[credentials.api]
token_url = "https://idp.example/token"
client_id = "app"
client_secret_file = "{secret}"
scope = "read"
"""


def write_status(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    record = {"pid": os.getpid(), "config": "/etc/tokend/tokend.toml", "updated_at": 0, "credentials": {}}
    (state_dir / "status.json").write_text(json.dumps(record))


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An operator's shell: a home of their own, no STATE_DIRECTORY, the unit's directory
    in tmp_path; returns the config file."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(status_command, "SYSTEM_STATE_DIR", tmp_path / "var-lib-tokend")
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)
    config = tmp_path / "tokend.toml"
    config.write_text(CONFIG.format(secret=tmp_path / "secret"))
    config.chmod(0o600)
    return config


def test_without_state_directory_status_finds_the_units_directory(
    operator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path / "var-lib-tokend")
    assert cmd_status(operator, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["running"] is True


def test_the_per_user_directory_comes_first(
    operator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(tmp_path / "home/.local/state/tokend")
    (tmp_path / "var-lib-tokend").mkdir()
    (tmp_path / "var-lib-tokend/status.json").write_text("not json")  # would fail if read
    assert cmd_status(operator, as_json=True) == 0


def test_nothing_anywhere_names_each_place_and_how_to_point_elsewhere(
    operator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_status(operator, as_json=False) == 1
    said = capsys.readouterr().err
    assert said.count("\n") == 1, said
    assert f"no status in {tmp_path}/home/.local/state/tokend or {tmp_path}/var-lib-tokend" in said
    assert "state_dir" in said and "$STATE_DIRECTORY" in said


def test_a_configured_or_systemd_given_directory_is_the_only_place(tmp_path: Path) -> None:
    system = status_command.SYSTEM_STATE_DIR
    bare = {"HOME": str(tmp_path)}
    assert candidates(default_state_dir(bare), bare) == [default_state_dir(bare), system]
    assert candidates(tmp_path / "mine", bare) == [tmp_path / "mine"]
    unit = {"STATE_DIRECTORY": str(tmp_path / "unit")}
    assert candidates(default_state_dir(unit), unit) == [tmp_path / "unit"]
