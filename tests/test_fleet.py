"""Fleet mode: core/fleet.py's rules on an explicit clock, io/fleet_crypto.py's
sealing, and real `tokend run` daemons sharing one token through a real redis-server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_httpserver import HTTPServer

from tokend.config import ConfigError, CredentialConfig, FleetConfig, load, parse
from tokend.core.fleet import (
    LEASES_DROPPED,
    MAX_BLOB_BYTES,
    NOT_NEWER,
    Fault,
    FleetEvent,
    Role,
    Shared,
    decode,
    encode,
    fault_of,
    follow_deadline,
    follow_until,
    jitter_for,
    judge,
    localize,
    may_follow,
    meaning,
    redis_keys,
)
from tokend.core.health import FleetWait
from tokend.core.results import Origin
from tokend.core.tokens import Token
from tokend.daemon.clock import SystemClock
from tokend.daemon.fleet import Fleet
from tokend.daemon.refresher import Refresher
from tokend.daemon.token_source import ASK, Offer, TokenSource
from tokend.io.cache import TokenCache, cache_key
from tokend.io.fleet_crypto import MAGIC, Undecryptable, key_material, seal, unseal
from tokend.io.fleet_store import DRAIN_MESSAGES, FleetStore, PubSubLost, RedisDown, TooLarge
from tokend.io.token_client import TokenClient

from .support.clock import FakeClock, ManualJobs, runner_on
from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import DaemonProcess, Start, clean_env, run_tokend, wait_for
from .support.redis import RedisServer
from .support.sinks import read_token

NOW = 1_900_000_000.0
ID = "0123456789abcdef0123456789abcdef"


def token(access: str = "tok-a", obtained: float = NOW, life: float = 60.0) -> Token:
    return Token(access, obtained + life, obtained, "Bearer", "api", refresh_token="refresh-x")


# --------------------------------------------------------------------------- the rules (pure)


POLICY = {"refresh_at": 0.8, "min_ttl_margin": 60.0}  # the defaults: a 60 s token is due at 30 s
FOLLOW = {**POLICY, "timeout": 10.0}  # and the request's timeout, for a follower's deadline


def test_a_stored_token_is_used_only_when_for_us_unexpired_fresh_and_newer() -> None:
    mine = token("tok-old", obtained=NOW - 20)
    newer = Shared(ID, token("tok-new", obtained=NOW - 1), "host-a", 59)
    assert judge(newer, identity=ID, ours=mine, now=NOW, **POLICY) is None
    assert judge(newer, identity=ID, ours=None, now=NOW, **POLICY) is None
    assert judge(newer, identity="other", ours=mine, now=NOW, **POLICY) == "it is for another identity"
    expired = Shared(ID, token("tok-x", obtained=NOW - 100), "host-a")
    assert judge(expired, identity=ID, ours=None, now=NOW, **POLICY) == "it has expired"
    assert judge(expired, identity=ID, ours=None, now=NOW - 90, **POLICY) is None  # the same, earlier
    future = Shared(ID, token("tok-f", obtained=NOW + 3600), "host-a")
    assert judge(future, identity=ID, ours=None, now=NOW, **POLICY) == "it was stamped in the future"
    same = Shared(ID, mine, "host-a")
    assert judge(same, identity=ID, ours=mine, now=NOW, **POLICY) == NOT_NEWER
    # Our own token read back by GET, its expiry a few ms "later" (PTTL against the time
    # left when published): still ours, said quietly, never "already due" (a newcomer saw
    # that warning at every rotation of short tokens).
    read_back = Shared(ID, dataclasses.replace(mine, expires_at=mine.expires_at + 0.004), "host-a")
    assert judge(read_back, identity=ID, ours=mine, now=NOW + 30, **POLICY) == NOT_NEWER
    # ...but an IdP that hands out the same opaque token again with a later expiry (a
    # sliding lifetime) gives a newer token: adopted, or every follower would ask itself.
    slid = Shared(ID, dataclasses.replace(mine, obtained_at=NOW + 29, expires_at=NOW + 89), "host-a")
    assert judge(slid, identity=ID, ours=mine, now=NOW + 30, **POLICY) is None
    # Two leaders at once: the older of their two tokens never replaces the newer.
    assert judge(Shared(ID, mine, "b"), identity=ID, ours=newer.token, now=NOW, **POLICY) == NOT_NEWER
    # Ours has expired: any valid, fresh token is better.
    assert judge(Shared(ID, mine, "b"), identity=ID, ours=token(obtained=NOW - 70), now=NOW, **POLICY) is None


def test_a_replayed_or_nearly_expired_token_is_never_adopted() -> None:
    """Valid is not enough; the credential's own policy
    would replace such a token at once, so it is never put in a sink."""
    nearly = Shared(ID, token("tok-near", obtained=NOW - 55), "host-a")  # 5 s left of 60
    assert judge(nearly, identity=ID, ours=None, now=NOW, **POLICY) == (
        "it is already due for refresh (an old token, or about to expire)"
    )
    # An hour-long token with 30 s left: inside min_ttl_margin (60 s).
    hour = Shared(ID, token("tok-h", obtained=NOW - 3570, life=3600), "host-a")
    assert judge(hour, identity=ID, ours=None, now=NOW, **POLICY) is not None
    fresh_hour = Shared(ID, token("tok-h2", obtained=NOW - 2000, life=3600), "host-a")
    assert judge(fresh_hour, identity=ID, ours=None, now=NOW, **POLICY) is None
    # An old blob replayed on the channel: Redis stamped it an hour ago, and it has expired.
    old = Shared(ID, token("tok-old", obtained=NOW - 3600), "host-a", remaining=60, stamped=REDIS - 3600)
    assert judge(localize(old, NOW, redis_now=REDIS), identity=ID, ours=None, now=NOW, **POLICY) == (
        "it has expired"
    )


REDIS = 1_800_000_000.0  # Redis's clock: nothing to do with any host's


def test_a_shared_tokens_age_is_judged_by_redis_clock_alone() -> None:
    """The expiry travels as the lifetime left
    when Redis stamped it, so neither the leader's clock nor ours skews it: a leader's
    clock ahead never lengthens a token, and an old blob replayed (its old `remaining`
    intact) is as old as Redis's clock says, on a host whose clock is behind too."""
    ahead = Shared(ID, token("tok-a", obtained=NOW + 300), "host-a", remaining=60, stamped=REDIS)
    local = localize(ahead, NOW, redis_now=REDIS).token
    assert (local.obtained_at, local.expires_at) == (NOW, NOW + 60)
    assert judge(localize(ahead, NOW, redis_now=REDIS), identity=ID, ours=None, now=NOW, **POLICY) is None
    # Published 10 s ago by Redis's clock: 50 s left, on any host's clock.
    for skew in (-40.0, 0.0, 40.0):
        seen = localize(ahead, NOW + skew, redis_now=REDIS + 10).token
        assert seen.expires_at == pytest.approx(NOW + skew + 50) and seen.lifetime == 60
    # A replay: a 20 s token published 25 s ago, read on a host 40 s behind.
    replay = Shared(ID, token("tok-r", obtained=NOW, life=20), "host-a", remaining=20, stamped=REDIS)
    assert judge(
        localize(replay, NOW + 25 - 40, redis_now=REDIS + 25), identity=ID, ours=None, now=NOW - 15, **POLICY
    ) == ("it has expired")
    # Read back from Redis: the key's PTTL (45 s) may only shorten it.
    assert localize(ahead, NOW, redis_now=REDIS, ttl=45).token.expires_at == NOW + 45
    assert localize(ahead, NOW, redis_now=REDIS, ttl=90).token.expires_at == NOW + 60
    assert decode(encode(ahead)).remaining == 60 and decode(encode(ahead)).stamped == REDIS
    with pytest.raises(ValueError, match="in the future by Redis's clock"):
        localize(ahead, NOW, redis_now=REDIS - 5)  # Redis's clock went back: age unknown
    assert localize(ahead, NOW, redis_now=REDIS - 0.5).token.expires_at == NOW + 60
    with pytest.raises(ValueError, match="Redis's time"):
        encode(Shared(ID, token(), "host-a", 60))  # never published without a stamp
    unstamped = json.loads(encode(ahead))
    del unstamped["stamped"]
    with pytest.raises(ValueError, match="no time stamp"):
        decode(json.dumps(unstamped).encode())


