"""A reader process for the storm: reads sinks in a tight loop, judges every read.

Usage: python -m bench.reader SECONDS PATH... ; prints one JSON line of counts. Tokens from
the local IdP (stamp_expiry) carry their expiry in ms: ``demo-<expiry_ms>-<random>``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .sink_format import token_of  # the sink parser, without importing the test suite


def main() -> None:
    duration = float(sys.argv[1])
    paths = [Path(p) for p in sys.argv[2:]]
    counts = {"reads": 0, "partial": 0, "expired": 0, "missing": 0}
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                counts["missing"] += 1
                continue
            counts["reads"] += 1
            try:
                token = token_of(path, data)
                expiry_ms = int(token.split("-")[1])
            except (ValueError, IndexError, KeyError):
                counts["partial"] += 1
                continue
            if time.time() * 1000 >= expiry_ms:
                counts["expired"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
