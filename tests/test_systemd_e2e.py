"""The shipped unit under a real systemd, booted in a systemd-nspawn container.

The container shares the host's loopback, so tokend inside reaches an identity provider
this test runs on 127.0.0.1. Its root comes from ``tests/systemd/prepare-rootfs.sh``
(``.ci/run`` prepares and caches it); without it, or without root, these tests skip.
The only change to the shipped unit is a drop-in that points ExecStart= at the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.devtools.idp import IdentityProvider

from .support.processes import REPO, wait_for

ROOT = Path(os.environ.get("TOKEND_NSPAWN_ROOT", "/var/cache/tokend-nspawn/bookworm"))
SECRET = "e2e-secret-value"

# .ci/run prepares the root and sets TOKEND_REQUIRE_NSPAWN=1: there, a missing piece fails
# the run instead of skipping the proof quietly.
pytestmark = pytest.mark.skipif(
    os.environ.get("TOKEND_REQUIRE_NSPAWN") != "1"
    and (
        os.geteuid() != 0 or shutil.which("systemd-nspawn") is None or not (ROOT / ".tokend-ready").exists()
    ),
    reason="needs root, systemd-nspawn and a root from tests/systemd/prepare-rootfs.sh",
)


class Container:
    def __init__(self, root: Path, log: Path, binds: dict[Path, str]) -> None:
        self.log_file = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(root),
                "--volatile=overlay",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--machine=tokend-e2e",
                *(f"--bind-ro={host}:{inside}" for host, inside in binds.items()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = 0
        wait_for(self._find_init, 30, "the container's init")
        wait_for(
            lambda: (
                self.run("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded")
            ),
            90,
            "systemd to finish booting",
        )

    def _find_init(self) -> bool:
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}")
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text()
        except OSError:
            return False
        for child in children.split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                self.pid = int(child)
                return True
        return False

    def run(
        self, command: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def path(self, inside: str) -> Path:
        return Path(f"/proc/{self.pid}/root{inside}")

    def stop(self) -> None:
        """Tear the container down by its pid: poweroff, then kill what is left."""
        if self.nspawn.poll() is None and self.pid:
            os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: poweroff
        try:
            self.nspawn.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait()
        self.log_file.close()


def config(idp: IdentityProvider, *, extra: str = "") -> str:
    return f"""
[credentials.api]
token_url = "{idp.url}"
client_id = "e2e"
client_secret_file = "api.secret"
min_ttl_margin = "0s"
refresh_at = 0.6

[[credentials.api.sink]]
path = "/run/tokend/api.token"

[[credentials.api.sink]]
path = "/run/tokend/api.header"
format = "header"
mode = "0640"
group = "tokend"

