"""The ``tokend`` command as an operator runs it: real process, real IdP, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tokend.config import EX_CONFIG

from .conftest import (
    TokenEndpoint,
    assert_one_line_error,
    clean_env,
    credential_toml,
    run_tokend,
    write_config,
)

SECRET = "s3cret-value"


def all_sink_formats(tmp: Path, name: str = "api") -> str:
    return "".join(
        f'[[credentials.{name}.sink]]\npath = "{tmp}/out/{name}.{fmt}"\nformat = "{fmt}"\n'
        for fmt in ("raw", "json", "env", "header")
    )


def test_fetch_writes_every_sink_and_a_second_run_reuses_the_cache(idp: TokenEndpoint,
                                                                    tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=all_sink_formats(tmp_path)))
    first = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert (out / "api.raw").read_text() == "tok-1\n"
    assert json.loads((out / "api.json").read_text())["access_token"] == "tok-1"
    assert "API_ACCESS_TOKEN='tok-1'" in (out / "api.env").read_text()
    assert (out / "api.header").read_text() == "Authorization: Bearer tok-1\n"

    (out / "api.raw").unlink()  # a sink that went missing is put back from the cache
    second = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(idp.seen) == 1
    assert (out / "api.raw").read_text() == "tok-1\n"


def test_fetch_force_asks_again(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    run_tokend("fetch", "-c", config, tmp=tmp_path)
    result = run_tokend("fetch", "--force", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(idp.seen) == 2
    assert (tmp_path / "out" / "api.token").read_text() == "tok-2\n"


def test_fetch_only_the_named_credentials(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, "a"),
                          credential_toml(idp.url, tmp_path, "b", extra='scope = "b"'))
    assert run_tokend("fetch", "b", "-c", config, tmp=tmp_path).returncode == 0
    assert [s.params.get("scope") for s in idp.seen] == ["b"]
    assert not (tmp_path / "out" / "a.token").exists()


def test_unknown_credential_name_is_a_usage_error(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("fetch", "nope", "-c", config, tmp=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "no credential named nope", "known: api")


def test_token_prints_only_the_token_and_reuses_the_cache(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    first = run_tokend("token", "api", "-c", config, tmp=tmp_path)
    second = run_tokend("token", "api", "-c", config, tmp=tmp_path)
    assert (first.returncode, first.stdout) == (0, "tok-1\n")
    assert (second.returncode, second.stdout) == (0, "tok-1\n")
    assert len(idp.seen) == 1
    assert not (tmp_path / "out" / "api.token").exists()  # token does not touch the sinks


def test_token_from_cache_imports_no_network_or_scheduler_code(idp: TokenEndpoint,
                                                                tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    probe = ("import sys; from tokend.cli import main; rc = main(['token', 'api', '-c', sys.argv[1]]);"
             "heavy = sorted(m for m in ('requests', 'urllib3', 'apscheduler', 'watchdog', 'dotenv',"
             " 'logging') if m in sys.modules); print(heavy, file=sys.stderr); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True,
                            text=True, env=clean_env(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tok-1\n"
    assert result.stderr.strip() == "[]"


def test_fetch_without_a_token_exits_1_with_one_clear_line(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.then(401, {"error": "invalid_client", "error_description": "unknown client"})
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result, "api: no token: invalid_client (HTTP 401): unknown client")
    assert SECRET not in result.stderr


def test_a_failed_refresh_keeps_the_valid_token_in_the_sinks(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.expires_in = 3
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path,
                                                    extra='refresh_at = 0.5\nmin_ttl_margin = "1s"'))
    assert run_tokend("fetch", "-c", config, tmp=tmp_path).returncode == 0
    time.sleep(1.6)  # past the refresh point (1.5 s), well before expiry (3 s)
    idp.then(503, None, {"Retry-After": "30"})
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "refresh failed" in result.stderr and "keeping token" in result.stderr
    assert (tmp_path / "out" / "api.token").read_text() == "tok-1\n"
    assert len(idp.seen) == 2
    forced = run_tokend("fetch", "--force", "-c", config, tmp=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "out" / "api.token").read_text() == "tok-2\n"


def test_one_broken_credential_does_not_stop_the_others(idp: TokenEndpoint, tmp_path: Path) -> None:
    broken = credential_toml(idp.url, tmp_path, "broken").replace(
        str(tmp_path / "broken.secret"), str(tmp_path / "missing.secret"))
    config = write_config(tmp_path, broken, credential_toml(idp.url, tmp_path, "good"))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == EX_CONFIG
    assert "credentials.broken.client_secret_file" in result.stderr
    assert (tmp_path / "out" / "good.token").read_text() == "tok-1\n"


def test_a_failing_sink_does_not_stop_the_other_sinks(idp: TokenEndpoint, tmp_path: Path) -> None:
    sinks = (f'[[credentials.api.sink]]\npath = "{tmp_path}/nodir/api.token"\n'
             f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.token"\n')
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    result = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert result.returncode == 1
    assert "nodir does not exist" in result.stderr
    assert (tmp_path / "out" / "api.token").read_text() == "tok-1\n"


def test_check_validates_offline_and_online(idp: TokenEndpoint, tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    offline = run_tokend("check", "-c", config, tmp=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("ok: api: ") and idp.seen == []
    online = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert online.returncode == 0, online.stderr
    assert "online: api: token sha256:" in online.stdout and len(idp.seen) == 1
    assert "tok-1" not in online.stdout + online.stderr
    assert not (tmp_path / "out" / "api.token").exists()

    idp.then(401, {"error": "invalid_client"})
    failed = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    assert failed.returncode == 1 and "invalid_client" in failed.stderr


def test_check_lists_every_path_problem(idp: TokenEndpoint, tmp_path: Path) -> None:
    sinks = (f'[[credentials.api.sink]]\npath = "{tmp_path}/nodir/a"\n'
             f'[[credentials.api.sink]]\npath = "{tmp_path}/out/b"\nowner = "no-such-user-tokend"\n')
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks))
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert "credentials.api.sink[0].path" in lines[0] and "does not exist" in lines[0]
    assert "credentials.api.sink[1].owner" in lines[1] and "no such user" in lines[1]


def test_no_secret_or_token_in_any_log(idp: TokenEndpoint, tmp_path: Path) -> None:
    idp.refresh_tokens = True
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=all_sink_formats(tmp_path)))
    outputs = []
    for args in (["fetch"], ["fetch", "--force"], ["check", "--online"], ["token", "api"]):
        result = run_tokend(*args, "-c", config, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stderr)
        if args[0] != "token":
            outputs.append(result.stdout)
    text = "\n".join(outputs)
    assert "sha256:" in text  # tokens are named by fingerprint...
    for leaked in (SECRET, "tok-1", "tok-2", "tok-3", "refresh-1", "refresh-2"):
        assert leaked not in text  # ...and never shown
