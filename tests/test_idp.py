"""tokend/devtools/idp.py on its own (``python -m tokend.devtools.idp``): the demo's identity
provider, for trying a config by hand. It must hand out working tokens and print only their
fingerprints."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from tokend.core.tokens import fingerprint

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS
from .support.processes import REPO, clean_env, run_tokend


def test_the_standalone_idp_serves_tokend_and_prints_fingerprints_only(tmp_path: Path) -> None:
    idp = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokend.devtools.idp",
            "--lifetime",
            "30",
            "--client",
            "client-1=s3cret-value",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=clean_env(tmp_path),
    )
    first = line = ""
    try:
        assert idp.stdout is not None
        first = idp.stdout.readline()
        assert first.startswith("token endpoint http://127.0.0.1:"), first
        url = first.split()[2].rstrip(",")
        config = write_config(tmp_path, credential_toml(url, tmp_path))
        fetched = run_tokend("fetch", "-c", config, tmp=tmp_path)
        assert fetched.returncode == 0, fetched.stderr
        token = (tmp_path / "out" / "api.token").read_text().strip()
        SECRETS.add(token)
        line = idp.stdout.readline()
        assert " 200 client-1 client_credentials " in f" {line}" and fingerprint(token) in line, line
        # What a client sends as its id or grant is printed only when it is a known one:
        # a token pasted into the wrong field must not end up on the screen.
        stray = requests.post(url, data={"grant_type": token, "client_id": token}, timeout=10)
        assert stray.status_code == 401
        line += idp.stdout.readline()
        assert "(unknown client) (other grant) -" in line and token not in line, line
    finally:
        idp.send_signal(signal.SIGTERM)
        out, err = idp.communicate(timeout=10)
    SECRETS.output("idp stdout", first + line + out)  # checked for the token by the fixture
    assert idp.returncode == 0, err


def test_a_client_without_a_secret_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokend.devtools.idp", "--client", "nope"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 2 and "--client wants ID=SECRET" in result.stderr


def test_a_port_in_use_is_one_line_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tokend.devtools.idp", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"python -m tokend.devtools.idp: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
