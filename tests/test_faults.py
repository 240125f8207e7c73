"""Breaking things on purpose: kill -9 mid-rotation, readers racing the writer, TLS that
does not verify. Each test states the promise it checks.

The storm tests run a short version by default; ``TOKEND_LONG_STORMS=1`` runs them in full.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from werkzeug import Response

from tokend.devtools.idp import IdentityProvider

from .support.disks import fill
from .support.endpoint import Seen, TokenEndpoint, answer
from .support.processes import REPO, Start, as_plain_user, clean_env, run_tokend, wait_for
from .support.sinks import read_token

LONG = os.environ.get("TOKEND_LONG_STORMS") == "1"
FORMATS = ("raw", "json", "env", "header")


def config_for(
    tmp: Path, url: str, *, extra: str = "", secret: str = "fault-secret", sinks: str | None = None
) -> Path:
    """One credential; by default a sink of every format in ``tmp/out``."""
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "api.secret").write_text(secret + "\n")
    if sinks is None:
        sinks = "".join(
            f'[[credentials.api.sink]]\npath = "{tmp}/out/api.{fmt}"\nformat = "{fmt}"\n' for fmt in FORMATS
        )
    path = tmp / "tokend.toml"
    path.write_text(
        f'[tokend]\nstate_dir = "{tmp}/state"\n\n[credentials.api]\n'
        f'token_url = "{url}"\nclient_id = "fault"\n'
        f'client_secret_file = "{tmp}/api.secret"\n{extra}\n{sinks}'
    )
    return path


@pytest.fixture
def stamped_idp() -> Iterator[IdentityProvider]:
    """1-second tokens that carry their expiry: ``demo-<expiry ms>-<random>``."""
    with IdentityProvider({"fault": "fault-secret"}, lifetime=1, stamp_expiry=True) as idp:
        yield idp


def expiry_ms(token: str) -> int:
    return int(token.split("-")[1])


def sink_token(path: Path) -> str:
    """The token in a sink that must be there, parsed as its readers do."""
    token = read_token(path)
    assert token is not None, f"{path} is missing"
    return token


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_rotation_never_leaves_a_partial_sink(
    stamped_idp: IdentityProvider, tmp_path: Path
) -> None:
    """Killed at any moment, tokend leaves every sink complete and holding a token the IdP
    issued, at most one temp file per directory (the one in flight), and none once a new
    tokend has written there."""
    config = config_for(tmp_path, stamped_idp.url)
    issued = set()
    rng = random.Random(7)
    kills = 40 if LONG else 8
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokend", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(tmp_path),
            cwd=tmp_path,
        )
        wait_for(lambda: (tmp_path / "out" / "api.header").exists(), 10, "a first token")
        time.sleep(rng.uniform(0.05, 1.5))  # somewhere in a rotation storm of 1 s tokens
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        issued |= {e.access_token for e in stamped_idp.events if e.access_token}
        for fmt in FORMATS:
            token = sink_token(tmp_path / "out" / f"api.{fmt}")  # complete, parseable
            assert token in issued
        temps = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
        assert len(temps) <= 1, temps
    # A new tokend sweeps what the dead ones left, at its first write.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokend", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    try:
        before = len(stamped_idp.events)
        wait_for(lambda: len(stamped_idp.events) > before + 1, 10, "a rotation by the new tokend")

        def dead_writers_temps() -> list[Path]:  # the live daemon's own may be mid-write
            out = tmp_path / "out"
            return [p for p in out.iterdir() if p.name.endswith(".tmp") and f"-{proc.pid}-" not in p.name]

        wait_for(lambda: not dead_writers_temps(), 10, "the dead writers' temps swept")
    finally:
        proc.terminate()
        proc.wait(10)


def test_after_kill_9_a_restart_reuses_the_cached_token(tmp_path: Path, daemons: Start) -> None:
    with IdentityProvider({"fault": "fault-secret"}, lifetime=3600) as idp:
        config = config_for(tmp_path, idp.url)
        first = daemons(config, tmp_path)
        wait_for(lambda: (tmp_path / "out" / "api.raw").exists(), 10, "the first token")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        (tmp_path / "out" / "api.raw").unlink()
        second = daemons(config, tmp_path)
        wait_for(lambda: (tmp_path / "out" / "api.raw").exists(), 10, "the sink restored")
        assert len(idp.events) == 1  # from the cache, not from the IdP
        assert second.proc.poll() is None


# --------------------------------------------------------------------------- reader storm


def test_reader_storm_sees_no_partial_and_no_expired_token(
    stamped_idp: IdentityProvider, tmp_path: Path, daemons: Start
) -> None:
    """Readers in other processes, reading every format in a tight loop while 1-second
    tokens rotate, never get a partial file or a token that has expired."""
    config = config_for(tmp_path, stamped_idp.url)
    daemons(config, tmp_path)
    paths = [str(tmp_path / "out" / f"api.{fmt}") for fmt in FORMATS]
    wait_for(lambda: all(Path(p).exists() for p in paths), 10, "every sink")
    seconds = 60 if LONG else 6
    readers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.reader", str(seconds), *paths],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    counts = [json.loads(r.communicate(timeout=seconds + 60)[0]) for r in readers]
    total = {key: sum(c[key] for c in counts) for key in counts[0]}
    rotations = sum(1 for e in stamped_idp.events if e.status == 200)
    print(f"reader storm: {total}, {rotations} rotations in {seconds}s")
    assert total["reads"] > 10_000 and rotations >= seconds
    assert (total["partial"], total["expired"], total["missing"]) == (0, 0, 0), total


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_idp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS token endpoint on 127.0.0.1 with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "idp.pem", tmp_path / "idp.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"access_token": "tls-token", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/token", cert
    server.shutdown()
    server.server_close()


def test_a_self_signed_idp_is_refused_unless_ca_bundle_names_it(
    tls_idp: tuple[str, Path], tmp_path: Path
) -> None:
    url, cert = tls_idp
    config = config_for(tmp_path, url)
    refused = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert refused.returncode == 1
    assert "TLS verification failed" in refused.stderr and "ca_bundle" in refused.stderr
    assert not (tmp_path / "out" / "api.raw").exists()

    config = config_for(tmp_path, url, extra=f'ca_bundle = "{cert}"')
    trusted = run_tokend("fetch", "-c", config, tmp=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "out" / "api.raw").read_text() == "tls-token\n"


# --------------------------------------------------------------------------- disk faults


def test_a_full_disk_and_a_vanished_directory_cost_one_sink_not_the_others(
    stamped_idp: IdentityProvider, tmp_path: Path, small_tmpfs: Path, daemons: Start
) -> None:
    """The faulty sink keeps its last complete token and no temp files; the healthy sink
    keeps rotating; once the fault is cleared, the faulty sink catches up."""
    gone = tmp_path / "gone"
    gone.mkdir()
    path = config_for(
        tmp_path,
        stamped_idp.url,
        sinks=(
            f'[[credentials.api.sink]]\npath = "{small_tmpfs}/api.json"\nformat = "json"\n'
            f'[[credentials.api.sink]]\npath = "{gone}/api.raw"\n'
            f'[[credentials.api.sink]]\npath = "{tmp_path}/healthy.raw"\n'
        ),
    )
    daemon = daemons(path, tmp_path)
    full, healthy = small_tmpfs / "api.json", tmp_path / "healthy.raw"
    wait_for(
        lambda: full.exists() and (gone / "api.raw").exists() and healthy.exists(), 10, "every sink written"
    )
    filler = fill(small_tmpfs)
    shutil.rmtree(gone)
    stuck = sink_token(full)
    before = sink_token(healthy)
    wait_for(
        lambda: (
            sink_token(healthy) != before and "No space left" in daemon.log and "does not exist" in daemon.log
        ),
        10,
        "rotation going on beside both faults",
    )
    assert sink_token(full) == stuck  # still the complete old file...
    assert not [p for p in small_tmpfs.iterdir() if p.name.endswith(".tmp")]  # ...and no debris
    filler.unlink()
    gone.mkdir()
    wait_for(
        lambda: sink_token(full) != stuck and (gone / "api.raw").exists(),
        10,
        "both sinks catching up once the faults are cleared",
    )
    assert daemon.proc.poll() is None


def test_a_read_only_sink_directory_keeps_its_file_and_recovers(
    stamped_idp: IdentityProvider, tmp_path: Path, daemons: Start
) -> None:
    """Permissions refuse the write (root is made to obey them): the old file stays, the
    other sinks rotate, and once the directory is writable again the sink catches up."""
    prefix = as_plain_user()
    locked = tmp_path / "locked"
    locked.mkdir()
    path = config_for(
        tmp_path,
        stamped_idp.url,
        sinks=(
            f'[[credentials.api.sink]]\npath = "{locked}/api.raw"\n'
            f'[[credentials.api.sink]]\npath = "{tmp_path}/healthy.raw"\n'
        ),
    )
    daemon = daemons(path, tmp_path, prefix=prefix)
    wait_for(
        lambda: (locked / "api.raw").exists() and (tmp_path / "healthy.raw").exists(), 10, "the first token"
    )
    locked.chmod(0o555)
    try:
        stuck = sink_token(locked / "api.raw")
        before = sink_token(tmp_path / "healthy.raw")
        wait_for(
            lambda: sink_token(tmp_path / "healthy.raw") != before and "Permission denied" in daemon.log,
            10,
            "rotation beside the locked sink",
        )
        assert sink_token(locked / "api.raw") == stuck
        assert not [p for p in locked.iterdir() if p.name.endswith(".tmp")]
    finally:
        locked.chmod(0o755)
    wait_for(lambda: sink_token(locked / "api.raw") != stuck, 10, "the sink catching up")


# --------------------------------------------------------------------------- every IdP fault


def hang(_: Seen) -> Response:
    time.sleep(1.5)  # past the credential's 1 s timeout
    return Response("{}", content_type="application/json")


RETRYABLE = {
    "500": answer(500),
    "502": answer(502, "<html>bad gateway</html>", ctype="text/html"),
    "503": answer(503),
    "503 Retry-After": answer(503, "", {"Retry-After": "1"}),
    "429": answer(429, "", {"Retry-After": "1"}),
    "temporarily_unavailable": answer(400, '{"error": "temporarily_unavailable"}'),
    "hang past timeout": hang,
}
FATAL = {
    **{
        code: answer(401 if code == "invalid_client" else 400, json.dumps({"error": code}))
        for code in (
            "invalid_client",
            "unauthorized_client",
            "invalid_scope",
            "unsupported_grant_type",
            "invalid_request",
            "invalid_grant",
        )
    },
    "invalid JSON": answer(200, "{not json"),
    "HTML": answer(200, "<html/>", ctype="text/html"),
    "empty body": answer(200, ""),
    "JSON array": answer(200, "[1, 2]"),
    "5 MiB body": answer(200, '{"access_token": "x", "pad": "' + "x" * (5 << 20) + '"}'),
    "no access_token": answer(200, '{"token_type": "bearer"}'),
    "empty access_token": answer(200, '{"access_token": ""}'),
    "newline in token": answer(200, '{"access_token": "a\\nb"}'),
    "quote in token": answer(200, '{"access_token": "a\\"b"}'),
    "space in token": answer(200, '{"access_token": "a b"}'),
    **{
        f"expires_in {v}": answer(200, f'{{"access_token": "abc", "expires_in": {v}}}')
        for v in ("0", "-5", '"soon"', "1000000000000")
    },
}


def status_of(tmp: Path) -> dict[str, Any]:
    try:
        data = json.loads((tmp / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    result: dict[str, Any] = data["credentials"].get("api", {})
    return result


@pytest.mark.parametrize("fault", [*RETRYABLE, *FATAL])
def test_every_idp_fault_keeps_the_last_good_token_and_the_daemon(
    idp: TokenEndpoint, tmp_path: Path, daemons: Start, fault: str
) -> None:
    idp.expires_in = 3
    config = config_for(tmp_path, idp.url, extra='refresh_at = 0.5\nmin_ttl_margin = "0s"\ntimeout = "1s"')
    daemon = daemons(config, tmp_path)
    sinks = [tmp_path / "out" / f"api.{fmt}" for fmt in FORMATS]
    wait_for(lambda: all(p.exists() for p in sinks), 10, "the first token everywhere")
    idp.fault = RETRYABLE.get(fault) or FATAL[fault]
    wait_for(lambda: (status_of(tmp_path).get("failures") or 0) >= 1, 10, "a failed refresh")
    assert daemon.proc.poll() is None
    assert {sink_token(p) for p in sinks} == {"tok-1"}  # every reader still has a valid token
    warning = [line for line in daemon.log.splitlines() if "refresh failed" in line]
    assert warning and "keeping token" in warning[0] and "\n" not in warning[0]
    if fault in RETRYABLE:
        idp.fault = None
        wait_for(lambda: {sink_token(p) for p in sinks} == {"tok-2"}, 10, "recovery")
    else:  # a retry cannot fix it: the next try is at the 5-minute cap, not in a loop
        status = status_of(tmp_path)
        wait = float(status["next_refresh"]) - float(status["last_attempt"])
        assert 295 <= wait <= 305 and status["last_error_retryable"] is False
