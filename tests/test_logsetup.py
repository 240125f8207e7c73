"""Log lines for a terminal, for journald and for log shippers."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.io import logsetup


@pytest.fixture
def tokend_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tokend")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_journald_is_recognised_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert logsetup.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        # Inherited by a child whose stderr went elsewhere: not the journal.
        assert not logsetup.under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not logsetup.under_journald({}, stream)


def test_journald_lines_carry_priority_and_no_timestamp(
    tmp_path: Path, tokend_logger: logging.Logger
) -> None:
    with open(tmp_path / "stream", "w+") as stream:
        st = os.fstat(stream.fileno())
        logsetup.setup("info", environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream=stream)
        tokend_logger.info("hello")
        tokend_logger.warning("careful")
        tokend_logger.error("broken")
        stream.seek(0)
        assert stream.read().splitlines() == ["<6>hello", "<4>careful", "<3>broken"]


def test_text_lines_have_a_utc_timestamp_and_level(tokend_logger: logging.Logger) -> None:
    stream = io.StringIO()
    logsetup.setup("info", environ={}, stream=stream)
    tokend_logger.info("hello")
    tokend_logger.debug("hidden")
    (line,) = stream.getvalue().splitlines()
    stamp, level, message = line.split(" ", 2)
    assert stamp.endswith("Z") and "T" in stamp and (level, message) == ("INFO", "hello")


def test_json_lines_have_stable_keys(tokend_logger: logging.Logger) -> None:
    stream = io.StringIO()
    logsetup.setup("debug", "json", environ={}, stream=stream)
    logging.getLogger("tokend.daemon").debug("api: %s", "x")
    entry = json.loads(stream.getvalue())
    assert set(entry) == {"ts", "level", "logger", "msg"}
    assert (entry["level"], entry["logger"], entry["msg"]) == ("debug", "tokend.daemon", "api: x")
