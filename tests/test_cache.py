"""The token cache: private, atomic, keyed by what makes tokens interchangeable."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from werkzeug import Response

from tokend.config import load, parse
from tokend.core.tokens import Token
from tokend.io.cache import CacheEntry, TokenCache, cache_key

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, Seen, TokenEndpoint
from .support.processes import DaemonProcess, clean_env, run_tokend, wait_for

CRED = parse(
    '[credentials.api]\ntoken_url = "https://i/t"\nclient_id = "id"\nclient_secret = "s"\n',
    Path("/t.toml"),
    environ={},
).credentials["api"]


def test_round_trip_is_private(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "state")
    entry = CacheEntry(Token("abc", 200.0, 100.0, refresh_token="r"), "json")
    cache.save("k", entry, cred=CRED, client_id="id")
    assert cache.load("k") == entry
    assert os.stat(cache.path("k")).st_mode & 0o777 == 0o600
    assert os.stat(cache.directory).st_mode & 0o777 == 0o700


def test_a_corrupt_entry_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.directory.mkdir()
    cache.path("k").write_text("{not json")
    assert cache.load("k") is None
    assert cache.load("absent") is None


def test_key_follows_endpoint_client_scope_and_params_not_the_name_or_secret() -> None:
    key = cache_key(CRED, "id")
    assert cache_key(dataclasses.replace(CRED, name="renamed"), "id") == key
    assert cache_key(dataclasses.replace(CRED, client_secret=CRED.client_id), "id") == key
    assert cache_key(CRED, "other-id") != key
    assert cache_key(dataclasses.replace(CRED, token_url="https://j/t"), "id") != key
    assert cache_key(dataclasses.replace(CRED, scope=("a",)), "id") != key
    assert cache_key(dataclasses.replace(CRED, extra_params=(("audience", "x"),)), "id") != key


# ---------------------------------------------------- cache keys that stay valid, a state dir created private

# cache_key(CRED, "id") as computed before default_expires_in counted (commit 0fa421f).
KEY_BEFORE_DEFAULT_EXPIRES_IN = "7faf294f84284a01f1fa63ae8316a4fd"


def test_key_for_the_default_expires_in_is_unchanged_so_existing_caches_stay_valid() -> None:
    assert cache_key(CRED, "id") == KEY_BEFORE_DEFAULT_EXPIRES_IN
    assert (
        cache_key(dataclasses.replace(CRED, default_expires_in=3600), "id") == KEY_BEFORE_DEFAULT_EXPIRES_IN
    )


def test_key_changes_when_default_expires_in_changes() -> None:
    """A token cached with a 1 h guessed lifetime must not be reused once it is set to 60 s."""
    key = cache_key(CRED, "id")
    short = cache_key(dataclasses.replace(CRED, default_expires_in=60.0), "id")
    longer = cache_key(dataclasses.replace(CRED, default_expires_in=7200.0), "id")
    assert len({key, short, longer}) == 3


def test_fetch_creates_a_missing_state_dir_0700_under_umask_022(tmp_path: Path, idp: TokenEndpoint) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    state = tmp_path / "state"
    assert not state.exists()
    old = os.umask(0o022)  # what the child inherits: the common default
    try:
        result = run_tokend("fetch", "-c", config, tmp=tmp_path, timeout=20)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert len(list((state / "tokens").glob("*.json"))) == 1  # the cache was written
    assert state.stat().st_mode & 0o7777 == 0o700
    assert (state / "tokens").stat().st_mode & 0o7777 == 0o700


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from tokend.io.files import temp_name
tmp = temp_name(Path(sys.argv[1]))
with open(tmp, "w") as half:
    half.write('{"version": 1, "tok')
print(tmp, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def temp_of_a_killed_writer(target: Path) -> Path:
    """The temp file a writer of ``target`` leaves when killed with -9 mid-write."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temp = Path(proc.stdout.strip())
    assert temp.exists() and temp.parent == target.parent
    assert temp.name.startswith(f".{target.name}.tokend-") and temp.name.endswith(".tmp")
    return temp


def key_of(config: Path) -> str:
    return cache_key(load(config, environ={}).credentials["api"], "client-1")


