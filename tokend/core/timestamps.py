"""A unix time as tokend writes it everywhere (sinks, templates, status, logs): RFC 3339,
in UTC, to the second."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
