"""tokend/daemon/reloader.py: what a reload decides, before the daemon applies it."""

from __future__ import annotations

from pathlib import Path

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .test_watch import two_credentials


def test_an_edit_during_a_reload_is_not_lost(idp: TokenEndpoint, tmp_path: Path) -> None:
    """Regression: the benchmark's back-to-back edits once lost one. After a reload, the
    watch must not adopt an edit it has not compared yet as its new baseline."""
    from tokend.config import load
    from tokend.daemon.reloader import Reloader

    config_path = write_config(tmp_path, *two_credentials(idp, tmp_path))
    config = load(config_path)
    reloader = Reloader({}, lambda: None)
    try:
        reloader.watch(config)
        config_path.write_text(
            config_path.read_text() + credential_toml(idp.url, tmp_path, "c", extra='scope = "c"')
        )
        reloader.watch(config)  # what a reload finishing just now does
        assert config_path in reloader.changes(config)
        new = reloader.load(config_path)
        assert not isinstance(new, Exception) and "c" in new.credentials
    finally:
        reloader.stop()