def test_what_is_shared_is_what_a_sink_holds_and_never_the_refresh_token() -> None:
    shared = Shared(ID, token(), "host-a", 60, REDIS)
    raw = encode(shared)
    assert b"refresh" not in raw
    back = decode(raw)
    assert back.token.access_token == "tok-a" and back.token.refresh_token is None
    assert (back.identity, back.issuer_host, back.token.expires_at) == (ID, "host-a", NOW + 60)
    for bad in (b"nope", b"{}", json.dumps({"v": 1, "identity": ID}).encode()):
        with pytest.raises(ValueError):
            decode(bad)
    unsafe = raw.replace(b'"tok-a"', b'"tok a"')
    with pytest.raises(ValueError):
        decode(unsafe)


def test_a_follower_looks_again_when_the_lease_would_lapse_and_keeps_its_margin() -> None:
    """Findings 1 and 11: a waiting follower looks again just after the leader's lease would
    lapse (its PTTL), so a dead leader is replaced within the lease; it waits for a leader
    that never delivers only until the credential's own margin, not until half a lease."""
    hour = token(life=3600)

    def look(lease_left: float | None, ours: Token | None = hour, lease: float = 10) -> float:
        return follow_until(NOW, lease=lease, lease_left=lease_left, ours=ours, **FOLLOW)

    assert look(0.3) == pytest.approx(NOW + 0.35)  # the lease lapses in 0.3 s: look then
    assert look(None) == pytest.approx(NOW + 10.05)  # unknown: one lease
    assert look(60) == pytest.approx(NOW + 10.05)  # never longer than a lease
    assert look(0) == NOW + 0.1  # at least MIN_DELAY
    short = token(life=3, obtained=NOW - 1.6)  # due at 1.5 s; kept until 2.7 s (0.3 s margin)
    assert follow_deadline(short, **FOLLOW) == pytest.approx(NOW + 1.1)
    assert look(5, ours=short) == pytest.approx(NOW + 1.1)
    # Keeps its token while it has more than min_ttl_margin left: an hour-long token is
    # waited on until 60 s before expiry, a short one (1.5 s due) until 0.3 s before.
    assert may_follow(token(obtained=NOW - 3500, life=3600), NOW, **FOLLOW)
    assert not may_follow(token(obtained=NOW - 3545, life=3600), NOW, **FOLLOW)  # 55 s left
    assert may_follow(short, NOW, **FOLLOW)
    assert not may_follow(token(life=3, obtained=NOW - 2.8), NOW, **FOLLOW)
    assert not may_follow(None, NOW, **FOLLOW)
    # min_ttl_margin = 0 still keeps back one request's timeout (the bench's 4 s tokens
    # once sat expired in every follower's sink, waiting for a leader that had died).
    no_margin = {**FOLLOW, "min_ttl_margin": 0.0}
    assert follow_deadline(hour, **no_margin) == pytest.approx(hour.expires_at - 10)
    four = token(life=4, obtained=NOW - 3.2)  # due at 3.2 s: kept until 0.4 s before expiry
    assert follow_deadline(four, **no_margin) == pytest.approx(four.expires_at - 0.4)
    assert may_follow(four, NOW, **no_margin)
    assert not may_follow(four, NOW + 0.5, **no_margin)
    assert jitter_for(Role.LEADER, 0.7) == -0.7 and jitter_for(Role.LEADER, -0.7) == -0.7
    assert jitter_for(Role.FOLLOWER, -0.7) == 0.7
    assert jitter_for(None, -0.7) == jitter_for(Role.STANDALONE, -0.7) == -0.7


def test_every_key_is_under_the_prefix() -> None:
    assert redis_keys("tk", ID) == (f"tk:lease:{ID}", f"tk:token:{ID}", f"tk:rotated:{ID}")


def test_only_the_same_secret_and_identity_open_a_sealed_token() -> None:
    shared = Shared(ID, token(), "host-a", 60, REDIS)
    blob = seal(shared, b"secret:one")
    assert b"tok-a" not in blob
    assert unseal(blob, b"secret:one", ID).token.access_token == "tok-a"
    assert seal(shared, b"secret:one") != blob  # a fresh nonce each time
    with pytest.raises(Undecryptable, match="another secret"):
        unseal(blob, b"secret:two", ID)
    with pytest.raises(Undecryptable):
        unseal(blob, b"secret:one", "f" * 32)  # moved to another identity's key
    with pytest.raises(Undecryptable):
        unseal(blob[:-1] + bytes([blob[-1] ^ 1]), b"secret:one", ID)
    with pytest.raises(Undecryptable, match="not a tokend"):
        unseal(b"garbage", b"secret:one", ID)


# --------------------------------------------------------------------------- the config


FILE = Path("/etc/tokend/tokend.toml")
CRED = '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\nclient_secret = "b"\n'


def fleet_config(body: str) -> str:
    return f"[fleet]\n{body}\n{CRED}"


def test_the_fleet_table_and_its_refusals() -> None:
    config = parse(
        fleet_config('redis_url = "rediss://r.example.com:6380/1"\nlease = "2s"'), FILE, environ={}
    )
    assert config.fleet is not None and config.fleet.lease == 2.0 and config.fleet.key_prefix == "tokend"
    assert config.credentials["api"].fleet is True
    assert parse(CRED, FILE, environ={}).fleet is None
    refusals = {
        'redis_url = "redis://:hunter22@r:6379"': "fleet.redis_url: must not carry a user or password",
        'redis_url = "http://r:6379"': "fleet.redis_url: must be a redis://",
        'redis_url = "redis://r"\npassword = "hunter22"': "fleet.password: unknown key; did you mean",
        'redis_url = "redis://r"\nlease = "500ms"': "fleet.lease: must be between 1s",
        'redis_url = "redis://r"\npassword_env = "hunter22 x"': "fleet.password_env: is not an environment",
        'redis_url = "redis://r"\npassword_env = "A"\npassword_file = "/p"': "conflicts with password_file",
        'redis_url = "redis://r"\nkey_prefix = "a:b"': "fleet.key_prefix: may only use",
        "lease = 3": "fleet.redis_url: is required",
    }
    for body, message in refusals.items():
        with pytest.raises(ConfigError) as info:
            parse(fleet_config(body), FILE, environ={})
        assert message in str(info.value), str(info.value)
        assert "hunter22" not in str(info.value)
    opted_out = parse(fleet_config('redis_url = "redis://r"') + "fleet = false\n", FILE, environ={})
    assert opted_out.credentials["api"].fleet is False


def test_a_malformed_or_overriding_redis_url_is_one_line_at_parse_time() -> None:
    """Findings 4 and 5: what redis-py would crash on (a traceback at `run`, after `check`
    said ok) or let override tokend's settings is refused when the config is read, in one
    line that never echoes the URL (a password typed where the port goes)."""
    refusals = {
        "redis://r.example.com:hunter22/0": "the port must be a number from 1 to 65535",
        "redis://r:99999": "the port must be a number from 1 to 65535",
        "redis://r:0": "the port must be a number from 1 to 65535",
        "redis://[::1/0": "the host in brackets must be an IPv6 address",
        "redis://:6379/0": "must name a host",
        "redis://r/hunter22": "the database must be a number",
        "redis://r?socket_timeout=hunter22": "may carry no query but ?db=N",
        "redis://r:6379/0?password=hunter22": "may carry no query but ?db=N",
        "rediss://r?ssl_cert_reqs=none&x=hunter22": "may carry no query but ?db=N",
        "redis://tokend@r:6379": "must not carry a user or password",
        "redis://r/0#hunter22": "must not contain '#'",
        "unix://hunter22": "must name the socket's absolute path",
    }
    for url, message in refusals.items():
        with pytest.raises(ConfigError) as info:
            parse(fleet_config(f'redis_url = "{url}"'), FILE, environ={})
        text = str(info.value)
        assert message in text and "fleet.redis_url" in text and "\n" not in text, text
        assert "hunter22" not in text and url not in text
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://redis.internal:6380",
        "redis://[::1]:6379/2",
        "unix:///run/redis/redis.sock?db=1",
    ):
        config = parse(fleet_config(f'redis_url = "{url}"'), FILE, environ={})
        assert config.fleet is not None and config.fleet.redis_url == url


