"""tokend/devtools/arguments.py: the tour's and the local IdP's numbers are ASCII and
bounded; a bad one is argparse's one-line usage error, exit 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tokend.devtools.arguments import duration, whole_number

from .support.processes import REPO


@pytest.mark.parametrize("text", ["٣", "\uff13", "0", "86401", "-1", "1e3", "", " 5", "5\n", "9" * 40])
def test_a_lifetime_is_ascii_digits_within_bounds(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        whole_number(1, 86400)(text)


def test_whole_numbers_at_their_bounds() -> None:
    assert whole_number(1, 86400)("1") == 1 and whole_number(1, 86400)("86400") == 86400
    assert whole_number(0, 65535)("0") == 0


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "٣", "2y", ""])
def test_a_duration_is_more_than_zero_and_not_a_float_trick(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_durations_in_seconds_or_units() -> None:
    assert duration("30") == 30 and duration("2m") == 120 and duration("500ms") == 0.5


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["-m", "tokend", "demo"], "--lifetime", "٣"),
        (["-m", "tokend", "demo"], "--for", "nan"),
        (["-m", "tokend.devtools.idp"], "--port", "٨٠"),
    ],
)
def test_the_commands_refuse_them_in_one_line(command: list[str], option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, *command, option, value], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {option}: {value!r}" in result.stderr.splitlines()[-1]
