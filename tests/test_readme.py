"""The README's Troubleshooting section quotes what tokend really says: each case is made
to happen here (a local identity provider, real processes) and its line compared with the
README's, so a reworded message that leaves the README behind fails. And the Install
section names what a package install brings, the test command what it costs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tokend.core.exit_codes import ExitCode

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.processes import DaemonProcess, run_tokend, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")  # the text log's timestamp


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


TROUBLE = section("Troubleshooting")


def quoted_lines() -> set[str]:
    """Every line of the section's code blocks."""
    blocks = re.findall(r"^```\n(.*?)^```$", TROUBLE, flags=re.M | re.S)
    return {line for block in blocks for line in block.splitlines() if line.strip()}


def said(output: str, *, replace: dict[str, str]) -> set[str]:
    """tokend's lines, as the README writes them: no timestamp, the README's paths."""
    lines = set()
    for line in output.splitlines():
        line = STAMP.sub("", line)
        for this, that in replace.items():
            line = line.replace(this, that)
        lines.add(line)
    return lines


def test_each_troubleshooting_case_quotes_what_tokend_says(
    idp: TokenEndpoint, tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    quoted = quoted_lines()
    paths = {str(tmp_path): "/etc/tokend"}

    # A missing secret file: check's one line, exit 78.
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, name="eventbookings"))
    (tmp_path / "eventbookings.secret").unlink()
    check = run_tokend("check", "-c", config, tmp=tmp_path)
    assert check.returncode == ExitCode.CONFIG
    assert said(check.stderr, replace=paths) & quoted, check.stderr

    # A config that is not valid TOML (line 11, column 8): tokend token exits 78.
    broken = tmp_path / "tokend.toml"
    head = broken.read_text().splitlines()[:10]
    broken.write_text("\n".join(head + [""] * (10 - len(head)) + ["oops = ", ""]))
    token = run_tokend("token", "-c", broken, "eventbookings", tmp=tmp_path)
    assert token.returncode == ExitCode.CONFIG
    assert said(token.stderr, replace=paths) & quoted, token.stderr

    # No status: an operator's shell (no STATE_DIRECTORY, no state_dir) looks in its own
    # home, then in the shipped unit's /var/lib/tokend, and says both.
    if not Path("/var/lib/tokend/status.json").exists():
        config = write_config(tmp_path, credential_toml(idp.url, tmp_path), state=False)
        status = run_tokend("status", "-c", config, tmp=tmp_path)
        assert status.returncode == ExitCode.FAILED
        state = {str(tmp_path / "home"): "/root"}
        assert said(status.stderr, replace=state) & quoted, status.stderr
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))

    # invalid_client: no token, and retried every 5 minutes, by a daemon.
    idp.then(401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"})
    daemon = daemons(config, tmp_path)
    wait_for(lambda: "a retry cannot fix" in daemon.log, 15, "the daemon's first attempt")
    lines = said(daemon.log, replace={})
    assert "ERROR api: no token: invalid_client (HTTP 401): unknown client or wrong secret" in quoted
    assert "ERROR api: no token: invalid_client (HTTP 401): unknown client or wrong secret" in lines
    retry = "ERROR api: a retry cannot fix invalid_client; trying again every 300s and at once on reload"
    assert retry in quoted and retry in lines, daemon.log

    # Exit 75: a second daemon on the same state directory.
    second = run_tokend("run", "-c", config, tmp=tmp_path, timeout=30)
    assert second.returncode == ExitCode.LOCKED
    here = {str(tmp_path / "state"): "/var/lib/tokend", f"(pid {daemon.proc.pid})": "(pid 4242)"}
    assert said(second.stderr, replace=here) & quoted, second.stderr

    # What only a reload or a refresh grant shows: the README's words are the code's.
    prose = " ".join(TROUBLE.split())
    code = "\n".join(p.read_text() for p in (ROOT / "tokend").rglob("*.py"))
    for words, literal in (
        ("ERROR reload rejected, still running the last good config: …", "reload rejected, still running"),
        ("config rejected (still running the last good one): …", "config rejected (still running the last"),
        (
            "WARNING api: the client was refused on the refresh grant (invalid_client …); asking with "
            "client credentials",
            "the client was refused on the refresh grant",
        ),
        ("a retry cannot fix this; trying again every 300s and at once on reload", "a retry cannot fix"),
    ):
        assert words in prose, words
        assert literal in code, literal
    assert daemon.stop() == 0


def test_the_install_section_names_the_example_the_man_pages_and_the_reference() -> None:
    install = section("Install")
    for words in ("tokend example-config", "`man tokend`", "`man tokend.toml`", "docs/reference.md"):
        assert words in install, words


def test_the_test_command_says_what_it_costs() -> None:
    tried = section("Try it: two commands")
    assert "about 30 s to install, then 3\u20134 minutes of tests on 2 cores" in tried
    assert "skip when not run as root" in tried


def test_the_logs_section_tells_a_cached_token_from_a_refresh() -> None:
    logs = " ".join(section("Logs").split())
    code = (ROOT / "tokend" / "daemon" / "reporting.py").read_text()
    assert "api: using the cached token sha256:…, valid until …, next refresh …" in logs
    assert '"%s: using the cached token %s, valid until %s, next refresh %s"' in code
    assert "refresh success in 12ms (new token from the identity provider)" in logs


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but - and _ dropped,
    spaces as dashes."""
    text = re.sub(r"`", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    outside_code = re.sub(r"(?ms)^```.*?^```$", "", text)
    found: set[str] = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", outside_code):
        anchor, n = github_anchor(heading), 1
        while anchor in found:  # GitHub numbers a repeated heading's anchor
            anchor, n = f"{github_anchor(heading)}-{n}", n + 1
        found.add(anchor)
    return found


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_anchor_that_exist(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    outside_code = re.sub(r"(?ms)^```.*?^```$", "", text)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_code):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, man:
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        missing = not file.exists()
        if missing or (
            anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8"))
        ):
            broken.append(target)
    assert not broken, f"{document.name}: {broken}"


def test_the_table_of_contents_is_the_readmes_sections_in_order() -> None:
    headings = re.findall(r"(?m)^## (.+)$", re.sub(r"(?ms)^```.*?^```$", "", README))
    assert headings[0] == "Contents"
    listed = re.findall(r"(?m)^- \[(.+?)\]\(#(.+?)\)$", section("Contents"))
    assert [title for title, _ in listed] == headings[1:]
    assert all(anchor == github_anchor(title) for title, anchor in listed)


def test_credential_and_sink_are_defined_before_anything_else() -> None:
    intro = README.split("\n## ", 1)[0]
    assert "**credential**" in intro and "**sink**" in intro
