"""``tokend exec``'s supervision options: ``--on-rotate``, ``--stop-signal`` and
``--stop-timeout`` as one value, :class:`Supervision`. Pure: text in, a value or a
one-line ValueError out."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from tokend.config import parse_duration
from tokend.io.child_process import UNCATCHABLE

# Passed on to the child as a stop: the child's exit is then ours.
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
MAX_STOP_TIMEOUT = 3600.0  # longer is a typo; systemd's own default is 90 s


@dataclass(frozen=True, slots=True)
class Supervision:
    """What ``--on-rotate``, ``--stop-signal`` and ``--stop-timeout`` asked for."""

    rotate_signal: signal.Signals | None  # None: restart on rotation
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0

    @property
    def restart(self) -> bool:
        return self.rotate_signal is None


def parse_signal(text: str, option: str) -> signal.Signals:
    """``HUP``, ``SIGHUP``, ``sighup`` or an ASCII number. Raises ValueError (one line)."""
    name = text.strip().upper()
    # isascii first: an Arabic-Indic one is a digit to str.isdigit and int(), no signal number.
    if name.isascii() and name.isdigit() and len(name) <= 3:
        try:
            return signal.Signals(int(name))
        except ValueError:
            pass
    elif name.isascii() and name.replace("_", "").isalnum():
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in signal.Signals.__members__:
            return signal.Signals[name]
    raise ValueError(f"{option} {text!r} is not a signal name")


def parse_on_rotate(text: str) -> Supervision | None:
    """``none`` (None: exec as before), ``restart``, or the signal to send."""
    word = text.strip().lower()
    if word == "none":
        return None
    if word == "restart":
        return Supervision(None)
    signum = parse_signal(text, "--on-rotate")
    if signum in UNCATCHABLE:
        raise ValueError(f"--on-rotate {text!r} cannot be caught by the program; use restart")
    if signum in STOPPING:  # passed on as a stop too: tokend would wait for an exit it caused
        raise ValueError(f"--on-rotate {text!r} would stop the program, not reload it; use restart")
    return Supervision(signum)


def parse_stop_timeout(text: str) -> float:
    """``10s``, ``1m30s``, ``500ms`` or ASCII seconds, at most an hour."""
    word = text.strip()
    try:
        seconds = float(word) if word.isascii() and word.isdigit() else parse_duration(word)
    except ValueError:
        raise ValueError(f'--stop-timeout {text!r} is not a duration such as "10s" or "1m"') from None
    if seconds > MAX_STOP_TIMEOUT:
        raise ValueError(f"--stop-timeout {text!r} is over an hour; is that a typo?")
    return seconds
