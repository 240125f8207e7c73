"""Client ids and secrets: inline, from env files and the environment, files, systemd credentials."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tokend.config import ConfigError, CredentialConfig, parse
from tokend.core.exit_codes import ExitCode
from tokend.io.secret_sources import read_secret

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import as_plain_user, assert_one_line_error, clean_env, run_tokend


def credential(tmp: Path, secret_line: str, extra: str = "") -> CredentialConfig:
    text = (
        f'[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "id"\n'
        f"{secret_line}\n{extra}\n"
    )
    return parse(text, tmp / "tokend.toml", environ={}).credentials["api"]


def secret(cred: CredentialConfig, environ: dict[str, str] | None = None) -> str:
    assert cred.client_secret is not None
    return read_secret(cred, cred.client_secret, environ or {})


def test_inline(tmp_path: Path) -> None:
    assert secret(credential(tmp_path, 'client_secret = "abc"')) == "abc"


def test_env_file_is_read_literally_without_interpolation(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("SECRET='pa${HOME}ss'\nOTHER=1\n")
    cred = credential(tmp_path, 'client_secret_env = "SECRET"', 'env_file = "api.env"')
    assert secret(cred, {"HOME": "/root"}) == "pa${HOME}ss"


def test_env_file_wins_over_the_process_environment(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("SECRET=from-file\n")
    cred = credential(tmp_path, 'client_secret_env = "SECRET"', 'env_file = "api.env"')
    assert secret(cred, {"SECRET": "from-env"}) == "from-file"


def test_process_environment_when_the_env_file_lacks_it(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("OTHER=1\n")
    cred = credential(tmp_path, 'client_secret_env = "SECRET"', 'env_file = "api.env"')
    assert secret(cred, {"SECRET": "from-env"}) == "from-env"


def test_unset_variable_names_the_key_and_where_it_looked(tmp_path: Path) -> None:
    cred = credential(tmp_path, 'client_secret_env = "SECRET"')
    with pytest.raises(ConfigError, match=r"credentials.api.client_secret_env: \$SECRET is not set"):
        secret(cred)


def test_missing_env_file_names_env_file(tmp_path: Path) -> None:
    cred = credential(tmp_path, 'client_secret_env = "SECRET"', 'env_file = "nope.env"')
    with pytest.raises(ConfigError, match=r"credentials.api.env_file: .*nope.env: no such file"):
        secret(cred)


def test_file_loses_its_trailing_newline_only(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(" spaced secret \n")
    assert secret(credential(tmp_path, 'client_secret_file = "s"')) == " spaced secret "


@pytest.mark.parametrize(
    ("content", "fragment"), [("", "is empty"), ("\n", "is empty"), ("a\nb\n", "more than one line")]
)
def test_bad_secret_files(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "s").write_text(content)
    with pytest.raises(ConfigError, match=f"client_secret_file: .*{fragment}"):
        secret(credential(tmp_path, 'client_secret_file = "s"'))


def test_systemd_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "api-secret").write_text("from-systemd")
    cred = credential(tmp_path, 'client_secret_credential = "api-secret"')
    assert secret(cred, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == "from-systemd"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        secret(cred, {})


def test_check_reports_a_missing_secret_file_with_exit_78(tmp_path: Path) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(
        '[credentials.api]\ntoken_url = "https://idp.example.com/t"\n'
        'client_id = "id"\nclient_secret_file = "missing.secret"\n'
    )
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(
        result, str(config), "credentials.api.client_secret_file", "missing.secret: no such file"
    )


def test_check_reports_an_unreadable_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "api.secret"
    secret_file.write_text("s3cret\n")
    secret_file.chmod(0o000)
    config = tmp_path / "tokend.toml"
    config.write_text(
        f'[tokend]\nstate_dir = "{tmp_path}/state"\n[credentials.api]\n'
        'token_url = "https://idp.example.com/t"\nclient_id = "id"\n'
        f'client_secret_file = "{secret_file}"\n'
    )
    result = run_tokend("check", "-c", config, tmp=tmp_path, prefix=as_plain_user())
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, "credentials.api.client_secret_file", "Permission denied")
    assert "s3cret" not in result.stderr + result.stdout


# ---------------------------------------------------- secret files that are not plain files, byte-order marks


def check_within(config: Path, tmp: Path, seconds: float = 8) -> subprocess.CompletedProcess[str]:
    """``tokend check``, failing the test (not hanging it) if it does not finish in time."""
    try:
        return run_tokend("check", "-c", config, tmp=tmp, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tokend check still running after {seconds}s: blocked on a read?")


def check_config(tmp: Path, lines: str) -> Path:
    config = tmp / "tokend.toml"
    config.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n[credentials.api]\n'
        f'token_url = "https://idp.example.com/t"\nclient_id = "id"\n{lines}\n'
    )
    config.chmod(0o600)
    return config


@pytest.mark.parametrize(
    ("key", "lines"),
    [
        ("client_secret_file", 'client_secret_file = "api.secret"'),
        ("env_file", 'client_secret_env = "API_SECRET"\nenv_file = "api.secret"'),
    ],
)
def test_check_refuses_a_fifo_as_secret_source_at_once_in_one_line(
    tmp_path: Path, key: str, lines: str
) -> None:
    os.mkfifo(tmp_path / "api.secret")  # nobody will ever write to it: a read would block
    started = time.monotonic()
    result = check_within(check_config(tmp_path, lines), tmp_path)
    assert time.monotonic() - started < 5
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, f"credentials.api.{key}", "api.secret", "not a regular file (a FIFO)")


def test_a_byte_order_mark_is_not_sent_as_part_of_the_secret(tmp_path: Path, idp: TokenEndpoint) -> None:
    (tmp_path / "api.secret").write_text("\ufeffs3cret-value\r\n", encoding="utf-8")  # Notepad's
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    (seen,) = idp.seen
    sent = seen.basic_auth[1] if seen.basic_auth else seen.params["client_secret"]
    assert sent == "s3cret-value"
    warnings = [line for line in result.stderr.splitlines() if "byte-order mark" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "api.secret" in warnings[0], result.stderr


def test_a_pasted_secret_in_place_of_a_variable_name_is_not_echoed(tmp_path: Path) -> None:
    pasted = "Zq8 pasted secret xK2/+="
    SECRETS.add(pasted, "Zq8 pasted")
    result = check_within(check_config(tmp_path, f'client_secret_env = "{pasted}"'), tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, "credentials.api.client_secret_env", "is not an environment variable name")
    assert "Zq8" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("xK9pQ2vLm7Rt", False),  # a valid name, but what it looks like is a pasted secret
        ("api_secret_tokend", False),
        ("API_SECRET", True),  # conventional: naming it is what helps the operator
    ],
)
def test_an_unset_variable_is_named_only_when_it_looks_like_a_conventional_name(
    tmp_path: Path, name: str, shown: bool
) -> None:
    if not shown:
        SECRETS.add(name)  # the hygiene check then also fails the test if it shows up
    env = clean_env(tmp_path)
    env.pop(name, None)
    config = check_config(tmp_path, f'client_secret_env = "{name}"')
    result = run_tokend("check", "-c", config, tmp=tmp_path, env=env, timeout=10)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result, "credentials.api.client_secret_env", "is not set in the environment")
    assert (f"${name} is not set" in result.stderr) is shown
    assert (name in result.stderr + result.stdout) is shown
