"""How the one-shot commands speak: logging to stderr as the config asks, and the
config's warnings said once."""

from __future__ import annotations

import logging

from tokend.config import Config
from tokend.io import logsetup

log = logging.getLogger("tokend")


def setup_logging(config: Config | None, *, quiet: bool = False) -> None:
    """Log to stderr as the config asks, and say what the config warned about."""
    if config is None or quiet:
        logsetup.setup("warning")
    else:
        logsetup.setup(config.log_level, config.log_format)
    for warning in config.warnings if config is not None else ():
        log.warning("%s", warning)
