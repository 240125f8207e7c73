"""Where tokend looks when the command line does not say: the config file and the state
directory, from the environment systemd (or the user) gives. ``tokend token``'s fast path
repeats these in strings (:mod:`tokend.cli.fastpath`; the tests hold both to the same answers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def default_state_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours.
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "tokend"
    return Path.home() / ".local" / "state" / "tokend"


def default_config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("TOKEND_CONFIG"):
        return Path(environ["TOKEND_CONFIG"])
    if environ.get("CONFIGURATION_DIRECTORY"):
        return Path(environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "tokend.toml"
    return Path("/etc/tokend/tokend.toml")
