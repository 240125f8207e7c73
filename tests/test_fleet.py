"""Fleet mode (issue 13): core/fleet.py's rules on an explicit clock, io/fleet_crypto.py's
sealing, and real `tokend run` daemons sharing one token through a real redis-server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.config import ConfigError, CredentialConfig, load, parse
from tokend.core.fleet import (
    Role,
    Shared,
    decode,
    encode,
    follow_until,
    jitter_for,
    judge,
    may_follow,
    redis_keys,
)
from tokend.core.tokens import Token
from tokend.io.cache import cache_key
from tokend.io.fleet_crypto import Undecryptable, key_material, seal, unseal

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


def test_a_stored_token_is_used_only_when_for_us_unexpired_and_newer() -> None:
    mine = token("tok-old", obtained=NOW - 50)
    newer = Shared(ID, token("tok-new", obtained=NOW - 1), "host-a")
    assert judge(newer, identity=ID, ours=mine, now=NOW) is None
    assert judge(newer, identity=ID, ours=None, now=NOW) is None
    assert judge(newer, identity="other", ours=mine, now=NOW) == "it is for another identity"
    expired = Shared(ID, token("tok-x", obtained=NOW - 100), "host-a")
    assert judge(expired, identity=ID, ours=None, now=NOW) == "it has expired"
    assert judge(expired, identity=ID, ours=None, now=NOW - 90) is None  # the same, earlier
    future = Shared(ID, token("tok-f", obtained=NOW + 3600), "host-a")
    assert judge(future, identity=ID, ours=None, now=NOW) == "it was stamped in the future"
    same = Shared(ID, mine, "host-a")
    assert judge(same, identity=ID, ours=mine, now=NOW) == "it is not newer than ours"
    # Two leaders at once: the older of their two tokens never replaces the newer.
    assert judge(Shared(ID, mine, "b"), identity=ID, ours=newer.token, now=NOW) == "it is not newer than ours"
    # Ours has expired: any valid token is better.
    assert judge(Shared(ID, mine, "b"), identity=ID, ours=token(obtained=NOW - 70), now=NOW) is None


def test_what_is_shared_is_what_a_sink_holds_and_never_the_refresh_token() -> None:
    shared = Shared(ID, token(), "host-a")
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


def test_a_follower_looks_again_within_half_a_lease_and_before_its_token_runs_out() -> None:
    assert follow_until(NOW, lease=10, ours=token(life=60)) == NOW + 5
    assert follow_until(NOW, lease=10, ours=token(obtained=NOW - 58, life=60)) == NOW + 1  # 2 s left
    assert follow_until(NOW, lease=10, ours=None) == NOW + 5
    assert follow_until(NOW, lease=1, ours=token(obtained=NOW - 60, life=60)) == NOW + 0.5  # expired
    assert may_follow(token(life=60), NOW, lease=10)
    assert not may_follow(token(obtained=NOW - 56, life=60), NOW, lease=10)  # 4 s left: ask ourselves
    assert not may_follow(None, NOW, lease=10)
    assert jitter_for(Role.LEADER, 0.7) == -0.7 and jitter_for(Role.LEADER, -0.7) == -0.7
    assert jitter_for(Role.FOLLOWER, -0.7) == 0.7
    assert jitter_for(None, -0.7) == jitter_for(Role.STANDALONE, -0.7) == -0.7


def test_every_key_is_under_the_prefix() -> None:
    assert redis_keys("tk", ID) == (f"tk:lease:{ID}", f"tk:token:{ID}", f"tk:rotated:{ID}")


def test_only_the_same_secret_and_identity_open_a_sealed_token() -> None:
    shared = Shared(ID, token(), "host-a")
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
    assert handover < 1.5 + LEASE + 1.0, handover
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
            Shared(identity, Token(access, obtained + life, obtained), "elsewhere"),
            b"secret:" + secret.encode(),
        )
        assert key_material(cred, {}) == b"secret:s3cret-value"
        client.set(redis_keys("tokend", identity)[1], blob)
    started = [daemons(c, c.parent) for c in configs]
    wait_for(lambda: all(read_token(sink_of(c)) is not None for c in configs), 20, "every sink to fill")
    assert read_token(sink_of(configs[0])) == "tok-shared-fresh"
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

    def cred_with_key(name: str) -> CredentialConfig:
        key = ec.generate_private_key(ec.SECP256R1())
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
    from tokend.io.assertion import public_key_fingerprint

    material = key_material(one, {})
    assert material.startswith(b"private-key:") and material == key_material(one, {})
    assert material != key_material(two, {})
    public = public_key_fingerprint(one, {})
    assert public is not None and public.encode() not in material
    blob = seal(Shared(ID, token(), "host-a"), material)
    with pytest.raises(Undecryptable):
        unseal(blob, b"public-key:" + public.encode(), ID)  # what a JWKS reader could derive


def test_the_readmes_redis_acl_is_enough(tmp_path: Path, redis_server: RedisServer) -> None:
    """README, "Fleet mode": the ACL a deployment should give tokend, applied to a real
    Redis, lets the store do everything it does, and nothing outside its prefix."""
    import re

    from redis.exceptions import NoPermissionError

    from tokend.config.schema import FleetConfig
    from tokend.io.fleet_store import FleetStore

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
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
    store = FleetStore(fleet, tmp_path / "tokend.toml", {})
    other = FleetStore(fleet, tmp_path / "tokend.toml", {})
    try:
        store.ping()
        assert store.listen([ID], 0.05) == []  # subscribed
        assert store.lead(ID) and not other.lead(ID)
        assert store.renew() == []
        store.publish(ID, b"blob", 5)
        assert store.get(ID) == b"blob"
        other.listen([ID], 0.05)  # subscribed now
        store.publish(ID, b"blob2", 5)
        wait_for(lambda: (ID, b"blob2") in other.listen([ID], 0.2), 3, "the publication")
        admin.script_flush()  # the renewal falls back to SCRIPT LOAD
        assert store.renew() == []
        store.release_all()
        assert other.lead(ID)
        with pytest.raises(NoPermissionError):
            store.client.get("elsewhere")
    finally:
        store.close()
        other.close()
