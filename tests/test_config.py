"""tokend.toml: what it accepts, and the one-line error for everything it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokend.config import (
    ConfigError,
    default_config_path,
    default_state_dir,
    load,
    parse,
    parse_duration,
    parse_mode,
)
from tokend.core.exit_codes import ExitCode

from .support.processes import assert_one_line_error, run_tokend

BASE = """
[credentials.api]
token_url = "https://idp.example.com/token"
client_id = "id"
client_secret_file = "/etc/tokend/api.secret"
"""


def cfg(text: str, file: Path = Path("/etc/tokend/tokend.toml")) -> object:
    return parse(text, file, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("500ms", 0.5),
        ("90", None),
        (90, 90),
        (0, 0),
    ],
)
def test_durations_parse_to_seconds(text: object, expected: float | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "1x", "m5", "-5s", "1.5h", True, 1.5, -3])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_modes_are_octal_strings() -> None:
    assert parse_mode("0640") == 0o640
    assert parse_mode("600") == 0o600
    with pytest.raises(ValueError, match="not the number 640"):
        parse_mode(640)
    with pytest.raises(ValueError, match="write"):
        parse_mode("0666")


def test_eventbookings_preset_fills_endpoint_and_dialect() -> None:
    config = parse(
        '[credentials.eb]\nprovider = "eventbookings"\nclient_id = "x"\nclient_secret = "y"\n',
        Path("/etc/tokend/tokend.toml"),
        environ={},
    )
    eb = config.credentials["eb"]
    assert eb.token_url == "https://identity.eventbookings.com/connect/token"
    assert (eb.request_format, eb.client_auth) == ("json", "body")


def test_explicit_keys_override_the_preset() -> None:
    config = parse(
        '[credentials.eb]\nprovider = "eventbookings"\nclient_id = "x"\nclient_secret = "y"\n'
        'request_format = "form"\n',
        Path("/x/tokend.toml"),
        environ={},
    )
    assert config.credentials["eb"].request_format == "form"


def test_defaults_and_relative_paths() -> None:
    config = parse(
        BASE + '[[credentials.api.sink]]\npath = "run/api.token"\nformat = "env"\n',
        Path("/etc/tokend/tokend.toml"),
        environ={"STATE_DIRECTORY": "/var/lib/tokend"},
    )
    api = config.credentials["api"]
    assert config.state_dir == Path("/var/lib/tokend")
    assert (api.request_format, api.client_auth, api.refresh_at) == ("form", "basic", 0.8)
    assert (api.min_ttl_margin, api.default_expires_in, api.timeout) == (60, 3600, 10)
    # A relative sink path is relative to the config file, not to the working directory.
    assert api.sinks[0].path == Path("/etc/tokend/run/api.token")
    assert api.sinks[0].mode == 0o600
    assert api.sinks[0].env_name == "API_ACCESS_TOKEN"


def test_scope_list_and_extra_params() -> None:
    config = parse(
        BASE + 'scope = ["read", "write"]\nextra_params = { audience = "x", n = 3 }\n',
        Path("/t.toml"),
        environ={},
    )
    api = config.credentials["api"]
    assert api.scope_string == "read write"
    assert api.extra_params == (("audience", "x"), ("n", "3"))


def test_default_locations_follow_systemd_then_home() -> None:
    assert default_config_path({"TOKEND_CONFIG": "/a.toml"}) == Path("/a.toml")
    assert default_config_path({"CONFIGURATION_DIRECTORY": "/etc/x"}) == Path("/etc/x/tokend.toml")
    assert default_config_path({}) == Path("/etc/tokend/tokend.toml")
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")
    assert default_state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/tokend")


# Each case: a config edit an operator could make, the key the error must name, and a
# fragment of the explanation.
BAD_CONFIGS = [
    ("unknown key", BASE + "refresh_at_ = 0.7\n", "credentials.api.refresh_at_", "did you mean 'refresh_at'"),
    ("unknown top key", "[tokend]\nstate_dri = '/x'\n", "tokend.state_dri", "did you mean 'state_dir'"),
    ("wrong type", BASE + "timeout = true\n", "credentials.api.timeout", "duration"),
    (
        "wrong type str",
        BASE + "use_refresh_token = 'yes'\n",
        "credentials.api.use_refresh_token",
        "true or false",
    ),
    (
        "bad duration",
        BASE + 'min_ttl_margin = "1 minute"\n',
        "credentials.api.min_ttl_margin",
        "not a duration",
    ),
    (
        "decimal mode",
        BASE + '[[credentials.api.sink]]\npath = "/run/a"\nmode = 640\n',
        "credentials.api.sink[0].mode",
        "octal string",
    ),
    (
        "http to a remote host",
        BASE.replace("https://idp.example.com", "http://idp.example.com"),
        "credentials.api.token_url",
        "unencrypted",
    ),
    (
        "missing secret",
        BASE.replace('client_secret_file = "/etc/tokend/api.secret"\n', ""),
        "credentials.api.client_secret",
        "is required",
    ),
    ("two secrets", BASE + 'client_secret_env = "X"\n', "credentials.api.client_secret_file", "conflicts"),
    (
        "two sinks one path",
        BASE + '[[credentials.api.sink]]\npath = "/run/a"\n'
        '[credentials.b]\ntoken_url = "https://i/t"\nclient_id = "i"\nclient_secret = "s"\n'
        '[[credentials.b.sink]]\npath = "/run/a"\n',
        "credentials.b.sink[0].path",
        "already written",
    ),
    ("refresh_at out of range", BASE + "refresh_at = 0.99\n", "credentials.api.refresh_at", "0.95"),
    (
        "bad name",
        BASE.replace("credentials.api", "credentials.'a b'"),
        "credentials.'a b'",
        "letters, digits",
    ),
    ("unknown provider", BASE + 'provider = "okta"\n', "credentials.api.provider", "unknown provider"),
    (
        "bad format",
        BASE + '[[credentials.api.sink]]\npath = "/run/a"\nformat = "yaml"\n',
        "credentials.api.sink[0].format",
        "raw, json, env, header",
    ),
    (
        "env_name on raw",
        BASE + '[[credentials.api.sink]]\npath = "/run/a"\nenv_name = "X"\n',
        "credentials.api.sink[0].env_name",
        "only applies",
    ),
    (
        "no token_url",
        BASE.replace('token_url = "https://idp.example.com/token"\n', ""),
        "credentials.api.token_url",
        "is required",
    ),
    (
        "hook signal without pid",
        BASE + '[credentials.api.on_rotate]\nsignal = "HUP"\n',
        "credentials.api.on_rotate.pid_file",
        "go together",
    ),
    (
        "hook shell string",
        BASE + '[credentials.api.on_rotate]\ncommand = "systemctl reload x"\n',
        "credentials.api.on_rotate.command",
        "list of strings",
    ),
    (
        "reserved extra param",
        BASE + 'extra_params = { client_secret = "x" }\n',
        "credentials.api.extra_params.client_secret",
        "set by tokend",
    ),
]


@pytest.mark.parametrize(("case", "text", "where", "fragment"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_every_config_error_names_file_credential_and_key(
    case: str, text: str, where: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(text)
    message = str(info.value)
    assert message.startswith("/etc/tokend/tokend.toml: ")
    assert f": {where}: " in message
    assert fragment in message
    assert "\n" not in message


def test_invalid_toml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"tokend.toml: not valid TOML: .*line 2"):
        cfg("[tokend]\nstate_dir = \n")


def test_http_to_loopback_is_allowed_and_insecure_http_can_be_asked_for() -> None:
    cfg(BASE.replace("https://idp.example.com", "http://127.0.0.1:8080"))
    cfg(BASE.replace("https://idp.example.com", "http://[::1]:8080"))
    cfg(BASE.replace("https://idp.example.com", "http://idp.internal") + "allow_insecure_http = true\n")


def test_inline_secret_in_a_readable_file_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text(BASE.replace('client_secret_file = "/etc/tokend/api.secret"', 'client_secret = "x"'))
    path.chmod(0o644)
    (warning,) = load(path, environ={}).warnings
    assert "credentials.api.client_secret" in warning and "others can read" in warning
    path.chmod(0o600)
    assert load(path, environ={}).warnings == ()
    path.chmod(0o644)
    result = run_tokend("check", "-c", path, tmp=tmp_path)  # and the CLI says so
    assert result.returncode == 0 and "inline secret" in result.stderr and '"x"' not in result.stderr


def test_the_cli_exits_78_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text(BASE + '[[credentials.api.sink]]\npath = "/run/a"\nmode = 640\n')
    for command in (["check"], ["fetch"], ["token", "api"]):
        result = run_tokend(*command, "-c", path, tmp=tmp_path)
        assert result.returncode == ExitCode.CONFIG
        assert_one_line_error(result, str(path), "credentials.api.sink[0].mode")


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_tokend("check", "-c", tmp_path / "nope.toml", tmp=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, "nope.toml", "no such file")


def test_the_shipped_example_is_valid() -> None:
    """(That it shows every key, and only keys of the schema: see tests/test_schema.py.)"""
    example = Path(__file__).resolve().parent.parent / "tokend.toml.example"
    config = load(example, environ={})
    assert set(config.credentials) == {"eventbookings", "keycloak"}


def test_the_example_gives_a_group_only_where_the_shipped_unit_needs_no_chown() -> None:
    """Under tokend.service a file in its RuntimeDirectory is born in group tokend, and the
    chown to another group is refused by the unit's system-call filter: "install the example,
    then edit" ended in an error. A group goes with a setgid directory of that group."""
    root = Path(__file__).resolve().parent.parent
    unit = (root / "systemd" / "tokend.service").read_text()
    assert "RuntimeDirectory=tokend\n" in unit and "SystemCallFilter=~@privileged" in unit
    config = load(root / "tokend.toml.example", environ={})
    grouped = [s for c in config.credentials.values() for s in c.sinks if s.group is not None]
    assert grouped
    for sink in grouped:
        assert sink.path.parent != Path("/run/tokend"), f"{sink.path}: group {sink.group} needs a chown"


@pytest.mark.parametrize("target", ["secret", "sink", "config"])
def test_the_metrics_textfile_may_not_sit_on_a_file_tokend_reads_or_writes(
    tmp_path: Path, target: str
) -> None:
    """Pointed at the secret file, it replaced the secret once a second (and the watch then
    refetched, forever)."""
    config = tmp_path / "tokend.toml"
    path = {"secret": tmp_path / "api.secret", "sink": tmp_path / "api.token", "config": config}[target]
    text = (
        f'[tokend]\nmetrics_textfile = "{path}"\n\n[credentials.api]\ntoken_url = "https://idp.example/t"\n'
        f'client_id = "id"\nclient_secret_file = "{tmp_path}/api.secret"\n'
        f'[[credentials.api.sink]]\npath = "{tmp_path}/api.token"\n'
    )
    with pytest.raises(ConfigError, match=r"tokend\.metrics_textfile: .* tokend would overwrite it"):
        parse(text, config, environ={})
