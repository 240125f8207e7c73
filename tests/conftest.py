"""The fixtures every test file may use; what they are built from is in tests/support/."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import DaemonProcess


@pytest.fixture(autouse=True)
def no_secret_in_any_output() -> Iterator[None]:
    """Every test is a hygiene check: no client secret the IdP received and no token it
    issued may appear in anything tokend logged, or printed outside `token` and `exec`."""
    SECRETS.values.clear()
    SECRETS.outputs.clear()
    SECRETS.add("s3cret-value")  # credential_toml's secret
    yield
    leaks = SECRETS.leaks()
    assert not leaks, f"secrets or tokens in tokend's output: {leaks[:5]}"


@pytest.fixture
def idp(httpserver: HTTPServer) -> TokenEndpoint:
    endpoint = TokenEndpoint(httpserver)
    httpserver.expect_request("/connect/token", method="POST").respond_with_handler(endpoint.handle)
    return endpoint


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(
        config: Path, tmp: Path, env: Mapping[str, str] | None = None, prefix: list[str] | None = None
    ) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp, env, prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, so ENOSPC is a real kernel answer and not a mock."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tokend-test", str(mnt)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
