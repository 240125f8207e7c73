"""Shared fixtures: a real token endpoint on 127.0.0.1 and the real ``tokend`` command."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

REPO = Path(__file__).resolve().parent.parent


class Secrets:
    """What must never leave its own place, and what tokend printed, for one test."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.outputs: list[tuple[str, str]] = []

    def add(self, *values: object) -> None:
        self.values.update(v for v in values if isinstance(v, str) and len(v) >= 5)

    def output(self, where: str, text: str) -> None:
        self.outputs.append((where, text))

    def leaks(self) -> list[tuple[str, str]]:
        return [(where, value) for where, text in self.outputs for value in self.values if value in text]


SECRETS = Secrets()


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


@dataclass
class Seen:
    """One request as the identity provider received it."""

    path: str
    headers: Mapping[str, str]
    content_type: str
    raw: bytes
    params: dict[str, str]
    at: float = 0.0  # when it arrived (time.time())

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
        return unquote_plus(user), unquote_plus(password)


@dataclass
class TokenEndpoint:
    """A loopback IdP: answers scripted responses first, then issues ``tok-N`` tokens."""

    server: HTTPServer
    expires_in: int | None = 3600
    refresh_tokens: bool = False
    seen: list[Seen] = field(default_factory=list)
    script: list[Callable[[Seen], Response]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued_at: dict[str, float] = field(default_factory=dict)  # token -> when it was issued
    fault: Callable[[Seen], Response] | None = None  # answers every request while set

    def expires_at(self, token: str) -> float:
        """When ``token`` runs out, by the IdP's own clock and lifetime."""
        assert self.expires_in is not None
        return self.issued_at[token] + self.expires_in

    @property
    def url(self) -> str:
        return self.server.url_for("/connect/token")

    def issued(self, n: int) -> str:
        return f"tok-{n}"

    def then(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Queue one canned answer for the next request."""
        payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        if isinstance(body, dict):
            SECRETS.add(body.get("access_token"), body.get("refresh_token"))

        def answer(_: Seen) -> Response:
            return Response(
                payload, status=status, headers=dict(headers or {}), content_type="application/json"
            )

        self.script.append(answer)

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            try:
                data = json.loads(raw)
                params = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except ValueError:
                params = {}
        else:
            params = dict(parse_qsl(raw.decode("latin-1")))
        seen = Seen(request.path, dict(request.headers), ctype, raw, params, time.time())
        SECRETS.add(
            params.get("client_secret"), params.get("refresh_token"), (seen.basic_auth or ("", ""))[1]
        )
        with self.lock:
            self.seen.append(seen)
            fault = self.fault
            scripted = self.script.pop(0) if self.script and fault is None else None
            n = next(self.counter) if scripted is None and fault is None else 0
            if n:
                self.issued_at[self.issued(n)] = seen.at
        if fault is not None:
            return fault(seen)
        if scripted is not None:
            return scripted(seen)
        body: dict[str, Any] = {"access_token": self.issued(n), "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if self.refresh_tokens:
            body["refresh_token"] = f"refresh-{n}"
        SECRETS.add(body["access_token"], body.get("refresh_token"))
        return Response(json.dumps(body), content_type="application/json")


def answer(
    status: int,
    body: bytes | str = "",
    headers: Mapping[str, str] | None = None,
    ctype: str = "application/json",
) -> Callable[[Seen], Response]:
    """A fixed answer, for ``TokenEndpoint.fault``: ``idp.fault = answer(503)``."""
    return lambda _: Response(body, status=status, headers=dict(headers or {}), content_type=ctype)


@pytest.fixture
def idp(httpserver: HTTPServer) -> TokenEndpoint:
    endpoint = TokenEndpoint(httpserver)
    httpserver.expect_request("/connect/token", method="POST").respond_with_handler(endpoint.handle)
    return endpoint


def credential_toml(
    idp_url: str, tmp: Path, name: str = "api", extra: str = "", sinks: str | None = None
) -> str:
    """A credential block with a client id, a secret file, and one raw sink."""
    secret = tmp / f"{name}.secret"
    if not secret.exists():
        secret.write_text("s3cret-value\n")
    if sinks is None:
        sinks = f'[[credentials.{name}.sink]]\npath = "{tmp}/out/{name}.token"\n'
    (tmp / "out").mkdir(exist_ok=True)
    return (
        f"[credentials.{name}]\n"
        f'token_url = "{idp_url}"\n'
        'client_id = "client-1"\n'
        f'client_secret_file = "{secret}"\n'
        f"{extra}\n"
        f"{sinks}\n"
    )


def write_config(tmp: Path, *blocks: str, state: bool = True) -> Path:
    head = f'[tokend]\nstate_dir = "{tmp}/state"\n\n' if state else ""
    path = tmp / "tokend.toml"
    path.write_text(head + "\n".join(blocks))
    path.chmod(0o600)
    return path


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment tokend sees: no inherited config, state or journald hints."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "TOKEND_",
                "STATE_DIRECTORY",
                "CONFIGURATION_DIRECTORY",
                "CREDENTIALS_DIRECTORY",
                "JOURNAL_STREAM",
                "XDG_",
            )
        )
    }
    env["HOME"] = str(tmp / "home")
    env.update(extra)
    return env


# Root reads every file whatever its mode; without these capabilities it reads like anyone.
WITHOUT_DAC_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def as_plain_user() -> list[str]:
    """A command prefix under which file permissions apply to us, or skip the test."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return WITHOUT_DAC_OVERRIDE


def run_tokend(
    *args: str | Path,
    tmp: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "tokend", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env=dict(env) if env is not None else clean_env(tmp),
    )
    command = str(args[0]) if args else ""
    SECRETS.output(f"tokend {command} stderr", result.stderr)
    if command not in ("token", "exec"):  # the two whose stdout is the token's own place
        SECRETS.output(f"tokend {command} stdout", result.stdout)
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until ``predicate`` holds: waits for an observable event, never a fixed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class DaemonProcess:
    """A real ``tokend run`` in a subprocess, its stderr kept in a file."""

    def __init__(
        self, config: Path, tmp: Path, env: Mapping[str, str] | None = None, prefix: list[str] | None = None
    ) -> None:
        self.tmp = tmp
        self.log_path = tmp / f"tokend-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "tokend", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=dict(env) if env is not None else clean_env(tmp),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            SECRETS.output("tokend run log", self.log)
            for status in self.tmp.glob("**/status.json"):  # what `tokend status` shows
                SECRETS.output(str(status), status.read_text())


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


def fill(directory: Path) -> Path:
    """Fill a filesystem to the last block; unlink the returned file to free it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
