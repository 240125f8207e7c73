"""DPoP end to end: a real ``tokend run`` asks panva's oidc-provider (DPoP on, server nonces
required) for sender-constrained tokens, and its proxy reaches a resource server that checks
every proof as RFC 9449 §7 says and learns each token's key by introspection.

What a user of DPoP relies on: the token is bound to tokend's key (``cnf.jkt`` is the key's
RFC 7638 thumbprint), both servers' nonces cost one retry each and no more, every request
through the proxy carries a fresh proof, rotations keep working, the token alone is useless,
and neither the key nor a token nor a proof reaches a log.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tokend.io.dpop import read_key

from .support.dpop_resource import dpop_resource
from .support.endpoint import SECRETS
from .support.processes import (
    DaemonProcess,
    Start,
    clean_env,
    run_tokend,
    started_server,
    stop_server,
    wait_for,
)
from .test_interop import NODE_DIR, install_node_servers

CLIENT = ("dpop-client", "dpop-client-secret-0123456789")
LIFETIME = 6  # seconds: a rotation every 3 s at refresh_at = 0.5


@dataclass
class Idp:
    base: str
    proc: subprocess.Popen[str]

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"

    def log(self) -> list[dict[str, object]]:
        lines = requests.get(f"{self.base}/test/log", timeout=5).text.splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    if not (NODE_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        failure = install_node_servers()
        if failure:
            pytest.skip(f"oidc-provider not installed, and `npm ci` failed: {failure}")
    errors = tmp_path_factory.mktemp("oidc-dpop") / "stderr.log"
    proc, port = started_server(["node", str(NODE_DIR / "oidc_dpop.mjs"), *CLIENT, str(LIFETIME)], errors)
    SECRETS.add(CLIENT[1])
    try:
        yield Idp(f"http://127.0.0.1:{port}", proc)
    finally:
        stop_server(proc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dpop_config(tmp: Path, idp: Idp, upstream: str, port: int, extra: str = "") -> Path:
    secret = tmp / "client.secret"
    secret.write_text(CLIENT[1] + "\n")
    secret.chmod(0o600)
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n'
        "[credentials.api]\n"
        f'token_url = "{idp.token_url}"\n'
        f'client_id = "{CLIENT[0]}"\n'
        f'client_secret_file = "{secret}"\n'
        'client_auth = "basic"\n'
        'scope = "read"\n'
        "refresh_at = 0.5\n"
        'min_ttl_margin = "1s"\n'
        "dpop = true\n"
        f"{extra}"
        "[[credentials.api.proxy]]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'upstream = "{upstream}"\n'
    )
    path.chmod(0o600)
    return path


def through(port: int, path: str = "/data") -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def test_a_dpop_token_is_bound_to_tokends_key_and_every_request_through_the_proxy_carries_a_fresh_proof(
    tmp_path: Path, idp: Idp, daemons: Start
) -> None:
    introspection = f"{idp.base}/token/introspection"
    with dpop_resource(introspection, CLIENT) as resource:
        port = free_port()
        daemon: DaemonProcess = daemons(dpop_config(tmp_path, idp, resource.url, port), tmp_path)

        def answered() -> bool:
            try:
                return through(port).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answered, 20, "a request through the proxy, accepted by the resource server")
        # The key tokend made: private to it, and the one the token is bound to.
        key_path = tmp_path / "state" / "dpop" / "api.pem"
        mode = stat.S_IMODE(os.stat(key_path).st_mode)
        assert mode == 0o600, oct(mode)
        key = read_key(key_path)
        token = resource.seen_tokens[-1]
        SECRETS.add(token)
        bound = requests.post(introspection, auth=CLIENT, data={"token": token}, timeout=5).json()
        assert bound["token_type"] == "DPoP" and bound["cnf"]["jkt"] == key.thumbprint
        # The IdP's nonce cost one refused request, then every request carried a proof.
        log = idp.log()
        assert all(entry["dpop"] for entry in log), log
        assert [e["error"] for e in log if e["status"] != 200][:1] == ["use_dpop_nonce"], log
        # The resource server's first nonce cost one replay; ten more requests, ten proofs,
        # each with a new jti, none refused.
        refusals_before = len(resource.refusals())
        assert refusals_before == 1 and resource.refusals() == ["nonce"], resource.refusals()
        for _ in range(10):
            assert through(port).status_code == 200
        assert len(resource.refusals()) == refusals_before
        # A rotated nonce: one replay through the proxy, the caller sees only the 200.
        resource.rotate_nonce()
        assert through(port).status_code == 200
        assert resource.refusals()[-1] == "nonce" and len(resource.refusals()) == refusals_before + 1
        # Rotations: new tokens, each bound to the same key, the proxy on each.
        first = set(resource.seen_tokens)
        deadline = time.monotonic() + 3 * LIFETIME
        while time.monotonic() < deadline and set(resource.seen_tokens) <= first:
            assert through(port).status_code == 200
            time.sleep(0.2)
        assert set(resource.seen_tokens) - first, "no rotated token reached the resource server"
        # The token alone, without a proof, is refused by the resource server; so is a
        # proof the proxy sent, replayed with the token it was made for.
        bare = requests.get(f"{resource.url}/data", headers={"Authorization": f"DPoP {token}"}, timeout=5)
        assert bare.status_code == 401 and resource.refusals()[-1] == "0 DPoP headers"
        assert through(port).status_code == 200
        proof, current = resource.last_proof, resource.seen_tokens[-1]
        SECRETS.add(proof)
        replayed = requests.get(
            f"{resource.url}/data", headers={"Authorization": f"DPoP {current}", "DPoP": proof}, timeout=5
        )
        assert replayed.status_code == 401 and resource.refusals()[-1] == "jti replayed"
        # `tokend status` names the key the token is bound to by its thumbprint, never the key.
        config = tmp_path / "tokend.toml"
        shown = run_tokend("status", "-c", config, tmp=tmp_path)
        assert f"bound to DPoP key {key.thumbprint}" in shown.stdout, shown.stdout + shown.stderr
        as_json = json.loads(run_tokend("status", "--json", "-c", config, tmp=tmp_path).stdout)
        assert as_json["credentials"]["api"]["dpop_key"] == key.thumbprint
        assert daemon.stop() == 0
        log_text = daemon.log
        pem = key_path.read_text()
        for secret in [*resource.seen_tokens, pem.strip().splitlines()[1]]:
            assert secret not in log_text
        assert "Traceback" not in log_text


def test_a_dpop_credential_with_a_file_sink_is_refused_with_one_line(tmp_path: Path, idp: Idp) -> None:
    config = dpop_config(tmp_path, idp, "http://127.0.0.1:9", free_port())
    sink = f'[[credentials.api.sink]]\npath = "{tmp_path}/api.token"\n\n'
    text = config.read_text().replace("[[credentials.api.proxy]]", sink + "[[credentials.api.proxy]]")
    config.write_text(text)
    result = run_tokend("check", "-c", config, tmp=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "credentials.api" in lines[0] and "dpop" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_tokend_token_and_exec_refuse_to_hand_out_a_dpop_token(tmp_path: Path, idp: Idp) -> None:
    """A DPoP token is useless without the key and a proof: ``tokend token`` says so instead
    of printing one that a caller would send as a Bearer token."""
    config = dpop_config(tmp_path, idp, "http://127.0.0.1:9", free_port())
    fetched = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    online = run_tokend("check", "--online", "-c", config, tmp=tmp_path)
    thumbprint = read_key(tmp_path / "state" / "dpop" / "api.pem").thumbprint
    assert online.returncode == 0 and "DPoP, valid 6s" in online.stdout, online.stdout + online.stderr
    assert f"bound to DPoP key {thumbprint}" in online.stdout
    result = subprocess.run(
        [sys.executable, "-m", "tokend", "token", "api", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(tmp_path),
        timeout=30,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert "DPoP" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    marker = tmp_path / "ran"
    exec_result = run_tokend("exec", "api", "-c", config, "--", "touch", marker, tmp=tmp_path)
    assert exec_result.returncode != 0 and not marker.exists()
    assert "DPoP" in exec_result.stderr and len(exec_result.stderr.strip().splitlines()) == 1


def test_the_endpoint_serves_a_dpop_token_only_to_a_credential_that_says_endpoint_dpop(
    tmp_path: Path, idp: Idp, daemons: Start
) -> None:
    sock = tmp_path / "run" / "tokend.sock"
    sock.parent.mkdir(mode=0o755)
    config = dpop_config(tmp_path, idp, "http://127.0.0.1:9", free_port())
    text = config.read_text()
    served = text.split("[credentials.api]\n", 1)[1].split("[[credentials.api.proxy]]")[0]
    config.write_text(
        text.replace("[credentials.api]\n", f'[endpoint]\nlisten = "unix:{sock}"\n\n[credentials.api]\n', 1)
        + f"\n[credentials.served]\n{served}endpoint_dpop = true\n"
    )

    def get(name: str) -> tuple[str, str]:
        result = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                str(sock),
                f"http://t/v1/token/{name}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        body, _, code = result.stdout.rpartition("\n")
        return code, body

    daemon = daemons(config, tmp_path)
    wait_for(lambda: get("served")[0] == "200", 20, "the served DPoP credential on the endpoint")
    answer = json.loads(get("served")[1])
    SECRETS.add(answer["access_token"])
    assert answer["token_type"] == "DPoP"
    code, body = get("api")  # a DPoP credential that did not ask: as if it did not exist
    assert code == "404" and body == get("nosuch")[1]
    assert daemon.stop() == 0
