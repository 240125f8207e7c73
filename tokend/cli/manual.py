"""What the command line says about itself, written once: the exit codes, where the config
is looked for, the environment, the files, and the files a package install ships
(``tokend/data``: the man pages, the example config, the systemd units).

``--help``'s epilog and tokend(1) (:mod:`tokend.devtools.reference`) are both made from
these; ``tokend example-config`` prints the shipped example.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from tokend.core.exit_codes import ExitCode

# What each exit code of `tokend` means (README, "Commands"); the values are ExitCode's.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (ExitCode.OK, "success"),
    (
        ExitCode.FAILED,
        "a token could not be had or a sink could not be written; for status: a credential is "
        "failing or expired, or the daemon is not running",
    ),
    (ExitCode.USAGE, "usage: the command line names something that is not there (an unknown credential)"),
    (ExitCode.LOCKED, "run: another daemon holds the state directory (its pid is named)"),
    (
        ExitCode.CONFIG,
        "config error, on one line naming the file and key (also a config without credentials, "
        "for check, fetch, token and exec); systemd's RestartPreventExitStatus=78",
    ),
)
EXEC_EXIT = (
    "exec returns CMD's exit code (or dies of CMD's signal); "
    f"{ExitCode.NOT_EXECUTABLE} when CMD cannot be run, {ExitCode.NOT_FOUND} when it is not there. "
    "status --check returns Nagios codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
)

# Where the config is looked for without -c (tokend.config.paths.default_config_path).
CONFIG_SEARCH: tuple[str, ...] = (
    "-c FILE",
    "$TOKEND_CONFIG",
    "$CONFIGURATION_DIRECTORY/tokend.toml",
    "/etc/tokend/tokend.toml",
)
# The state directory's (tokend.config.paths.default_state_dir), unless state_dir says.
STATE_SEARCH: tuple[str, ...] = (
    "state_dir in [tokend]",
    "$STATE_DIRECTORY",
    "$XDG_STATE_HOME/tokend",
    "~/.local/state/tokend",
)

ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("TOKEND_CONFIG", "the config file, unless -c names one"),
    ("CONFIGURATION_DIRECTORY", "systemd's ConfigurationDirectory=: tokend.toml is looked for there"),
    ("STATE_DIRECTORY", "systemd's StateDirectory=: the state directory, unless state_dir says"),
    ("XDG_STATE_HOME", "the state directory is $XDG_STATE_HOME/tokend without $STATE_DIRECTORY"),
    ("CREDENTIALS_DIRECTORY", "systemd's LoadCredential=: where the *_credential keys are read"),
    ("NOTIFY_SOCKET", "run: readiness, reloads and status are told to systemd (Type=notify)"),
    ("LISTEN_FDS", 'run: sockets systemd passes, for listen = "systemd:NAME"'),
)

FILES: tuple[tuple[str, str], ...] = (
    ("/etc/tokend/tokend.toml", "the config file (tokend.toml(5)); see CONFIG_SEARCH"),
    ("STATE_DIR/", "the token cache (0600 files), status.json, tokend.lock, fastpath/"),
    ("STATE_DIR/tokend.lock", "held by the one tokend run using the state directory"),
)

SHIPPED = Path(__file__).resolve().parent.parent / "data"  # package data: tokend/data
EXAMPLE = "tokend.toml.example"
MAN_PAGES = ("man/tokend.1", "man/tokend.toml.5")
UNITS = ("systemd/tokend.service", "systemd/tokend.socket", "systemd/example-exec.service")


def epilog() -> str:
    """``tokend --help``'s epilog: exit codes, config search order, where the docs are."""

    def fill(text: str, first: str = "", rest: str = "  ") -> str:
        return textwrap.fill(text, 78, initial_indent=first, subsequent_indent=rest)

    lines = ["exit codes:"]
    lines += [fill(text, f"  {code:<4}", " " * 6) for code, text in EXIT_CODES]
    lines += [fill(EXEC_EXIT, "  "), ""]
    lines += [fill(f"config file: {', then '.join(CONFIG_SEARCH)}")]
    lines += [fill(f"state directory: {', then '.join(STATE_SEARCH)}"), ""]
    lines += [
        "tokend example-config prints an example config to start from.",
        f"man pages: man -l {SHIPPED / MAN_PAGES[0]}",
        f"           man -l {SHIPPED / MAN_PAGES[1]}",
        f"systemd units: {SHIPPED / 'systemd'}/",
        "reference: docs/reference.md and README.md in the source",
    ]
    return "\n".join(lines)


def example_config() -> str:
    """The shipped example config's text (package data)."""
    return (SHIPPED / EXAMPLE).read_text(encoding="utf-8")


def cmd_example_config() -> int:
    sys.stdout.write(example_config())
    return ExitCode.OK
