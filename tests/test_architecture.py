"""ARCHITECTURE.md is the map: it names every module of the package, so a module added
without a line there (its one job) fails here, and a line left for a module that is gone
fails too."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_architecture_names_every_module_and_no_module_that_is_gone() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    package = ROOT / "tokend"
    modules = {
        path.relative_to(package).as_posix() for path in package.rglob("*.py") if path.name != "__init__.py"
    }
    named = set(re.findall(r"`((?:core|config|io|daemon|cli|devtools)/\w+\.py)`", text))
    assert "tokend/__main__.py" in text
    modules.discard("__main__.py")
    assert sorted(modules - named) == [], "modules ARCHITECTURE.md does not name"
    assert sorted(named - modules) == [], "ARCHITECTURE.md names modules that do not exist"