def test_the_redis_password_variable_is_kept_from_children() -> None:
    config = parse(fleet_config('redis_url = "redis://r"\npassword_env = "REDIS_PW"'), FILE, environ={})
    assert "REDIS_PW" in config.secret_variables()


# --------------------------------------------------------------------------- real daemons, real Redis

PASSWORD = "redis-pw-0123456789"
LEASE = 1.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    SECRETS.add(PASSWORD)
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def redis_clock(client: Any) -> float:
    """Redis's own clock (TIME), as a leader stamps a publication with it."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000


def fleet_block(tmp: Path, server: RedisServer, lease: float = LEASE) -> str:
    password_file = tmp / "redis.pass"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    lease_ms = int(lease * 1000)
    return f'[fleet]\nredis_url = "{server.url}"\npassword_file = "{password_file}"\nlease = "{lease_ms}ms"\n'


def member(tmp: Path, n: int, idp: TokenEndpoint, server: RedisServer) -> Path:
    home = tmp / f"host{n}"
    home.mkdir()
    return write_config(home, fleet_block(home, server), credential_toml(idp.url, home))


def sink_of(config: Path) -> Path:
    return config.parent / "out" / "api.token"


def status_of(config: Path) -> dict[str, object]:
    try:
        return json.loads((config.parent / "state" / "status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def role_of(config: Path) -> object:
    creds = status_of(config).get("credentials") or {}
    return creds.get("api", {}).get("role") if isinstance(creds, dict) else None


def start_fleet(
    tmp: Path, n: int, idp: TokenEndpoint, server: RedisServer, daemons: Start
) -> list[tuple[Path, DaemonProcess]]:
    configs = [member(tmp, i, idp, server) for i in range(n)]
    return [(config, daemons(config, config.parent)) for config in configs]


def all_hold(configs: list[Path], access: str) -> bool:
    return all(read_token(sink_of(c)) == access for c in configs)


def rotations(idp: TokenEndpoint, configs: list[Path], count: int, timeout: float) -> list[float]:
    """Watch ``count`` rotations: for each new token the IdP issues, how long until every
    sink holds it. Returns those delays."""
    delays: list[float] = []
    first = len(idp.issued_at)
    for k in range(count):
        wait_for(lambda k=k: len(idp.issued_at) > first + k, timeout, f"rotation {k + 1}")  # type: ignore[misc]
        latest = max(idp.issued_at, key=lambda t: idp.issued_at[t])
        wait_for(lambda latest=latest: all_hold(configs, latest), 5, f"every sink to hold {latest}")  # type: ignore[misc]
        delays.append(time.time() - idp.issued_at[latest])
    return delays


def test_five_daemons_ask_once_per_rotation_and_a_killed_leader_is_replaced(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer, daemons: Start
) -> None:
    idp.expires_in = 3  # due every 1.5 s (half the lifetime: the 60 s margin does not fit)
    fleet = start_fleet(tmp_path, 5, idp, redis_server, daemons)
    configs = [c for c, _ in fleet]
    wait_for(lambda: all(read_token(sink_of(c)) is not None for c in configs), 20, "every sink to fill")
    assert len(idp.seen) == 1, "the fleet started with one request, not one per host"
    before = len(idp.seen)
    delays = rotations(idp, configs, 3, 10)
    shared_requests = len(idp.seen) - before
    assert shared_requests <= 4, f"{shared_requests} requests for 3 rotations"
    assert max(delays) < 1.0, delays  # every sink has it within a second of the rotation
    wait_for(lambda: sorted(map(str, map(role_of, configs))) == ["follower"] * 4 + ["leader"], 5, "roles")
    shown = run_tokend("status", "-c", configs[0], tmp=tmp_path, env=clean_env(tmp_path))
    assert "api: ok (leader)" in shown.stdout or "api: ok (follower)" in shown.stdout, shown.stdout
    # The fleet's health in one line: Redis reachable, the role of each credential.
    assert f"fleet: Redis {redis_server.url} reachable; api " in shown.stdout, shown.stdout
    health = status_of(configs[0])["fleet"]
    assert isinstance(health, dict) and health["reachable"] is True and health["redis"] == redis_server.url

    # kill -9 the leader: its lease runs out (no release), a follower takes over.
    leader = next(i for i, c in enumerate(configs) if role_of(c) == "leader")
    killed_at = time.time()
    fleet[leader][1].proc.send_signal(signal.SIGKILL)
    fleet[leader][1].proc.wait(5)
    survivors = [c for i, c in enumerate(configs) if i != leader]
    issued = len(idp.issued_at)
    wait_for(lambda: len(idp.issued_at) > issued, LEASE + 3 + 2, "a new leader's request")
    new = max(idp.issued_at, key=lambda t: idp.issued_at[t])
    handover = idp.issued_at[new] - killed_at
    wait_for(lambda: all_hold(survivors, new), 2, "every survivor to hold the new leader's token")
    # Within the lease after the token came due (at most 1.5 s after the kill).
    assert handover < 1.5 + LEASE + 0.5, handover  # a waiting follower looks again when the lease lapses
    wait_for(lambda: [role_of(c) for c in survivors].count("leader") == 1, 5, "one new leader")
    before = len(idp.seen)
    rotations(idp, survivors, 2, 10)
    assert len(idp.seen) - before <= 3
    print(
        f"fleet: {shared_requests} requests for 3 rotations of 5 hosts, rotation to last sink "
        f"max {max(delays) * 1000:.0f} ms, hand-over {handover:.2f}s after kill -9"
    )


def test_without_redis_each_daemon_carries_on_alone_and_rejoins_when_it_returns(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer, daemons: Start
) -> None:
    idp.expires_in = 3
    fleet = start_fleet(tmp_path, 5, idp, redis_server, daemons)
    configs = [c for c, _ in fleet]
    wait_for(lambda: all(read_token(sink_of(c)) is not None for c in configs), 20, "every sink to fill")
    redis_server.stop()
    down_at = time.time()
    # On its own, each daemon keeps its sink valid: 2 rotations each, 5 hosts.
    issued = len(idp.issued_at)
    wait_for(lambda: len(idp.issued_at) >= issued + 10, 10, "every daemon refreshing on its own")
    for config in configs:
        access = read_token(sink_of(config))
        assert access is not None and idp.expires_at(access) > time.time()
    for _, daemon in fleet:
        assert daemon.log.count("fleet: Redis unreachable") == 1, daemon.log  # said once
    assert time.time() - down_at < 10
    redis_server.start()
    wait_for(lambda: all("answers again; rejoining" in d.log for _, d in fleet), 10, "every daemon to rejoin")
    rotations(idp, configs, 1, 10)  # the first rotation after: they converge on one token
    before = len(idp.seen)
    rotations(idp, configs, 3, 10)
    assert len(idp.seen) - before <= 4, f"{len(idp.seen) - before} requests for 3 rotations after the outage"
    for _, daemon in fleet:
        assert "Traceback" not in daemon.log


def test_a_token_from_redis_is_used_only_if_unexpired_and_sealed_with_our_secret(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer, daemons: Start
) -> None:
    idp.expires_in = 60
    client = redis_server.client()
    configs = [member(tmp_path, i, idp, redis_server) for i in range(3)]
    now = time.time()
    cases = {
        0: ("tok-shared-fresh", now - 1, 60, "s3cret-value"),  # good: used, no request
        1: ("tok-shared-expired", now - 120, 60, "s3cret-value"),  # expired: never in a sink
        2: ("tok-shared-other", now - 1, 60, "another-secret"),  # another secret: ignored
    }
    for i, (access, obtained, life, secret) in cases.items():
        # Each host its own client id, so each has its own identity and stored token.
        text = configs[i].read_text().replace('client_id = "client-1"', f'client_id = "client-{i + 1}"')
        configs[i].write_text(text)
        cred = load(configs[i]).credentials["api"]
        identity = cache_key(cred, f"client-{i + 1}")
        SECRETS.add(access)
        blob = seal(
            Shared(
                identity,
                Token(access, obtained + life, obtained),
                "elsewhere",
                obtained + life - now,
                redis_clock(client),
            ),
            b"secret:" + secret.encode(),
        )
        assert key_material(cred, {}) == b"secret:s3cret-value"
        # Stored 14 s ago by Redis's clock (PTTL 45 s), though its stamps say 59 s are left.
        client.set(redis_keys("tokend", identity)[1], blob, px=45_000)
    started = [daemons(c, c.parent) for c in configs]
    wait_for(lambda: all(read_token(sink_of(c)) is not None for c in configs), 20, "every sink to fill")
    assert read_token(sink_of(configs[0])) == "tok-shared-fresh"

    def status_expiry() -> object:  # status.json is written after the sinks: wait for it
        creds = status_of(configs[0]).get("credentials")
        return creds.get("api", {}).get("expires_at") if isinstance(creds, dict) else None

    wait_for(status_expiry, 5, "the status file's record of the shared token")
    expiry = status_expiry()
    assert isinstance(expiry, float) and expiry < now + 46, (expiry, now)  # the key's PTTL, not its stamp
    assert read_token(sink_of(configs[1])) not in (None, "tok-shared-expired")
    assert read_token(sink_of(configs[2])) not in (None, "tok-shared-other")
    asked = sorted(seen.params.get("client_id") or (seen.basic_auth or ("", ""))[0] for seen in idp.seen)
    assert asked == ["client-2", "client-3"]  # the host with a usable shared token asked nobody
    wait_for(lambda: "it has expired" in started[1].log, 5, "the expired token's log line")
    wait_for(lambda: "another client secret?); refreshing on our own" in started[2].log, 5, "why, logged")
    # The leader stored its token for the others, sealed: the access token is not in Redis.
    identity = cache_key(load(configs[1]).credentials["api"], "client-2")
    stored = client.get(redis_keys("tokend", identity)[1])
    assert stored is not None and b"tok-" not in stored
    assert 0 < client.pttl(redis_keys("tokend", identity)[1]) <= 60_000


def test_check_online_pings_redis_and_a_wrong_password_is_one_line(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer
) -> None:
    config = member(tmp_path, 0, idp, redis_server)
    result = run_tokend("check", "-c", config, "--online", tmp=tmp_path, env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"online: fleet: Redis {redis_server.url} answers" in result.stdout
    (config.parent / "redis.pass").write_text("wrong-password-42\n")
    SECRETS.add("wrong-password-42")
    result = run_tokend("check", "-c", config, "--online", tmp=tmp_path, env=clean_env(tmp_path))
    assert result.returncode == 1
    assert "tokend: fleet:" in result.stderr and "Traceback" not in result.stderr
    (config.parent / "redis.pass").unlink()
    result = run_tokend("run", "-c", config, tmp=tmp_path, env=clean_env(tmp_path))
    assert result.returncode == 78
    assert "fleet.password_file" in result.stderr and "Traceback" not in result.stderr
    # Offline `check` reads the password too, so it fails where `run` would.
    result = run_tokend("check", "-c", config, tmp=tmp_path, env=clean_env(tmp_path))
    assert result.returncode == 78, result.stdout
    assert "fleet.password_file" in result.stderr and "no such file" in result.stderr


def test_the_redis_password_file_is_read_like_every_secret_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte-order mark is dropped with a warning, one trailing newline is dropped, two
    lines or an empty file are refused, each naming the key."""
    from tokend.io.fleet_secret import read_password_file

    path = tmp_path / "redis.pass"
    path.write_bytes("\ufeffpw-123\r\n".encode())
    assert read_password_file(path, FILE) == "pw-123"
    assert "byte-order mark" in caplog.text
    for content, message in ((b"pw\nmore\n", "more than one line"), (b"\n", "is empty")):
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=message) as info:
            read_password_file(path, FILE)
        assert "fleet.password_file" in str(info.value) and "pw" not in str(info.value).split(": ", 2)[-1]