# The README's recipe for a consuming service's group: a setgid directory from tmpfiles.d.
[[credentials.api.sink]]
path = "/run/tokend-consumers/api.env"
format = "env"
mode = "0640"
group = "consumers"
{extra}"""


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider({"e2e": SECRET, "e2e-2": SECRET}, lifetime=3) as provider:
        yield provider


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider) -> Iterator[Container]:
    tmp = tmp_path_factory.mktemp("nspawn")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    container = Container(ROOT, tmp / "console.log", {wheels: "/wheels", REPO / "systemd": "/src/systemd"})
    try:
        container.run(
            "useradd --system --no-create-home --shell /usr/sbin/nologin tokend && "
            "groupadd --system consumers"
        )
        container.path("/etc/tmpfiles.d/tokend-consumers.conf").write_text(
            "d /run/tokend-consumers 2750 tokend consumers -\n"
        )
        container.run("systemd-tmpfiles --create /etc/tmpfiles.d/tokend-consumers.conf")
        container.run(
            "python3 -m venv /opt/tokend && "
            "/opt/tokend/bin/pip install -q --no-index --find-links /wheels tokend",
            timeout=300,
        )
        container.run("install -d -m 0750 -g tokend /etc/tokend")
        container.path("/etc/tokend/tokend.toml").write_text(config(idp))
        container.path("/etc/tokend/api.secret").write_text(SECRET + "\n")
        container.run(
            "chgrp tokend /etc/tokend/api.secret /etc/tokend/tokend.toml && "
            "chmod 0640 /etc/tokend/api.secret /etc/tokend/tokend.toml"
        )
        container.run(
            "cp /src/systemd/tokend.service /etc/systemd/system/ && "
            "mkdir -p /etc/systemd/system/tokend.service.d"
        )
        container.path("/etc/systemd/system/tokend.service.d/paths.conf").write_text(
            "[Service]\nExecStart=\nExecStart=/opt/tokend/bin/tokend run\n"
            "ReadWritePaths=/run/tokend-consumers\n"
        )
        container.run("systemctl daemon-reload")
        yield container
    finally:
        container.stop()


def test_start_returns_once_ready_and_the_unit_is_active(box: Container) -> None:
    box.run("systemctl start tokend", timeout=60)  # Type=notify: returns after READY=1
    assert box.run("systemctl is-active tokend").stdout.strip() == "active"
    # READY came after the first token was written, so it is there now.
    assert box.path("/run/tokend/api.token").read_text().startswith("demo-")
    status = box.run("systemctl show tokend -p StatusText --value").stdout
    assert "1 credential(s): 1 ok" in status, box.run("journalctl -u tokend --no-pager").stdout


def test_tokens_rotate_under_the_full_hardening(box: Container, idp: IdentityProvider) -> None:
    shown = box.run(
        "systemctl show tokend -p User -p ProtectSystem -p NoNewPrivileges "
        "-p CapabilityBoundingSet -p PrivateMounts"
    ).stdout
    assert "User=tokend" in shown and "ProtectSystem=strict" in shown
    assert "NoNewPrivileges=yes" in shown and "CapabilityBoundingSet=\n" in shown + "\n"
    pid = box.run("systemctl show tokend -p MainPID --value").stdout.strip()
    assert box.run(f"ps -o user= -p {pid}").stdout.strip() == "tokend"

    sink = box.path("/run/tokend/api.token")
    seen = {sink.read_text()}

    def rotated_twice() -> bool:
        seen.add(sink.read_text())
        return len(seen) >= 3

    wait_for(rotated_twice, 20, "two rotations")
    header = box.path("/run/tokend/api.header")
    st = header.stat()
    assert st.st_mode & 0o777 == 0o640
    # The unit's seccomp filter refuses every chown call: a sink whose group is already
    # right must not make one (it would fail with EPERM and the credential report failing).
    assert box.run("stat -c %G /run/tokend/api.header").stdout.strip() == "tokend"
    # In the setgid directory the file is born in the consumers' group: readable by them,
    # with no chown call and so no exception to the unit's seccomp filter.
    assert box.run("stat -c %G:%a /run/tokend-consumers/api.env").stdout.strip() == "consumers:640"
    assert box.run(
        "setpriv --reuid=nobody --regid=consumers --clear-groups cat /run/tokend-consumers/api.env"
    ).stdout.startswith("API_ACCESS_TOKEN='demo-")
    assert header.read_text().startswith("Authorization: Bearer demo-")
    assert box.run("stat -c %a /run/tokend").stdout.strip() == "755"


def test_reload_applies_an_edited_config(box: Container, idp: IdentityProvider) -> None:
    box.path("/etc/tokend/tokend.toml").write_text(
        config(
            idp,
            extra=f"""
[credentials.second]
token_url = "{idp.url}"
client_id = "e2e-2"
client_secret_file = "api.secret"
[[credentials.second.sink]]
path = "/run/tokend/second.token"

[credentials.wrong]
token_url = "{idp.url}"
client_id = "e2e-2"
client_secret = "not-the-secret"
scope = "other"
""",
        )
    )
    box.run("systemctl reload tokend")
    wait_for(lambda: box.path("/run/tokend/second.token").exists(), 20, "the added credential's sink")
    assert box.run("systemctl is-active tokend").stdout.strip() == "active"


def journal(box: Container) -> list[dict[str, str]]:
    out = box.run("journalctl -u tokend -o json --no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_journal_carries_priorities_and_no_secrets(box: Container) -> None:
    wait_for(
        lambda: any("wrong: no token" in e.get("MESSAGE", "") for e in journal(box)),
        20,
        "the wrong secret's error in the journal",
    )
    entries = [e for e in journal(box) if e.get("SYSLOG_IDENTIFIER") != "systemd"]
    new_token = next(e for e in entries if "refresh success" in e["MESSAGE"])
    assert new_token["PRIORITY"] == "6"
    assert not new_token["MESSAGE"].startswith(("<", "20"))  # no prefix, no timestamp left
    no_token = next(e for e in entries if e["MESSAGE"].startswith("wrong: no token: invalid_client"))
    assert no_token["PRIORITY"] == "3"
    text = "\n".join(e["MESSAGE"] for e in entries)
    assert SECRET not in text and "not-the-secret" not in text
    assert box.path("/run/tokend/api.token").read_text().strip() not in text


def test_stop_is_clean(box: Container) -> None:
    box.run("systemctl stop tokend", timeout=60)
    assert box.run("systemctl is-active tokend", check=False).stdout.strip() == "inactive"
    shown = box.run("systemctl show tokend -p Result -p ExecMainStatus").stdout
    assert "Result=success" in shown and "ExecMainStatus=0" in shown
    # RuntimeDirectoryPreserve=restart: a plain stop removes /run/tokend.
    assert not box.path("/run/tokend").exists()
    started = time.monotonic()
    box.run("systemctl start tokend", timeout=60)
    assert time.monotonic() - started < 30
    box.run("systemctl stop tokend", timeout=60)
