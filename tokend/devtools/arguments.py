"""Command-line values of the tour and the local identity provider, bounded and ASCII.

``int()`` and ``float()`` take Arabic-Indic digits, ``nan`` and ``inf``; a tour given
``--lifetime ٣`` or ``--for nan`` should say no, in one line, like every other command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tokend.core.limits import MAX_EXPIRES_IN, command_line_duration


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: ASCII digits only, from ``low`` to ``high``."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit() and len(text) <= 9) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return int(text)

    return parse


def duration(text: str) -> float:
    """An argparse type: ``"30s"``, ``"2m"`` or seconds, more than zero."""
    try:
        seconds = command_line_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= MAX_EXPIRES_IN:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration from 1s to a year")
    return seconds
