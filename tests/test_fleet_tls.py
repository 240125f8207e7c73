"""Fleet mode over TLS (``rediss://``, tokend.io.fleet_store): a real redis-server with TLS on
and a private CA, as a managed Redis is reached; the CA from ``[fleet] ca_bundle``, the
server's name checked, a wrong CA refused with one line, and two daemons sharing a token."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.config import ConfigError, parse

from .support.configs import credential_toml, write_config
from .support.endpoint import TokenEndpoint
from .support.processes import Start, clean_env, run_tokend, wait_for
from .support.redis import REDIS_SERVER, free_port
from .support.sinks import read_token
from .thirdparty.tls_front import Pki


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Pki]]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = Pki(pki_dir)
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)),
            *("--tls-ca-cert-file", str(pki.ca_file), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers() -> bool:
            import redis

            try:
                return bool(
                    redis.Redis.from_url(f"rediss://127.0.0.1:{port}", ssl_ca_certs=str(pki.ca_file)).ping()
                )
            except redis.RedisError:
                return False

        wait_for(answers, 10, "redis-server with TLS")
        yield port, pki
    finally:
        proc.terminate()
        proc.wait(10)


def member(tmp: Path, n: int, idp: TokenEndpoint, port: int, ca: Path) -> Path:
    home = tmp / f"host{n}"
    home.mkdir()
    fleet = f'[fleet]\nredis_url = "rediss://127.0.0.1:{port}/0"\nca_bundle = "{ca}"\nlease = "2s"\n'
    return write_config(home, fleet, credential_toml(idp.url, home))


def test_check_online_reaches_redis_over_tls_and_a_wrong_ca_is_one_line(
    tmp_path: Path, idp: TokenEndpoint, tls_redis: tuple[int, Pki]
) -> None:
    port, pki = tls_redis
    config = member(tmp_path, 0, idp, port, pki.ca_file)
    ok = run_tokend("check", "--online", "-c", config, tmp=tmp_path, env=clean_env(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert f"online: fleet: Redis rediss://127.0.0.1:{port}/0 answers" in ok.stdout
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = Pki(other_dir)  # a CA that did not sign the server's certificate
    wrong = member(tmp_path, 1, idp, port, other.ca_file)
    refused = run_tokend("check", "--online", "-c", wrong, tmp=tmp_path, env=clean_env(tmp_path))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("tokend: fleet:")]
    assert len(lines) == 1 and "certificate verify failed" in lines[0], refused.stderr


def test_two_daemons_share_one_token_over_tls(
    tmp_path: Path, idp: TokenEndpoint, tls_redis: tuple[int, Pki], daemons: Start
) -> None:
    port, pki = tls_redis
    configs = [member(tmp_path, i, idp, port, pki.ca_file) for i in range(2)]
    for config in configs:
        daemons(config, config.parent, env=clean_env(config.parent))
    sinks = [config.parent / "out" / "api.token" for config in configs]
    wait_for(lambda: all(read_token(sink) for sink in sinks), 20, "both hosts' first token")
    wait_for(lambda: read_token(sinks[0]) == read_token(sinks[1]), 10, "one shared token")
    assert len(idp.seen) == 1  # one host asked; the other got the token through Redis


def test_the_tls_keys_go_with_rediss() -> None:
    cred = '[credentials.a]\ntoken_url = "https://i/t"\nclient_id = "c"\nclient_secret = "s"\n'
    for body, message in {
        'redis_url = "redis://r"\nca_bundle = "/ca.pem"': "fleet.ca_bundle: applies only to a rediss://",
        'redis_url = "rediss://r"\ntls_key_file = "/k"': "fleet.tls_key_file: needs tls_cert_file",
    }.items():
        with pytest.raises(ConfigError, match=message):
            parse(f"[fleet]\n{body}\n{cred}", Path("/etc/tokend/tokend.toml"), environ={})