def test_without_a_fleet_table_neither_redis_nor_cryptography_is_imported(tmp_path: Path) -> None:
    config = write_config(tmp_path, credential_toml("https://idp.example.com/t", tmp_path))
    code = (
        "import sys; from tokend.config import load; from tokend.daemon.loop import Daemon;"
        "from tokend.daemon.token_source import STANDALONE;"
        f"d = Daemon(load({str(config)!r}), environ={{}});"
        "print(d.source is STANDALONE, sorted({'redis', 'cryptography'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True []"


def test_with_a_private_key_the_fleet_key_derives_from_the_private_key_not_the_public(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    publics: dict[str, str] = {}  # SHA-256 of each public key (SubjectPublicKeyInfo), hex

    def cred_with_key(name: str) -> CredentialConfig:
        key = ec.generate_private_key(ec.SECP256R1())
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        publics[name] = hashlib.sha256(spki).hexdigest()
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pem.chmod(0o600)
        text = (
            f'[credentials.{name}]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\n'
            f'client_auth = "private_key_jwt"\nprivate_key_file = "{pem}"\n'
        )
        return parse(text, tmp_path / "tokend.toml", environ={}).credentials[name]

    one, two = cred_with_key("one"), cred_with_key("two")
    material = key_material(one, {})
    assert material.startswith(b"private-key:") and material == key_material(one, {})
    assert material != key_material(two, {})
    public = publics["one"]
    assert public.encode() not in material
    blob = seal(Shared(ID, token(), "host-a", 60, REDIS), material)
    with pytest.raises(Undecryptable):
        unseal(blob, b"public-key:" + public.encode(), ID)  # what a JWKS reader could derive


def test_the_readmes_redis_acl_is_enough(tmp_path: Path, redis_server: RedisServer) -> None:
    """docs/fleet-internals.md (from the README's "Fleet mode"): the ACL a deployment should
    give tokend, applied to a real Redis, lets the store do everything it does, and nothing
    outside its prefix."""
    import re

    from redis.exceptions import NoPermissionError

    readme = (Path(__file__).resolve().parent.parent / "docs" / "fleet-internals.md").read_text()
    acl = re.search(r"^ACL SETUSER tokend (.*)$", readme, re.MULTILINE)
    assert acl is not None
    rules = acl.group(1).replace(">PASSWORD", ">acl-user-pw-42").split()
    SECRETS.add("acl-user-pw-42")
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "tokend", *rules)  # type: ignore[no-untyped-call]
    (tmp_path / "acl.pass").write_text("acl-user-pw-42\n")
    fleet = FleetConfig(
        redis_url=redis_server.url, password_file=tmp_path / "acl.pass", username="tokend", lease=1.0
    )
    store = FleetStore(fleet, "acl-user-pw-42")
    other = FleetStore(fleet, "acl-user-pw-42")
    try:
        store.ping()
        assert store.listen([ID], 0.05) == {}  # subscribed
        assert store.lead(ID) and not other.lead(ID)
        assert 0 < (other.lease_left(ID) or 0) <= 1.0
        assert store.renew([ID]) == []
        store.publish(ID, b"blob", 5)
        stored = store.get(ID)
        assert stored is not None and stored.blob == b"blob" and 4 < (stored.ttl or 0) <= 5
        other.listen([ID], 0.05)  # subscribed now
        store.publish(ID, b"blob2", 5)
        wait_for(lambda: other.listen([ID], 0.2).get(ID) == b"blob2", 3, "the publication")
        admin.script_flush()  # the renewal falls back to SCRIPT LOAD
        assert store.renew([ID]) == []
        store.release(ID)
        assert other.lead(ID)
        other.release_all()
        with pytest.raises(NoPermissionError):
            store.client.get("elsewhere")
        assert "+eval " not in acl.group(1) and "+keys" not in acl.group(1)  # no more than needed
    finally:
        store.close()
        other.close()


# --------------------------------------------------------------- leaders and followers in process, real Redis

INLINE = '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\nclient_secret = "b"\n'
ID2 = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def fleet_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The fleet's log lines, also when another test's logging setup stopped "tokend"
    from propagating to the root logger."""
    logger = logging.getLogger("tokend")
    propagate, logger.propagate = logger.propagate, False  # each record once
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, "tokend")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def in_process(tmp: Path, server: RedisServer, lease: float = LEASE) -> tuple[Fleet, CredentialConfig]:
    """A Fleet in this process (the daemon's side of the seam) for credential "api"."""
    config = parse(fleet_block(tmp, server, lease) + INLINE, tmp / "tokend.toml", environ={})
    assert config.fleet is not None
    return Fleet(config.fleet, config.path, environ={}), config.credentials["api"]


def subscribers(server: RedisServer, identity: str) -> int:
    channel = redis_keys("tokend", identity)[2]
    return int(server.client().pubsub_numsub(channel)[0][1])


def test_a_lease_is_held_only_while_it_is_wanted(tmp_path: Path, redis_server: RedisServer) -> None:
    """A leader that stops refreshing (a failed request, the credential removed,
    opted out or given another identity) lets go of its lease at once."""
    fleet, cred = in_process(tmp_path, redis_server)
    other = FleetStore(fleet.fleet, PASSWORD)

    def lead() -> None:
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK
        assert fleet.role("api") is Role.LEADER and not other.lead(ID)

    def another_host_may_lead(identity: str = ID) -> None:
        assert other.lead(identity)
        other.release(identity)

    try:
        lead()
        fleet.failed(cred, ID)  # our request to the identity provider failed
        assert fleet.role("api") is Role.FOLLOWER
        another_host_may_lead()
        lead()
        assert fleet.offer(dataclasses.replace(cred, fleet=False), ID, None, time.time(), due=True) == ASK
        assert fleet.role("api") is None  # opted out by a reload
        another_host_may_lead()
        lead()
        assert fleet.offer(cred, ID2, None, time.time(), due=True) == ASK  # a reload changed its identity
        assert fleet.store.holds(ID2) and not fleet.store.holds(ID)
        another_host_may_lead(ID)
        fleet.forget("api")  # removed from the config
        another_host_may_lead(ID2)
        assert fleet.store.lead(ID) and fleet.store.renew([]) == []  # renewed only when wanted
        another_host_may_lead()
    finally:
        fleet.stop()
        other.close()


def test_the_store_reads_with_a_bound_and_drains_a_flood_in_batches(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Findings 2 and 8: a huge value in the token key is refused unread; a flood on a
    channel is taken a bounded batch at a time, keeping the last blob per identity."""
    store = FleetStore(FleetConfig(redis_url=redis_server.url, lease=1.0), PASSWORD)
    admin = redis_server.client()
    _, token_key, channel = redis_keys("tokend", ID)
    try:
        admin.set(token_key, b"x" * (4 * 1024 * 1024))
        with pytest.raises(TooLarge, match="more than 16384"):
            store.get(ID)
        admin.set(token_key, b"blob", px=5000)
        stored = store.get(ID)
        assert stored is not None and stored.blob == b"blob" and 4 < (stored.ttl or 0) <= 5
        admin.delete(token_key)
        assert store.get(ID) is None
        assert store.listen([ID, ID2], 0.05) == {}  # subscribed
        pipe = admin.pipeline(transaction=False)
        for i in range(3000):
            pipe.publish(channel, b"m%d" % i)
        pipe.publish(redis_keys("tokend", ID2)[2], b"other")
        pipe.execute()
        started = time.monotonic()
        batches: list[dict[str, bytes]] = []
        while not batches or batches[-1]:
            batches.append(store.listen([ID, ID2], 0.2))
            assert len(batches) < 50
        took = time.monotonic() - started
        assert all(len(batch) <= 2 and all(len(b) < 100 for b in batch.values()) for batch in batches)
        assert len(batches) >= 3000 // DRAIN_MESSAGES  # never the whole flood at once
        assert batches[-2] == {ID: b"m2999", ID2: b"other"} or batches[-3].get(ID) == b"m2999"
        assert took < 5, took
    finally:
        store.close()


def test_a_dropped_subscription_is_not_an_outage_and_keeps_the_lease(
    tmp_path: Path, redis_server: RedisServer, fleet_log: pytest.LogCaptureFixture
) -> None:
    """Redis disconnects a slow subscriber (client-output-buffer-limit pubsub);
    the commands still work, so the daemon keeps its lease and subscribes again."""
    fleet, cred = in_process(tmp_path, redis_server)
    other = FleetStore(fleet.fleet, PASSWORD)
    admin = redis_server.client()
    try:
        fleet.start(lambda name: None)
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK and fleet.store.holds(ID)
        until = time.monotonic() + 3 * LEASE
        kills = 0
        while time.monotonic() < until:
            wait_for(lambda: subscribers(redis_server, ID) == 1, 3, "the fleet to subscribe (again)")
            kills += admin.client_kill_filter(_type="pubsub")
            assert not other.lead(ID), f"the lease was lost after {kills} dropped subscriptions"
        assert kills >= 3 and fleet.state.reachable and fleet.role("api") is Role.LEADER
        assert "Redis unreachable" not in fleet_log.text
        assert fleet_log.text.count("subscribing again (the leases are kept)") == 1  # once a minute
    finally:
        fleet.stop()
        other.close()


def test_a_flood_of_bad_publications_wakes_nothing_and_costs_no_lease(
    tmp_path: Path, redis_server: RedisServer, fleet_log: pytest.LogCaptureFixture
) -> None:
    """Findings 2 and 3: garbage, or an old token replayed on the channel, never wakes the
    credential, is logged once a minute, and cannot starve the lease renewals."""
    fleet, cred = in_process(tmp_path, redis_server)
    other = FleetStore(fleet.fleet, PASSWORD)
    admin = redis_server.client()
    channel = redis_keys("tokend", ID)[2]
    material = key_material(cred, {})
    woken: list[str] = []
    now = time.time()
    replayed = seal(
        Shared(ID, Token("tok-replayed", now - 3000, now - 3600), "old", 600, redis_clock(admin) - 3600),
        material,
    )
    SECRETS.add("tok-replayed")
    try:
        fleet.start(woken.append)
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK
        wait_for(lambda: subscribers(redis_server, ID) == 1, 3, "the fleet to subscribe")
        until = time.monotonic() + 2.5 * LEASE
        sent = 0
        while time.monotonic() < until:
            pipe = admin.pipeline(transaction=False)
            for _ in range(500):
                pipe.publish(channel, MAGIC + os.urandom(200))
            pipe.publish(channel, replayed)
            pipe.execute()
            sent += 501
            assert not other.lead(ID), f"the lease lapsed after {sent} publications"
        assert woken == [] and fleet.role("api") is Role.LEADER and fleet.state.reachable
        assert fleet_log.text.count("ignoring a publication on the fleet's channel") == 1
        # A good publication (another leader's fresh token) still wakes it at once.
        SECRETS.add("tok-good")
        good = Token("tok-good", time.time() + 60, time.time())
        admin.publish(channel, seal(Shared(ID, good, "host-b", 60, redis_clock(admin)), material))
        wait_for(lambda: woken == ["api"], 3, "the credential to be woken")
        print(f"flood: {sent} bad publications, lease kept, one warning")
    finally:
        fleet.stop()
        other.close()


class WaitingSource(TokenSource):
    """A follower whose leader never delivers: it waits ``wait`` seconds (on the fake
    clock) and then says "ask it yourself"."""

    def __init__(self, clock: FakeClock, wait: float) -> None:
        self.clock, self.wait = clock, wait

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        self.clock.advance(self.wait)
        return Offer(waited=self.wait)

    def role(self, name: str) -> Role | None:
        return Role.FOLLOWER


def test_a_token_asked_for_after_waiting_for_the_leader_is_due_from_after_the_wait(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """The wait is not part of the new token's life (it was
    due 4 s early after a 4 s wait)."""

    def due_in(wait: float) -> float:
        home = tmp_path / f"wait-{wait}"
        home.mkdir()
        config = load(write_config(home, credential_toml(idp.url, home)))
        clock = FakeClock()
        jobs = ManualJobs(clock)
        runner = runner_on(jobs, config.state_dir, source=WaitingSource(clock, wait))
        runner.add(config.credentials["api"])
        jobs.run_until(clock.monotonic())
        at = jobs.next_at("api")
        assert at is not None
        return at - clock.monotonic()

    assert due_in(4.0) == pytest.approx(due_in(0.0))


# ------------------------------------------------------- leases let go, waits bounded: in process, real Redis


def test_a_leader_whose_refresh_fails_with_a_config_error_lets_go_of_its_lease(
    tmp_path: Path, redis_server: RedisServer, httpserver: HTTPServer
) -> None:
    """Discovery refused (metadata for another issuer) is
    a ConfigError, not a TokenRequestError; the leader kept its lease for good, renewed by
    its listener, and no other host ever asked. Now any failure lets go of it."""
    issuer = httpserver.url_for("/").rstrip("/")
    httpserver.expect_request("/.well-known/openid-configuration").respond_with_json(
        {"issuer": "https://elsewhere.example", "token_endpoint": "https://elsewhere.example/t"}
    )
    text = fleet_block(tmp_path, redis_server) + (
        f'[credentials.api]\nissuer = "{issuer}"\nallow_insecure_http = true\n'
        'client_id = "a"\nclient_secret = "b"\n'
    )
    config = parse(text, tmp_path / "tokend.toml", environ={})
    assert config.fleet is not None
    fleet = Fleet(config.fleet, config.path, environ={})
    cred = config.credentials["api"]
    key = cache_key(cred, "a")
    other = FleetStore(fleet.fleet, PASSWORD)
    client = TokenClient()
    try:
        refresher = Refresher(cred, TokenCache(tmp_path / "state"), environ={}, source=fleet)
        with pytest.raises(ConfigError, match="discovery refused"):
            refresher.refresh(client, write_sinks=False)
        assert not fleet.store.holds(key) and fleet.role("api") is Role.FOLLOWER
        assert other.lead(key)  # at once, not a lease later (nor never)
    finally:
        client.close()
        fleet.stop()
        other.release_all()
        other.close()


def test_followers_without_a_token_take_over_a_dead_leaders_lease_and_one_asks(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Followers without a token waited a full lease and then all asked the
    identity provider, none taking the dead leader's lease. Now the first to see it lapse
    takes it (within the lease) and asks; the others wait for it and take its token."""
    fleets = []
    for n in range(3):
        home = tmp_path / f"host{n}"
        home.mkdir()
        fleets.append(in_process(home, redis_server))
    dead = FleetStore(fleets[0][0].fleet, PASSWORD)
    offers: dict[int, Offer] = {}

    def follow(n: int) -> None:
        fleet, cred = fleets[n]
        offers[n] = fleet.offer(cred, ID, None, time.time(), due=True)

    threads = [threading.Thread(target=follow, args=(n,)) for n in range(3)]
    try:
        assert dead.lead(ID)  # a leader that took the lease and died at once
        started = time.monotonic()
        for thread in threads:
            thread.start()
        wait_for(lambda: len(offers) >= 1, 3 * LEASE, "one follower to take the lease over")
        took = time.monotonic() - started
        [(leader, offer)] = offers.items()
        fleet, cred = fleets[leader]
        assert offer.token is None and not offer.follow  # it asks, now the leader
        assert fleet.role("api") is Role.LEADER and fleet.store.holds(ID)
        assert LEASE - 0.1 < took < LEASE + 0.5, took
        SECRETS.add("tok-new-leader")
        new = Token("tok-new-leader", time.time() + 600, time.time())
        fleet.obtained(cred, ID, new)  # what it got from the identity provider: published
        for thread in threads:
            thread.join(3 * LEASE)
        assert sorted(offers) == [0, 1, 2]
        for n, got in offers.items():
            if n != leader:
                assert got.token is not None and got.token.access_token == "tok-new-leader", got
                assert fleets[n][0].role("api") is Role.FOLLOWER
    finally:
        for thread in threads:
            thread.join(3 * LEASE)
        for fleet, _ in fleets:
            fleet.stop()
        dead.close()


# ----------------------------------------------------- replays, churn, skewed clocks: real Redis, real clocks

FAKETIME = next(iter(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")), Path("/nonexistent"))


def test_a_replayed_blob_on_a_host_whose_clock_is_behind_never_reaches_a_sink(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer, daemons: Start
) -> None:
    """A real leader's sealed token, SET again in Redis after it expired
    (someone with write access: a new PX), read by a host whose clock is 40 s behind. Its
    `remaining` said 2 s were left when published; the follower once took that on its own
    clock and wrote a token past its real expiry into its sink. Now the age is Redis's
    TIME against the stamp Redis gave it when published: expired, whatever the clock."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed (Debian: apt-get install faketime)")
    idp.expires_in = 2
    leader_config = member(tmp_path, 0, idp, redis_server)
    identity = cache_key(load(leader_config).credentials["api"], "client-1")
    token_key = redis_keys("tokend", identity)[1]
    admin = redis_server.client()
    leader = daemons(leader_config, leader_config.parent)
    wait_for(lambda: admin.get(token_key) is not None, 20, "the leader's publication")
    blob = admin.get(token_key)
    assert isinstance(blob, bytes)
    leader.stop()  # releases its lease: nobody else publishes
    [first] = idp.issued_at
    wait_for(lambda: time.time() > idp.expires_at(first) + 0.5, 10, "the published token to expire")
    admin.set(token_key, blob, px=60_000)  # the replay
    follower_config = member(tmp_path, 1, idp, redis_server)
    env = clean_env(
        follower_config.parent, LD_PRELOAD=str(FAKETIME), FAKETIME="-40s", FAKETIME_DONT_FAKE_MONOTONIC="1"
    )
    follower = daemons(follower_config, follower_config.parent, env)
    wait_for(lambda: read_token(sink_of(follower_config)) is not None, 20, "the follower's sink")
    held = read_token(sink_of(follower_config))
    assert held is not None and held != first, "a replayed, expired token went into the sink"
    assert idp.expires_at(held) > time.time()
    wait_for(lambda: "it has expired" in follower.log, 5, "why the fleet's token was refused")
    assert "Traceback" not in follower.log


class BehindClock(SystemClock):
    """This host's clocks, its wall clock ``seconds`` behind."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return super().time() - self.seconds


def test_a_publication_replayed_on_the_channel_is_aged_by_redis_not_by_our_clock(
    tmp_path: Path, redis_server: RedisServer, fleet_log: pytest.LogCaptureFixture
) -> None:
    """Item 2 through pub/sub: a host 40 s behind receives an old (sealed, stamped) blob
    again; it is not woken for it. A fresh one still wakes it."""
    config = parse(fleet_block(tmp_path, redis_server) + INLINE, tmp_path / "tokend.toml", environ={})
    assert config.fleet is not None
    fleet = Fleet(config.fleet, config.path, environ={}, clock=BehindClock(40))
    cred = config.credentials["api"]
    admin = redis_server.client()
    channel = redis_keys("tokend", ID)[2]
    material = key_material(cred, {})
    woken: list[str] = []
    SECRETS.add("tok-old-20s", "tok-fresh-20s")
    real = time.time()
    old = Token("tok-old-20s", real - 5, real - 25)  # a 20 s token, 5 s past its expiry
    replayed = seal(Shared(ID, old, "host-a", 20, redis_clock(admin) - 25), material)
    try:
        fleet.start(woken.append)
        assert fleet.offer(cred, ID, None, fleet.clock.time(), due=False) == ASK  # subscribes
        wait_for(lambda: subscribers(redis_server, ID) == 1, 3, "the fleet to subscribe")
        admin.publish(channel, replayed)
        wait_for(lambda: "ignoring a publication" in fleet_log.text, 3, "the replay to be refused")
        assert woken == [] and "it has expired" in fleet_log.text
        fresh = Token("tok-fresh-20s", time.time() + 20, time.time())
        admin.publish(channel, seal(Shared(ID, fresh, "host-a", 20, redis_clock(admin)), material))
        wait_for(lambda: woken == ["api"], 3, "a fresh publication to wake it")
    finally:
        fleet.stop()


def test_a_huge_publication_is_never_read_into_memory(tmp_path: Path, redis_server: RedisServer) -> None:
    """Item 6: a message was parsed whole before the 16 KiB check (7 MiB messages raised
    every daemon's RSS). Now the pub/sub parser refuses it from its length header: the
    subscription is dropped unread (PubSubLost), and taken again at the next call."""
    import tracemalloc

    store = FleetStore(FleetConfig(redis_url=redis_server.url, lease=1.0), PASSWORD)
    admin = redis_server.client()
    channel = redis_keys("tokend", ID)[2]
    big = 8 * 1024 * 1024
    try:
        assert store.listen([ID], 0.05) == {}  # subscribed
        admin.publish(channel, b"x" * big)
        tracemalloc.start()
        try:
            with pytest.raises(PubSubLost, match=f"a message of {big} bytes, more than 16384"):
                store.listen([ID], 2.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024, f"{peak} bytes allocated for an {big}-byte publication"
        print(f"an {big >> 20} MiB publication cost {peak >> 10} KiB")
        assert store.listen([ID], 0.05) == {}  # subscribed again
        admin.publish(channel, b"x" * MAX_BLOB_BYTES)  # the largest allowed still arrives
        admin.publish(channel, b"after")
        got: dict[str, bytes] = {}
        wait_for(lambda: got.update(store.listen([ID], 0.2)) or got.get(ID) == b"after", 3, "the next one")
    finally:
        store.close()


def churn(server: RedisServer, identity: str, stop: threading.Event) -> None:
    """The attacker of item 3: a new lease holder at every look (PX 400 every 200 ms)."""
    client = server.client()
    lease_key = redis_keys("tokend", identity)[0]
    while not stop.is_set():
        client.set(lease_key, os.urandom(8).hex(), px=400)
        stop.wait(0.2)  # the attack's own rhythm


def test_lease_churn_cannot_keep_a_joining_host_waiting(
    tmp_path: Path, redis_server: RedisServer, fleet_log: pytest.LogCaptureFixture
) -> None:
    """Item 3: someone re-setting the lease key looked like a new leader at each look, and
    each restarted the one-lease budget (115 s without a token). The wait is bounded in
    total from when the host first needed the token (a lease and the request's timeout),
    said in the log and in the status's fleet health while it lasts; then it asks."""
    fleet, cred = in_process(tmp_path, redis_server)
    cred = dataclasses.replace(cred, timeout=1.0)  # the budget: 1 s lease + 1 s timeout
    stop = threading.Event()
    attacker = threading.Thread(target=churn, args=(redis_server, ID, stop))
    offers: list[Offer] = []
    waiter = threading.Thread(
        target=lambda: offers.append(fleet.offer(cred, ID, None, time.time(), due=True))
    )
    try:
        attacker.start()
        wait_for(lambda: redis_server.client().exists(redis_keys("tokend", ID)[0]), 3, "the churn")
        started = time.monotonic()
        waiter.start()

        def shown() -> object:
            health = fleet.health()
            return None if health is None else health.waiting.get("api")

        wait_for(shown, 3, "the wait in the fleet's health")
        wait = shown()
        assert isinstance(wait, FleetWait) and wait.what == "the fleet's leader's token"
        assert wait.until - wait.since == pytest.approx(2.0, abs=0.1)
        waiter.join(10)
        took = time.monotonic() - started
        assert offers, "still waiting after 10 s of lease churn"
        assert offers[0].token is None and not offers[0].follow  # it asks the IdP itself
        assert 1.9 < took < 2.6, took
        assert shown() is None
        assert "waiting up to 2.0s for the fleet's leader's token" in fleet_log.text
        assert "no token from the fleet's leader within 2.0s" in fleet_log.text
        # The budget counts from when the token was first needed: a second look at once
        # (our own request failed) does not wait again.
        again = time.monotonic()
        assert fleet.offer(cred, ID, None, time.time(), due=True) == Offer(waited=0.0)
        assert time.monotonic() - again < 0.5
        print(f"lease churn: asked the IdP itself after {took:.2f}s (budget 2 s)")
    finally:
        stop.set()
        attacker.join(5)
        waiter.join(10)
        fleet.stop()


def test_a_leader_slower_than_its_lease_is_waited_for_and_asks_alone(
    tmp_path: Path, redis_server: RedisServer, httpserver: HTTPServer
) -> None:
    """Item 7: an IdP answering in 2.5 s with a 1 s lease: the followers waited one lease
    and then each asked too (one request per host at a cold start). The leader's lease is
    renewed while its request is out, so the followers wait for it (up to the request's
    timeout) and take its token: one request for the fleet."""
    requests: list[float] = []

    def slow(request: Any) -> Any:
        from werkzeug import Response

        requests.append(time.monotonic())
        time.sleep(2.5)  # the slow identity provider itself
        SECRETS.add(f"tok-slow-{len(requests)}")
        body = {"access_token": f"tok-slow-{len(requests)}", "token_type": "bearer", "expires_in": 60}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/slow", method="POST").respond_with_handler(slow)
    hosts = []
    for n in range(3):
        home = tmp_path / f"host{n}"
        home.mkdir()
        text = fleet_block(home, redis_server) + credential_toml(
            httpserver.url_for("/slow"), home, extra='timeout = "5s"'
        )
        config = parse(text, home / "tokend.toml", environ={})
        assert config.fleet is not None
        fleet = Fleet(config.fleet, config.path, environ={})
        hosts.append((fleet, Refresher(config.credentials["api"], TokenCache(home / "state"), source=fleet)))
    results: dict[int, Any] = {}

    def refresh(n: int) -> None:
        client = TokenClient()
        try:
            results[n] = hosts[n][1].refresh(client, write_sinks=False)
        finally:
            client.close()

    threads = [threading.Thread(target=refresh, args=(n,)) for n in range(3)]
    try:
        for fleet, _ in hosts:
            fleet.start(lambda name: None)
        threads[0].start()
        wait_for(lambda: requests, 5, "the leader's request")
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert len(requests) == 1, f"{len(requests)} requests to a slow IdP for 3 hosts"
        assert sorted(results) == [0, 1, 2]
        assert {r.token.access_token for r in results.values()} == {"tok-slow-1"}
        assert [r.origin for r in results.values()].count(Origin.FLEET) == 2
    finally:
        for thread in threads:
            if thread.ident is not None:
                thread.join(15)
        for fleet, _ in hosts:
            fleet.stop()


def test_under_lease_churn_a_joining_daemon_and_tokend_token_get_a_token_within_the_budget(
    tmp_path: Path, idp: TokenEndpoint, redis_server: RedisServer, daemons: Start
) -> None:
    """Item 3 with real processes: a daemon joining during lease churn says what it waits
    for, and fills its sink after at most the budget (1 s lease + 1 s timeout); `tokend
    token` next to it, waiting on the identity lock the daemon holds meanwhile, answers
    within the same bound (it waited 25 s: the lock's own limit)."""
    idp.expires_in = 60
    home = tmp_path / "host0"
    home.mkdir()
    config = write_config(
        home, fleet_block(home, redis_server), credential_toml(idp.url, home, extra='timeout = "1s"')
    )
    identity = cache_key(load(config).credentials["api"], "client-1")
    stop = threading.Event()
    attacker = threading.Thread(target=churn, args=(redis_server, identity, stop))
    try:
        attacker.start()
        wait_for(lambda: redis_server.client().exists(redis_keys("tokend", identity)[0]), 3, "the churn")
        daemon = daemons(config, home)
        wait_for(lambda: "waiting up to" in daemon.log, 10, "the daemon to say it waits")
        started = time.monotonic()
        answer = run_tokend("token", "api", "-c", config, tmp=home, timeout=30)
        took = time.monotonic() - started
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() in idp.issued_at
        assert took < 4.0, f"tokend token took {took:.1f}s under lease churn"
        wait_for(lambda: read_token(sink_of(config)) is not None, 5, "the daemon's sink")
        assert "waiting up to 2.0s for the fleet's leader's token" in daemon.log
        assert "no token from the fleet's leader within 2.0s" in daemon.log
        assert len(idp.seen) == 1  # the daemon asked; `tokend token` read what it got
        print(f"lease churn: `tokend token` answered in {took:.2f}s")
    finally:
        stop.set()
        attacker.join(5)


# --------------------------------------------------------------------------- fail-over


def test_every_failover_error_has_a_meaning_for_the_lease_and_the_token() -> None:
    """READONLY and MASTERDOWN are a fail-over in progress (ended only by an accepted
    write, since PING still answers there), LOADING a node coming up, a reset or a
    timeout a primary gone or cut off; anything else (NOPERM) is not a fail-over. Each
    drops the leases and sends the credentials on their own."""
    cases = {
        ("ReadOnlyError", "You can't write against a read only replica."): Fault.READONLY,
        ("ResponseError", "READONLY You can't write against a read only replica."): Fault.READONLY,
        (
            "ResponseError",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        ): (Fault.MASTERDOWN),
        ("MasterDownError", "Link with MASTER is down and replica-serve-stale-data is set to 'no'."): (
            Fault.MASTERDOWN
        ),
        ("BusyLoadingError", "Redis is loading the dataset in memory"): Fault.LOADING,
        ("ResponseError", "LOADING Redis is loading the dataset in memory"): Fault.LOADING,
        ("ConnectionError", "Error 111 connecting to 127.0.0.1:6379. Connection refused."): Fault.RESET,
        ("ConnectionError", "Connection closed by server."): Fault.RESET,
        ("ConnectionResetError", "[Errno 104] Connection reset by peer"): Fault.RESET,
        ("MasterNotFoundError", "No master found for 'tokend'"): Fault.RESET,
        ("TimeoutError", "Timeout reading from 127.0.0.1:6379"): Fault.TIMEOUT,
        ("ConnectionError", "Error while reading from 127.0.0.1:6379 : timed out"): Fault.TIMEOUT,
        ("NoPermissionError", "NOPERM User tokend has no permissions to run the 'set' command"): Fault.OTHER,
        ("AuthenticationError", "invalid username-password pair"): Fault.OTHER,
        ("ResponseError", ""): Fault.OTHER,
    }
    for (name, message), fault in cases.items():
        assert fault_of(name, message) is fault, (name, message)
    for fault in Fault:
        means = meaning(fault)
        assert means.lease == LEASES_DROPPED and means.token.startswith("on its own")
        assert means.what.startswith("Redis unreachable") is (
            fault in (Fault.RESET, Fault.TIMEOUT, Fault.OTHER)
        )
        assert means.failover is (fault is not Fault.OTHER)
        assert means.needs_write is (fault in (Fault.READONLY, Fault.MASTERDOWN, Fault.LOADING))


@pytest.fixture
def other_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server with the same password: a primary to demote the first under."""
    home = tmp_path / "other-redis"
    home.mkdir()
    server = RedisServer(home, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def test_a_demoted_primary_refusing_writes_is_one_failover_until_a_write_is_accepted(
    tmp_path: Path, redis_server: RedisServer, other_redis: RedisServer, fleet_log: pytest.LogCaptureFixture
) -> None:
    """The primary demoted with REPLICAOF answers READONLY to every write but still
    answers PING: the leader's renewal fails with READONLY (a fail-over, not a lost
    lease to take again at once), the lease is dropped, the credential is on its own, and
    that is one episode (one log line with the primary's address and no password, one
    ``failover`` event) however many PINGs answer meanwhile; it ends when the node
    accepts writes again, within a lease, and the credential leads again."""
    config = parse(fleet_block(tmp_path, redis_server) + INLINE, tmp_path / "tokend.toml", environ={})
    assert config.fleet is not None
    events: list[FleetEvent] = []
    fleet = Fleet(config.fleet, config.path, environ={}, report=lambda event, name: events.append(event))
    cred = config.credentials["api"]
    admin = redis_server.client()
    try:
        fleet.start(lambda name: None)
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK and fleet.store.holds(ID)
        admin.config_set("masterauth", PASSWORD)
        admin.replicaof("127.0.0.1", other_redis.port)
        wait_for(lambda: not fleet.state.reachable, 3 * LEASE, "the renewal to meet READONLY")
        assert not fleet.store.holds(ID) and fleet.role("api") is Role.STANDALONE
        with pytest.raises(RedisDown) as refused:
            fleet.store.lead(ID)
        assert refused.value.fault is Fault.READONLY
        fleet.store.ping()  # PING answers on the demoted node: not the end of the episode
        deadline = time.monotonic() + 2 * LEASE  # several probes, each answered by PING
        while time.monotonic() < deadline:
            assert not fleet.state.reachable
            time.sleep(0.05)
        assert events.count(FleetEvent.FAILOVER) == 1 and events.count(FleetEvent.FALLBACK) == 1
        lines = [r.getMessage() for r in fleet_log.records if "fail-over in progress" in r.getMessage()]
        assert len(lines) == 1, lines
        assert redis_server.url in lines[0] and "readonly" in lines[0] and PASSWORD not in fleet_log.text
        admin.replicaof("NO", "ONE")
        promoted = time.monotonic()
        wait_for(lambda: fleet.state.reachable, LEASE + 1, "the node to accept writes again")
        assert time.monotonic() - promoted <= LEASE + 1
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK and fleet.store.holds(ID)
        assert events.count(FleetEvent.FAILOVER) == 1
    finally:
        fleet.stop()


def test_real_redis_failures_are_told_apart(tmp_path: Path, other_redis: RedisServer) -> None:
    """What a fail-over looks like from a client, produced for real: a primary cut off
    (DEBUG SLEEP) times out, a demoted one answers READONLY, a replica whose primary is
    gone answers MASTERDOWN (``replica-serve-stale-data no``), a stopped one is a reset."""
    SECRETS.add(PASSWORD)
    node = RedisServer(tmp_path, password=PASSWORD, extra=("--enable-debug-command", "yes"))
    node.start()
    store = FleetStore(FleetConfig(redis_url=node.url, lease=1.0), PASSWORD)
    admin = node.client()

    def fault(call: Any) -> Fault:
        with pytest.raises(RedisDown) as failed:
            call()
        return failed.value.fault

    try:
        assert store.lead(ID)
        slow = redis.Redis(host="127.0.0.1", port=node.port, password=PASSWORD, socket_timeout=5)
        sleeper = threading.Thread(target=lambda: slow.execute_command("DEBUG", "SLEEP", "1.5"))  # type: ignore[no-untyped-call]
        sleeper.start()

        def times_out() -> bool:  # False until the DEBUG SLEEP has begun
            try:
                store.ping()
            except RedisDown as exc:
                assert exc.fault is Fault.TIMEOUT, exc
                return True
            return False

        wait_for(times_out, 1.4, "PING to time out while Redis sleeps")
        sleeper.join()
        store.client.connection_pool.disconnect()
        admin.config_set("masterauth", PASSWORD)
        admin.replicaof("127.0.0.1", other_redis.port)
        assert fault(lambda: store.publish(ID, b"blob", 5)) is Fault.READONLY
        assert fault(lambda: store.probe(write=True)) is Fault.READONLY
        store.ping()  # PING still answers: only a write tells
        admin.config_set("replica-serve-stale-data", "no")
        other_redis.stop()
        wait_for(
            lambda: node.client().info("replication")["master_link_status"] == "down", 5, "the link down"
        )
        assert fault(lambda: store.get(ID)) is Fault.MASTERDOWN
        node.stop()
        assert fault(store.ping) is Fault.RESET
    finally:
        store.close()
        node.stop()