def test_fetch_sweeps_the_temp_a_killed_writer_left_in_the_token_cache(
    tmp_path: Path, idp: TokenEndpoint
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    cache = tmp_path / "state" / "tokens" / f"{key_of(config)}.json"
    leftover = temp_of_a_killed_writer(cache)
    result = run_tokend("fetch", "-c", config, tmp=tmp_path, timeout=20)
    assert result.returncode == 0, result.stderr
    assert cache.exists()
    assert not leftover.exists()
    assert sorted(p.name for p in cache.parent.iterdir() if p.suffix == ".tmp") == []


def test_the_daemon_sweeps_temps_killed_writers_left_in_the_state_dir_and_the_cache(
    tmp_path: Path, idp: TokenEndpoint, daemons: Callable[..., DaemonProcess]
) -> None:
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    state = tmp_path / "state"
    in_state = temp_of_a_killed_writer(state / "status.json")
    in_cache = temp_of_a_killed_writer(state / "tokens" / f"{key_of(config)}.json")
    daemon = daemons(config, tmp_path)

    def status_has_a_token() -> bool:
        try:
            creds = json.loads((state / "status.json").read_text())["credentials"]
        except (OSError, ValueError):
            return False
        return bool(creds.get("api", {}).get("token_fingerprint"))

    wait_for(status_has_a_token, 15, "a status with the token")
    assert not in_state.exists(), daemon.log
    assert not in_cache.exists(), daemon.log


def test_two_fetches_started_at_once_make_one_token_request(tmp_path: Path, idp: TokenEndpoint) -> None:
    """The identity's lock: the second finds the token the first got, instead of asking too."""

    def slowly(_: Seen) -> Response:
        time.sleep(0.5)
        return Response(
            json.dumps({"access_token": "slow-tok-1", "token_type": "bearer", "expires_in": 3600}),
            content_type="application/json",
        )

    SECRETS.add("slow-tok-1")
    idp.fault = slowly
    config = write_config(tmp_path, credential_toml(idp.url, tmp_path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tokend", "fetch", "-c", str(config)],
            cwd=tmp_path,
            env=clean_env(tmp_path),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=30) for proc in procs]
    for (out, err), proc in zip(outputs, procs, strict=True):
        SECRETS.output("tokend fetch stdout", out)
        SECRETS.output("tokend fetch stderr", err)
        assert proc.returncode == 0, err
    assert len(idp.seen) == 1, [s.at for s in idp.seen]
    hows = sorted(
        "new token"
        if "fetch ok: new token" in err
        else "cached token"
        if "fetch ok: cached token" in err
        else err
        for _, err in outputs
    )
    assert hows == ["cached token", "new token"]
    assert (tmp_path / "out" / "api.token").read_text() == "slow-tok-1\n"


# ---------------------------------------------------- the certificate in the key; entries that cannot be read


def test_the_client_certificate_joins_the_key_by_its_thumbprint(tmp_path: Path) -> None:
    """Two credentials for one client with different certificates never share a token, and
    a certificate replaced on disk (same path) is a new identity: the token bound to the old
    one is not served for it. Without a certificate the key is the one it always was."""
    from tokend.config import ConfigError
    from tokend.io.assertion import certificate_thumbprint

    from .thirdparty.tls_front import Pki

    pki = Pki(tmp_path)
    (cert_a, key_a), (cert_b, key_b) = pki.issue("svc", "a"), pki.issue("svc", "b")
    SECRETS.add(key_a.read_text(), key_b.read_text())
    with_a = dataclasses.replace(CRED, tls_cert_file=cert_a, tls_key_file=key_a)
    with_b = dataclasses.replace(CRED, tls_cert_file=cert_b, tls_key_file=key_b)
    key_of_a = cache_key(with_a, "id")
    assert len({cache_key(CRED, "id"), key_of_a, cache_key(with_b, "id")}) == 3
    assert cache_key(CRED, "id") == KEY_BEFORE_DEFAULT_EXPIRES_IN
    assert len(certificate_thumbprint(with_a)) == 64

    cert_a.write_bytes(cert_b.read_bytes())  # replaced in place
    assert cache_key(with_a, "id") == cache_key(with_b, "id") != key_of_a

    cert_a.unlink()
    with pytest.raises(ConfigError, match="tls_cert_file") as raised:
        cache_key(with_a, "id")
    assert str(cert_a) in str(raised.value)


def test_an_entry_nested_too_deep_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.directory.mkdir()
    cache.path("k").write_bytes(b"[" * 200_000)
    assert cache.load("k") is None
