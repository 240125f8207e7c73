"""Client ids and secrets: inline, from env files and the environment, files, systemd credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokend.config import EX_CONFIG, ConfigError, CredentialConfig, parse
from tokend.secrets import read_secret

from .conftest import as_plain_user, assert_one_line_error, run_tokend


def credential(tmp: Path, secret_line: str, extra: str = "") -> CredentialConfig:
    text = (f'[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "id"\n'
            f"{secret_line}\n{extra}\n")
    return parse(text, tmp / "tokend.toml", environ={}).credentials["api"]


def secret(cred: CredentialConfig, environ: dict[str, str] | None = None) -> str:
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


@pytest.mark.parametrize(("content", "fragment"), [("", "is empty"), ("\n", "is empty"),
                                                   ("a\nb\n", "more than one line")])
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
    config.write_text('[credentials.api]\ntoken_url = "https://idp.example.com/t"\n'
                      'client_id = "id"\nclient_secret_file = "missing.secret"\n')
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == EX_CONFIG
    assert_one_line_error(result, str(config), "credentials.api.client_secret_file",
                          "missing.secret: no such file")


def test_check_reports_an_unreadable_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "api.secret"
    secret_file.write_text("s3cret\n")
    secret_file.chmod(0o000)
    config = tmp_path / "tokend.toml"
    config.write_text(f'[tokend]\nstate_dir = "{tmp_path}/state"\n[credentials.api]\n'
                      'token_url = "https://idp.example.com/t"\nclient_id = "id"\n'
                      f'client_secret_file = "{secret_file}"\n')
    result = run_tokend("check", "-c", config, tmp=tmp_path, prefix=as_plain_user())
    assert result.returncode == EX_CONFIG
    assert_one_line_error(result, "credentials.api.client_secret_file", "Permission denied")
    assert "s3cret" not in result.stderr + result.stdout
