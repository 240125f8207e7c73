"""The reference has one source: docs/reference.md and tokend.toml(5) are made from the
schema, tokend(1) from the argparse parser, by tokend.devtools.reference. A key added to the
schema without a doc line, or a generated file left as it was after its source changed,
fails here; so does a key the example lacks, a command or option tokend(1) does not name,
and a file a package install should ship that it would not."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tokend.cli.main import build_parser
from tokend.cli.manual import EXIT_CODES, SHIPPED
from tokend.core.exit_codes import ExitCode
from tokend.core.limits import PRESETS
from tokend.devtools import reference
from tokend.devtools.reference import OUTPUTS, commands, documented, main, roff, stale, tables

ROOT = Path(__file__).resolve().parents[1]


def text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def sections(markdown: str) -> dict[str, str]:
    """docs/reference.md cut at its tables' headings: header → its text."""
    parts = re.split(r"^## `(.+)`$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


# --------------------------------------------------------------------------- the schema's side


def test_every_key_of_the_schema_has_one_line_of_meaning() -> None:
    for table in tables():
        for spec in documented(table.value):
            assert spec.doc, f"{table.header} {spec.field}: no doc= on its key()"
            assert "\n" not in spec.doc and len(spec.doc) <= 110, spec.field


def test_every_key_of_the_schema_is_in_the_reference_under_its_table() -> None:
    found = sections(text("docs/reference.md"))
    for table in tables():
        assert table.header in found, table.header
        headings = re.findall(r"^### (.+)$", found[table.header], flags=re.M)
        named = {key for heading in headings for key in re.findall(r"`([a-z_]+)`", heading)}
        assert named == {key for spec in documented(table.value) for key in spec.keys or ()}, table.header


def test_every_key_of_the_schema_is_in_tokend_toml_5() -> None:
    page = text("man/tokend.toml.5")
    for table in tables():
        assert f".SH {roff(table.header)}" in page
        for spec in documented(table.value):
            assert ".B " + roff(", ".join(spec.keys or ())) in page, spec.field


def test_every_key_of_the_schema_is_in_the_example() -> None:
    example = text("tokend.toml.example")
    shown = set(re.findall(r"^#?\s*([a-z_]+)\s*=", example, flags=re.M))
    shown |= set(re.findall(r"^#?\s*\[\[?credentials\.\w+\.(\w+)\]\]?", example, flags=re.M))
    for table in tables():
        for spec in documented(table.value):
            missing = set(spec.keys or ()) - shown
            assert not missing, f"{table.header}: {sorted(missing)} not in tokend.toml.example"


def test_each_preset_is_in_the_reference_and_a_key_the_credential_sets_wins_over_it() -> None:
    doc = text("docs/reference.md")
    assert "A key the credential sets itself wins over the preset's value" in doc
    for name, values in PRESETS.items():
        for key, value in values.items():
            assert f'provider = "{name}" sets {key} = "{value}"' in doc


# --------------------------------------------------------------------------- the command line


def every_option(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


def test_every_command_and_option_is_in_tokend_1() -> None:
    page = text("man/tokend.1")
    parser = build_parser()
    for option in every_option(parser):
        assert roff(option) in page, option
    for command in commands(parser):
        assert f".SS {roff(command.name)}" in page, command.name
        for option in every_option(command.parser):
            assert roff(option) in page, f"{command.name} {option}"


def test_tokend_1_gives_each_exit_code_the_environment_and_the_config_search_order() -> None:
    page = text("man/tokend.1")
    assert {code for code, _ in EXIT_CODES} == {0, 1, 2, 75, 78}
    status = page.split(".SH EXIT STATUS")[1].split(".SH ")[0]
    for code in (*(c for c, _ in EXIT_CODES), ExitCode.NOT_EXECUTABLE, ExitCode.NOT_FOUND):
        assert str(int(code)) in status
    for variable in ("TOKEND_CONFIG", "CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        assert f".B {roff(variable)}" in page
    assert roff("/etc/tokend/tokend.toml") in page


def run_tokend(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokend", *words], capture_output=True, text=True, check=False, timeout=60
    )


def test_help_ends_with_exit_codes_config_search_order_and_where_the_docs_are() -> None:
    shown = run_tokend("--help")
    assert shown.returncode == 0
    epilog = shown.stdout.split("exit codes:")[1]
    for code in ("0", "1", "2", "75", "78"):
        assert re.search(rf"^  {code}\s", epilog, flags=re.M), code
    assert "$TOKEND_CONFIG, then" in epilog
    assert "tokend example-config" in epilog
    assert str(SHIPPED / "man" / "tokend.1") in epilog


def test_example_config_prints_the_shipped_example() -> None:
    shown = run_tokend("example-config")
    assert shown.returncode == 0
    assert shown.stdout == text("tokend.toml.example")


# --------------------------------------------------------------------------- generated, and fresh


def test_the_generated_files_are_what_the_generator_makes_now() -> None:
    assert stale(ROOT) == [], f"stale: run {reference.GENERATED_BY}"


def copy_outputs(root: Path) -> None:
    for name in OUTPUTS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)


def test_check_exits_1_naming_a_stale_file_and_writing_makes_it_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_outputs(tmp_path)
    assert main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "man/tokend.1").write_text(text("man/tokend.1").replace("exec", "exce", 1))
    (tmp_path / "docs/reference.md").unlink()
    capsys.readouterr()
    assert main(["--check", "--root", str(tmp_path)]) == 1
    said = capsys.readouterr().err
    assert "man/tokend.1 is stale" in said and "docs/reference.md is stale" in said
    assert "man/tokend.toml.5" not in said
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0


def test_the_man_pages_are_roff_that_groff_reads_without_a_warning() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    for name in ("man/tokend.1", "man/tokend.toml.5"):
        result = subprocess.run(
            ["groff", "-man", "-ww", "-z", str(ROOT / name)], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stderr) == (0, ""), name


# --------------------------------------------------------------------------- shipped


def test_the_package_data_is_the_man_pages_the_example_and_every_unit() -> None:
    units = sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".socket"))
    shipped = {
        "tokend.toml.example": "tokend.toml.example",
        "man/tokend.1": "man/tokend.1",
        "man/tokend.toml.5": "man/tokend.toml.5",
        **{f"systemd/{unit}": f"systemd/{unit}" for unit in units},
    }
    for inside, source in shipped.items():
        assert (SHIPPED / inside).resolve() == (ROOT / source).resolve(), inside
    globs = tomllib.loads(text("pyproject.toml"))["tool"]["setuptools"]["package-data"]["tokend"]
    for inside in shipped:
        assert any(Path("data", inside).match(glob) for glob in globs), inside


def test_each_unit_names_the_man_pages_a_package_install_ships() -> None:
    """`systemctl help tokend` and `systemctl status`'s Docs: line lead to tokend's own pages,
    and each page named is one pip installs under share/man (CI's systemd-analyze verify runs
    man(1) on every one)."""
    data_files = tomllib.loads(text("pyproject.toml"))["tool"]["setuptools"]["data-files"]
    for unit in sorted((ROOT / "systemd").iterdir()):
        if unit.suffix not in (".service", ".socket"):
            continue
        docs = [
            url
            for line in unit.read_text().splitlines()
            if line.startswith("Documentation=")
            for url in line.removeprefix("Documentation=").split()
        ]
        expected = (
            ["man:tokend.toml(5)"] if unit.suffix == ".socket" else ["man:tokend(1)", "man:tokend.toml(5)"]
        )
        assert docs[: len(expected)] == expected, unit.name
        for url in docs:
            page = re.fullmatch(r"man:(tokend[\w.]*)\((\d)\)", url)
            if page is not None:
                name, section = page.groups()
                assert f"man/{name}.{section}" in data_files[f"share/man/man{section}"], url
                assert f"\n.TH {name.upper()} {section} " in text(f"man/{name}.{section}"), url
