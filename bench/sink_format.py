"""Reading a sink the way its consumers do: the one parser, for the benchmark's reader
processes and (through ``tests/support/sinks.py``) the tests; here so that ``bench/`` runs
without the test suite. Strict: a partial file is a ValueError, never a token.
"""

from __future__ import annotations

import json
from pathlib import Path

HEADER = "Authorization: Bearer "


def token_of(path: Path, data: bytes) -> str:
    """The token a program reading this sink gets; raises ValueError on a partial read.

    The format is the file's suffix: ``.json``, ``.env``, ``.header``, anything else raw;
    ``.resp`` is a raw token response (the benchmark's curl baseline), with no final newline.
    """
    text = data.decode()
    if path.suffix == ".resp":
        return str(json.loads(text)["access_token"])
    if not text.endswith("\n"):
        raise ValueError(f"{path.name}: no final newline: {text[-40:]!r}")
    if path.suffix == ".json":
        return str(json.loads(text)["access_token"])
    if path.suffix == ".env":
        _, sep, value = text.splitlines()[0].partition("=")
        if not sep or not (value.startswith("'") and value.endswith("'")):
            raise ValueError(f"{path.name}: not NAME='token'")
        return value[1:-1]
    if path.suffix == ".header":
        if not text.startswith(HEADER):
            raise ValueError(f"{path.name}: not an Authorization header")
        return text[len(HEADER) : -1]
    return text[:-1]


def read_token(path: Path) -> str | None:
    """The token in the sink now, or None when there is no file (yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return token_of(path, data)
