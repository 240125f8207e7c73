"""tokend/io/private_process.py: tokend's memory and environment closed to other processes,
its own user's included.

The secret variables are out of every child's environment already; what is tested here is
the next read away: ``/proc/<tokend>/environ`` (the environment tokend started with, which
no unsetenv changes), by a process of tokend's own user. As root, both run as a throwaway
user (root may read any process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tokend
from tokend.io.private_process import ProcessEnvironment, hold_secrets

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import clean_env, wait_for

SECRET = "env-secret-0xC0FFEE"
NOBODY = 65534

READ_ENVIRON = """
import sys
try:
    data = open(f"/proc/{sys.argv[1]}/environ", "rb").read()
except PermissionError:
    print("denied")
else:
    print("readable, with the secret" if sys.argv[2].encode() in data else "readable")
"""


@dataclass(frozen=True)
class Side:
    """Who runs tokend and its neighbour: the same user, and what they run with."""

    user: int | None  # None: the test's own user
    python: str
    workdir: Path
    pythonpath: str


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    if os.geteuid() != 0:
        yield Side(None, sys.executable, tmp_path, os.environ.get("PYTHONPATH", ""))
        return
    # root may read any process: both sides run as nobody, with a python nobody can run.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if python is None:
        pytest.skip(f"no system {version} for another user to run tokend with")
    paths = [str(Path(tokend.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]]
    probe = subprocess.run(
        [python, "-c", "import tokend.cli.main, requests, apscheduler, watchdog"],
        env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"},
        user=NOBODY,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("this checkout or its venv cannot be read by another user")
    workdir = Path(tempfile.mkdtemp(prefix="tokend-private-"))
    os.chown(workdir, NOBODY, NOBODY)
    try:
        yield Side(NOBODY, python, workdir, ":".join(paths))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def read_environ_of(side: Side, pid: int) -> str:
    result = subprocess.run(
        [side.python, "-c", READ_ENVIRON, str(pid), SECRET],
        user=side.user,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_the_daemons_environment_is_closed_to_a_process_of_its_own_user(
    idp: TokenEndpoint, side: Side
) -> None:
    SECRETS.add(SECRET)
    tmp = side.workdir
    block = credential_toml(idp.url, tmp).replace(
        f'client_secret_file = "{tmp}/api.secret"', 'client_secret_env = "API_SECRET"'
    )
    config = write_config(tmp, block)
    env = {**clean_env(tmp), "API_SECRET": SECRET, "PYTHONPATH": side.pythonpath}
    if side.user is not None:
        for path in (tmp, *tmp.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
    # The control: any other process of that user, started with the secret, is readable.
    neighbour = subprocess.Popen(["sleep", "60"], env=env, user=side.user)
    daemon = subprocess.Popen(
        [side.python, "-m", "tokend", "run", "-c", str(config)],
        env=env,
        user=side.user,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (tmp / "out" / "api.token").exists(), 20, "the daemon's first token")
        assert idp.seen[0].basic_auth == ("client-1", SECRET)  # it did read the variable
        assert read_environ_of(side, neighbour.pid) == "readable, with the secret"
        assert read_environ_of(side, daemon.pid) == "denied"
    finally:
        for process in (daemon, neighbour):
            process.terminate()
            process.wait(10)


def test_held_variables_leave_the_process_environment_and_still_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a reload needs stays at hand; nothing tokend starts can inherit it."""
    monkeypatch.setenv("TOKEND_TEST_HELD", "v1")
    monkeypatch.setenv("TOKEND_TEST_KEPT", "v2")
    environ = ProcessEnvironment()
    hold_secrets(environ, ["TOKEND_TEST_HELD", "TOKEND_TEST_ABSENT"])
    assert "TOKEND_TEST_HELD" not in os.environ and os.environ["TOKEND_TEST_KEPT"] == "v2"
    assert environ["TOKEND_TEST_HELD"] == "v1" and environ["TOKEND_TEST_KEPT"] == "v2"
    assert "TOKEND_TEST_ABSENT" not in environ and "TOKEND_TEST_HELD" in set(environ)
    hold_secrets({"TOKEND_TEST_KEPT": "x"}, ["TOKEND_TEST_KEPT"])  # not the process's: untouched
    assert os.environ["TOKEND_TEST_KEPT"] == "v2"
    monkeypatch.delenv("TOKEND_TEST_HELD", raising=False)
