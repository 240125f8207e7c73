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


def test_an_edited_template_file_is_a_change_that_re_sinks_and_a_removed_one_is_rejected(
    tmp_path: Path,
) -> None:
    from tokend.config import ConfigError, load
    from tokend.config.reload_plan import ReloadPlan, plan_reload
    from tokend.daemon.reloader import Reloader

    template = tmp_path / "netrc.tmpl"
    template.write_text("machine a password ${access_token}\n")
    sinks = (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.netrc"\n'
        f'format = "template"\ntemplate_file = "{template}"\n'
    )
    config_path = write_config(
        tmp_path, credential_toml("https://idp.example.com/token", tmp_path, sinks=sinks)
    )
    config = load(config_path)
    reloader = Reloader({}, lambda: None)
    try:
        reloader.watch(config)
        template.write_text("machine b password ${access_token}\n")
        assert reloader.changes(config) == {template}
        new = reloader.load(config_path)
        assert not isinstance(new, ConfigError)
        assert new.credentials["api"].sinks[0].template_text == "machine b password ${access_token}\n"
        assert plan_reload(config.credentials, new.credentials, {template}) == ReloadPlan(resink=("api",))
        template.unlink()
        assert reloader.changes(config) == {template}
        rejected = reloader.load(config_path)
        assert isinstance(rejected, ConfigError) and "netrc.tmpl: no such file" in str(rejected)
    finally:
        reloader.stop()
