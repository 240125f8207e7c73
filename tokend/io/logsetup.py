"""Logging to stderr the way its reader wants it: journald, a terminal, or a log shipper.

Under journald (``$JOURNAL_STREAM`` set) each line starts with its ``<N>`` syslog priority
and carries no timestamp, since the journal adds its own. Nothing here formats a token:
callers log :func:`tokend.core.tokens.fingerprint` values only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when stderr *is* the journal stream systemd gave us, not just inherited env."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


EVENT_KEYS = ("event", "credential", "outcome", "duration_ms", "next_refresh", "token")
"""Fields an event line may carry (``extra=``), as JSON keys: documented in the README."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in EVENT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        return json.dumps(entry)


class UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def setup(
    level: str = "info",
    fmt: str = "text",
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif under_journald(environ, stream):
        formatter = JournalFormatter("%(message)s")
    else:
        formatter = UtcFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    handler.setFormatter(formatter)
    root = logging.getLogger("tokend")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
