"""Reading a sink the way its consumers do: the benchmark's parser (bench/sink_format.py),
the one the tests and the benchmark's reader processes share. Strict: a partial file is a
ValueError, never a token."""

from __future__ import annotations

from bench.sink_format import HEADER, read_token, token_of

__all__ = ["HEADER", "read_token", "token_of"]
