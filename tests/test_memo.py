"""tokend/cli/memo.py: the fast path's memo, both its ends. ``remember`` vouches for
exactly the bytes the validated path accepted, in the environment it accepted them in, and
never fails a command; ``vouched`` is true for those bytes and nothing else. (That the fast
path then serves the token, and any edit sends ``token`` back to the validated path, is
tests/test_fastpath.py's.)"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from tokend.cli.memo import (
    MAX_MEMO_BYTES,
    MEMO_DIR,
    MEMO_ENVIRONMENT,
    config_digest,
    memo_path,
    read_config,
    remember,
    vouched,
)
from tokend.cli.toml_subset import GiveUp
from tokend.core.limits import MAX_CONFIG_BYTES

ENVIRON = {"HOME": "/home/someone", "PATH": "/usr/bin"}


class Config:
    """A config file naming its state directory. ``remember`` reads it as the fast path
    does (it never loads it: that the load accepted these bytes is the caller's word)."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.state = tmp / "state"
        self.path = tmp / "tokend.toml"
        self.text = f'[tokend]\nstate_dir = "{self.state}"\n\n[credentials.api]\ntoken_url = "https://x/t"\n'
        self.path.write_text(self.text + extra)
        self.raw = self.path.read_bytes()

    @property
    def memo(self) -> Path:
        return Path(memo_path(str(self.state), str(self.path)))

    def remember(self, before: bytes | None = None, environ: dict[str, str] = ENVIRON) -> None:
        remember(str(self.path), self.raw if before is None else before, self.state, environ)

    def vouched(self, raw: bytes | None = None, environ: dict[str, str] = ENVIRON) -> bool:
        return vouched(str(self.state), str(self.path), self.raw if raw is None else raw, environ)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(tmp_path)


# --------------------------------------------------------------------------- remember


def test_a_remembered_config_is_vouched_for_in_a_private_file(config: Config) -> None:
    config.remember()
    assert config.vouched()
    assert config.memo.parent == config.state / MEMO_DIR
    assert stat.S_IMODE(config.memo.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.memo.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.state.stat().st_mode) == 0o700
    assert config.memo.read_text() == config_digest(str(config.path), config.raw, ENVIRON) + "\n"


def test_nothing_is_remembered_without_the_bytes_read_before_the_load(config: Config) -> None:
    remember(str(config.path), None, config.state, ENVIRON)
    assert not config.state.exists()


def test_a_config_edited_since_it_was_read_is_not_vouched_for(config: Config) -> None:
    """The bytes the validated path judged are not the file's now: an edit raced the load."""
    config.remember(before=config.raw + b"# read before an edit\n")
    assert not config.memo.exists()
    with pytest.raises(OSError):
        config.vouched()


def test_nothing_is_remembered_where_the_fast_path_would_not_look(config: Config, tmp_path: Path) -> None:
    remember(str(config.path), config.raw, tmp_path / "elsewhere", ENVIRON)
    assert not (tmp_path / "elsewhere").exists() and not config.memo.exists()


def test_the_default_state_directory_is_the_environments(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text('[credentials.api]\ntoken_url = "https://x/t"\n')
    state = tmp_path / "systemd-state"
    environ = {**ENVIRON, "STATE_DIRECTORY": f"{state}:/var/lib/other"}
    remember(str(path), path.read_bytes(), tmp_path / "other", environ)
    assert not (tmp_path / "other").exists()
    remember(str(path), path.read_bytes(), state, environ)
    assert vouched(str(state), str(path), path.read_bytes(), environ)


def test_a_relative_config_path_is_remembered_as_absolute(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    remember("./tokend.toml", config.raw, config.state, ENVIRON)
    assert config.vouched()


def test_remembering_again_leaves_the_memo_alone_and_a_stale_one_is_replaced(config: Config) -> None:
    config.remember()
    first = config.memo.stat()
    config.remember()
    assert config.memo.stat().st_ino == first.st_ino  # not written again
    config.memo.write_text("0" * 64 + "\n")
    assert not config.vouched()
    config.remember()
    assert config.vouched()


@pytest.mark.parametrize(
    "case",
    ["state dir is a file", "config is a directory", "config is gone", "not the subset", "not UTF-8"],
)
def test_remembering_never_fails_the_command(config: Config, case: str) -> None:
    before = config.raw
    if case == "state dir is a file":
        config.state.write_text("in the way")
    elif case == "config is a directory":
        config.path.unlink()
        config.path.mkdir()
    elif case == "config is gone":
        config.path.unlink()
    elif case == "not the subset":
        before = config.text.encode() + b'x = "an \\"escape\\""\n'
        config.path.write_bytes(before)
    else:
        before = config.text.encode() + b"# \xff\n"
        config.path.write_bytes(before)
    remember(str(config.path), before, config.state, ENVIRON)  # no exception
    assert not config.memo.exists()


# --------------------------------------------------------------------------- vouched


def test_only_the_exact_bytes_are_vouched_for(config: Config) -> None:
    config.remember()
    assert config.vouched()
    assert not config.vouched(config.raw + b"\n")
    assert not config.vouched(config.raw.replace(b"https://x/t", b"https://y/t"))


@pytest.mark.parametrize("name", MEMO_ENVIRONMENT)
def test_the_environment_the_load_read_is_part_of_the_verdict(config: Config, name: str) -> None:
    config.remember()
    assert not config.vouched(environ={**ENVIRON, name: "/changed"})


def test_other_variables_are_not(config: Config) -> None:
    config.remember()
    assert config.vouched(environ={**ENVIRON, "PATH": "/elsewhere", "TOKEND_CONFIG": "x"})


def test_the_verdict_is_for_one_file_at_one_place(config: Config, tmp_path: Path) -> None:
    """Relative paths in the config mean other files elsewhere: a copy is judged anew."""
    config.remember()
    copy = tmp_path / "copy.toml"
    copy.write_bytes(config.raw)
    assert memo_path(str(config.state), str(copy)) != str(config.memo)
    assert config_digest(str(copy), config.raw, ENVIRON) != config_digest(
        str(config.path), config.raw, ENVIRON
    )
    with pytest.raises(OSError):
        vouched(str(config.state), str(copy), config.raw, ENVIRON)


@pytest.mark.parametrize(
    "memo",
    [b"", b"\n", b"garbage\n", b"\xff" * 64, b"x" * (MAX_MEMO_BYTES + 1)],
    ids=["empty", "blank", "garbage", "not ASCII", "too large"],
)
def test_a_memo_that_is_not_the_digest_vouches_for_nothing(config: Config, memo: bytes) -> None:
    config.remember()
    digest = config.memo.read_bytes().strip()
    config.memo.write_bytes(memo if len(memo) <= MAX_MEMO_BYTES else digest + memo)
    with contextlib.suppress(GiveUp, ValueError):  # the fast path gives up on any exception
        assert not config.vouched()


def test_a_memo_that_is_not_a_regular_file_vouches_for_nothing(config: Config) -> None:
    config.remember()
    config.memo.unlink()
    os.mkfifo(config.memo)  # opened without blocking, and refused
    with pytest.raises(GiveUp, match="not a regular file"):
        config.vouched()


# --------------------------------------------------------------------------- read_config


def test_read_config_is_the_files_bytes_or_none(config: Config, tmp_path: Path) -> None:
    assert read_config(str(config.path)) == config.raw
    assert read_config(str(tmp_path / "missing.toml")) is None
    assert read_config(str(tmp_path)) is None  # a directory
    assert read_config("") is None
    os.mkfifo(tmp_path / "fifo")
    assert read_config(str(tmp_path / "fifo")) is None
    (tmp_path / "big.toml").write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    assert read_config(str(tmp_path / "big.toml")) is None
    (tmp_path / "limit.toml").write_bytes(b"#" * MAX_CONFIG_BYTES)
    assert read_config(str(tmp_path / "limit.toml")) == b"#" * MAX_CONFIG_BYTES
