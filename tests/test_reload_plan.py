"""The reload plan: which credentials a config edit touches, and how."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokend.config import REFETCH_FIELDS, CredentialConfig, SinkConfig, parse
from tokend.config.reload_plan import ReloadPlan, plan_reload

from .test_schema import api, changed

BASE = """
[credentials.{name}]
token_url = "https://idp.example.com/token"
client_id = "id-{name}"
client_secret_file = "/etc/tokend/{name}.secret"
{extra}
[[credentials.{name}.sink]]
path = "/run/tokend/{name}.token"
"""


def creds(**extras: str) -> dict[str, object]:
    text = "".join(BASE.format(name=name, extra=extra) for name, extra in extras.items())
    # A credential whose extra names another secret source drops the default one.
    text = text.replace(
        'client_secret_file = "/etc/tokend/secret.secret"\nclient_secret_env', "client_secret_env"
    )
    return dict(parse(text, Path("/etc/tokend/tokend.toml"), environ={}).credentials)


def test_an_identical_config_touches_nothing() -> None:
    config = creds(a="", b="")
    assert plan_reload(config, creds(a="", b="")) == ReloadPlan(unchanged=("a", "b"))  # type: ignore[arg-type]


def test_each_kind_of_change() -> None:
    old = creds(keep="", scope="", sinks="", timing="", gone="", secret="")
    new = creds(
        keep="",
        scope='scope = "more"',
        sinks='[[credentials.sinks.sink]]\npath = "/run/x"\n',
        timing="refresh_at = 0.6",
        secret='client_secret_env = "X"',
        fresh="",
    )
    plan = plan_reload(old, new)  # type: ignore[arg-type]
    assert plan.added == ("fresh",)
    assert plan.removed == ("gone",)
    assert set(plan.refetch) == {"scope", "secret"}
    assert set(plan.resink) == {"sinks", "timing"}
    assert plan.unchanged == ("keep",)
    assert plan.summary() == ("1 added, 1 removed, 2 to refetch, 2 with new sinks or timing, 1 unchanged")


def test_a_change_to_a_field_the_schema_marks_refetch_asks_for_a_token_any_other_only_resinks() -> None:
    cred = api()
    for f in dataclasses.fields(CredentialConfig):
        if f.name == "name":  # a renamed credential is another credential
            continue
        plan = plan_reload({"api": cred}, {"api": changed(cred, f.name)})
        expected = ReloadPlan(refetch=("api",)) if f.name in REFETCH_FIELDS else ReloadPlan(resink=("api",))
        assert plan == expected, f.name


def test_a_secret_file_whose_content_changed_asks_for_a_token() -> None:
    cred = api()
    assert cred.client_secret is not None
    secret = Path(cred.client_secret.value)
    assert plan_reload({"api": cred}, {"api": cred}, {secret}) == ReloadPlan(refetch=("api",))
    assert plan_reload({"api": cred}, {"api": cred}, {Path("/elsewhere")}) == ReloadPlan(unchanged=("api",))


def test_an_edited_template_file_re_sinks_and_never_asks_for_a_token() -> None:
    """The template's text is in the sink's config (read at load): an edit is a new sink."""
    cred = api()
    tmpl = Path("/etc/tokend/api.netrc.tmpl")
    sink = SinkConfig(
        path=Path("/run/tokend/api.netrc"),
        format="template",
        template_file=tmpl,
        template_text="machine a password ${access_token}\n",
        credential="api",
    )
    old = dataclasses.replace(cred, sinks=(sink,))
    edited = dataclasses.replace(sink, template_text="machine b password ${access_token}\n")
    new = dataclasses.replace(cred, sinks=(edited,))
    assert plan_reload({"api": old}, {"api": new}, {tmpl}) == ReloadPlan(resink=("api",))
    assert plan_reload({"api": old}, {"api": old}, {tmpl}) == ReloadPlan(unchanged=("api",))
