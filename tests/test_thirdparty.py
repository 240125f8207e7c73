"""tokend against a real third-party OAuth2 server: django-oauth-toolkit on 127.0.0.1.

Our own test IdPs could share our misreadings of RFC 6749; this one was written by others.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.endpoint import SECRETS
from .support.processes import REPO, Start, clean_env, distinct_tokens, run_tokend

pytest.importorskip("oauth2_provider")

CLIENT_ID = "tokend-client"
SECRET = "s3cr:t&+= x"  # every character that RFC 6749 §2.3.1's encoding must get right


@pytest.fixture(scope="module")
def dot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """django-oauth-toolkit issuing 2-second client-credentials tokens."""
    db = tmp_path_factory.mktemp("dot") / "db.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.thirdparty.dot_idp", str(db), CLIENT_ID, SECRET, "2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    yield f"http://127.0.0.1:{line.split()[1]}/o/token/"
    proc.terminate()
    proc.wait(10)


def config(tmp: Path, url: str, *, auth: str, secret: str = SECRET, extra: str = "") -> Path:
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "dot.secret").write_text(secret + "\n")
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.dot]\n'
        f'token_url = "{url}"\nclient_id = "{CLIENT_ID}"\n'
        f'client_secret_file = "{tmp}/dot.secret"\nclient_auth = "{auth}"\n'
        f'scope = "read"\n{extra}\n'
        f'[[credentials.dot.sink]]\npath = "{tmp}/out/dot.header"\nformat = "header"\n'
    )
    return path


@pytest.mark.parametrize("auth", ["basic", "body"])
def test_tokens_come_with_either_client_auth(dot: str, tmp_path: Path, auth: str) -> None:
    path = config(tmp_path, dot, auth=auth)
    result = run_tokend("fetch", "-c", path, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "out" / "dot.header").read_text()
    assert header.startswith("Authorization: Bearer ") and len(header.split()[-1]) >= 20
    online = run_tokend("check", "--online", "-c", path, tmp=tmp_path)
    assert online.returncode == 0 and "online: dot: token sha256:" in online.stdout


def test_a_wrong_secret_is_its_invalid_client(dot: str, tmp_path: Path) -> None:
    result = run_tokend("fetch", "-c", config(tmp_path, dot, auth="basic", secret="nope"), tmp=tmp_path)
    assert result.returncode == 1
    assert "invalid_client (HTTP 401)" in result.stderr and "nope" not in result.stderr


def test_short_lived_tokens_rotate(dot: str, tmp_path: Path, daemons: Start) -> None:
    path = config(tmp_path, dot, auth="basic", extra='min_ttl_margin = "0s"\nrefresh_at = 0.6')
    daemons(path, tmp_path, clean_env(tmp_path))
    tokens = distinct_tokens(tmp_path / "out" / "dot.header", 3, 15, "three tokens from django-oauth-toolkit")
    SECRETS.add(*tokens)  # and none of them may appear in what tokend logged
