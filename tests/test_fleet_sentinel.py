"""Fleet mode under Redis Sentinel: ``[fleet] sentinels`` and ``service_name`` read and
refused, and real ``tokend run`` daemons keeping one shared token through real fail-overs
(a primary, a replica and three sentinels on 127.0.0.1): ``SENTINEL FAILOVER``, then the
new primary killed with SIGKILL. No daemon dies, no sink is ever read expired or partial,
and every host is back on one shared token within a lease and a second of the promotion."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tokend.config import ConfigError, parse
from tokend.core.fleet import Fault, Shared, fault_of, redis_keys
from tokend.core.tokens import Token
from tokend.daemon.fleet import Fleet
from tokend.daemon.token_source import ASK
from tokend.io.fleet_crypto import key_material, seal, unseal

from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint
from .support.processes import DaemonProcess, Start, clean_env, run_tokend, wait_for
from .support.redis import REDIS_SERVER, RedisServer, free_port
from .support.sinks import read_token

FILE = Path("/etc/tokend/tokend.toml")
CRED = '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\nclient_secret = "b"\n'
SENTINELS = 'sentinels = ["127.0.0.1:26379", "[::1]:26380", "sentinel.internal:26381"]\nservice_name = "svc"'


def fleet_config(body: str) -> str:
    return f"[fleet]\n{body}\n{CRED}"


# --------------------------------------------------------------------------- the keys


def test_sentinels_and_service_name_instead_of_redis_url() -> None:
    config = parse(
        fleet_config(f'{SENTINELS}\nsentinel_password_env = "SENTINEL_PW"\nsentinel_username = "tokend"'),
        FILE,
        environ={},
    )
    fleet = config.fleet
    assert fleet is not None and fleet.redis_url is None and fleet.service_name == "svc"
    assert fleet.sentinels == ("127.0.0.1:26379", "[::1]:26380", "sentinel.internal:26381")
    assert fleet.shown() == "sentinel svc via 127.0.0.1:26379,[::1]:26380,sentinel.internal:26381"
    assert "SENTINEL_PW" in config.secret_variables()  # kept from hooks and exec's child
    refusals = {
        f'{SENTINELS}\nredis_url = "redis://r"': "fleet.sentinels: conflicts with redis_url",
        'sentinels = ["127.0.0.1:26379"]': "fleet.service_name: is required with sentinels",
        'sentinels = []\nservice_name = "svc"': "fleet.sentinels: must name at least one",
        'sentinels = "127.0.0.1:26379"\nservice_name = "svc"': 'must be a list of "HOST:PORT"',
        'sentinels = ["127.0.0.1"]\nservice_name = "svc"': "entry 1: must be HOST:PORT (the port",
        'sentinels = ["a:1", "a:1"]\nservice_name = "svc"': "names the same address twice",
        'sentinels = ["a:1", "hunter22:hunter22"]\nservice_name = "svc"': "entry 2: the port must be",
        'sentinels = [":hunter22@a:1"]\nservice_name = "svc"': "entry 1: must be HOST:PORT only",
        'sentinels = ["redis://a:1?password=hunter22"]\nservice_name = "svc"': "must be HOST:PORT only",
        'sentinels = ["[hunter22]:1"]\nservice_name = "svc"': "the host in brackets must be an IPv6",
        'sentinels = ["a b:1"]\nservice_name = "svc"': "without whitespace",
        'sentinels = ["a:1"]\nservice_name = "hunter22 svc"': "fleet.service_name: may only use",
        'redis_url = "redis://r"\nservice_name = "svc"': "fleet.service_name: applies only with sentinels",
        'redis_url = "redis://r"\nsentinel_password_env = "X"': "fleet.sentinel_password_env: applies only",
        f'{SENTINELS}\nsentinel_password_env = "hunter22 x"': "fleet.sentinel_password_env: is not an env",
        f'{SENTINELS}\nsentinel_password_env = "A"\nsentinel_password_file = "/p"': (
            "fleet.sentinel_password_env: conflicts with sentinel_password_file"
        ),
        'lease = "2s"': "fleet.redis_url: is required (or sentinels with service_name)",
    }
    for body, message in refusals.items():
        with pytest.raises(ConfigError) as info:
            parse(fleet_config(body), FILE, environ={})
        text = str(info.value)
        assert message in text and "\n" not in text, text
        assert "hunter22" not in text


def test_the_sentinel_pools_readonly_is_a_readonly() -> None:
    """redis-py's Sentinel pool turns a demoted primary's READONLY into a ConnectionError
    of its own: still a refused write (the episode ends with a write), not a reset."""
    assert fault_of("ConnectionError", "The previous master is now a slave") is Fault.READONLY
    assert fault_of("MasterNotFoundError", "No master found for 'svc'") is Fault.RESET


# --------------------------------------------------------------------------- real fail-overs

PASSWORD = "redis-pw-sentinel-0123"
SENTINEL_PASSWORD = "sentinel-pw-0123456"
LEASE = 1.0
EXPIRES_IN = 3  # due every 1.5 s (the 60 s margin does not fit a 3 s token)
ROTATION = EXPIRES_IN / 2
EPISODE = re.compile(r"fleet: Redis (refuses writes|unreachable|is loading)")
# The sentinels' ACL line for tokend: redis-py asks SENTINEL MASTERS, nothing else.
SENTINEL_ACL = "on >{password} -@all +sentinel|masters"


class Sentinel:
    """One ``redis-server --sentinel`` on 127.0.0.1 with a generated config."""

    def __init__(self, tmp: Path, n: int, primary: int) -> None:
        self.port = free_port()
        self.conf = tmp / f"sentinel-{n}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {tmp}\nlogfile {tmp}/sentinel-{n}.log\n"
            f"sentinel monitor svc 127.0.0.1 {primary} 2\n"
            f"sentinel auth-pass svc {PASSWORD}\n"
            "sentinel down-after-milliseconds svc 500\n"
            "sentinel failover-timeout svc 2000\n"
            "sentinel parallel-syncs svc 1\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
            f"user tokend {SENTINEL_ACL.format(password=SENTINEL_PASSWORD)}\n"
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(self.conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=SENTINEL_PASSWORD,
            socket_timeout=1,
            decode_responses=True,
        )

    def primary(self) -> int | None:
        try:
            answer: Any = self.client.sentinel_get_master_addr_by_name("svc")
        except redis.RedisError:
            return None
        return int(answer[1]) if answer else None

    def ready(self, replicas: int) -> bool:
        """It knows the two other sentinels and ``replicas`` healthy replicas."""
        try:
            others: Any = self.client.sentinel_sentinels("svc")
            found: Any = self.client.sentinel_slaves("svc")
        except redis.RedisError:
            return False
        healthy = [r for r in found if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])]
        return len(others) == 2 and len(healthy) == replicas

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Cluster:
    nodes: dict[int, RedisServer]
    sentinels: list[Sentinel]

    def primary(self) -> int | None:
        """The primary every sentinel names (None while they disagree)."""
        named = {s.primary() for s in self.sentinels}
        return named.pop() if len(named) == 1 else None

    def accepts_writes(self, port: int) -> bool:
        try:
            return bool(self.nodes[port].client().set("probe-by-test", b"1", px=1000))
        except redis.RedisError:
            return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    SECRETS.add(PASSWORD, SENTINEL_PASSWORD)
    home = tmp_path / "redis"
    home.mkdir()
    primary = RedisServer(home, password=PASSWORD, extra=("--masterauth", PASSWORD))
    primary.start()
    replica = RedisServer(
        home,
        password=PASSWORD,
        extra=("--masterauth", PASSWORD, "--replicaof", "127.0.0.1", str(primary.port)),
    )
    sentinels: list[Sentinel] = []
    try:
        replica.start()
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            10,
            "the replica in sync",
        )
        sentinels = [Sentinel(home, n, primary.port) for n in range(3)]
        wait_for(lambda: all(s.ready(1) for s in sentinels), 15, "the sentinels to know each other")
        yield Cluster({primary.port: primary, replica.port: replica}, sentinels)
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        replica.stop()
        primary.stop()


def fleet_block(home: Path, cluster: Cluster) -> str:
    for name, secret in (("redis.pass", PASSWORD), ("sentinel.pass", SENTINEL_PASSWORD)):
        (home / name).write_text(secret + "\n")
        (home / name).chmod(0o600)
    addresses = ", ".join(f'"127.0.0.1:{s.port}"' for s in cluster.sentinels)
    return (
        f'[fleet]\nsentinels = [{addresses}]\nservice_name = "svc"\n'
        f'password_file = "{home / "redis.pass"}"\n'
        f'sentinel_password_file = "{home / "sentinel.pass"}"\nsentinel_username = "tokend"\n'
        f'lease = "{int(LEASE * 1000)}ms"\n'
    )


def sink_of(config: Path) -> Path:
    return config.parent / "out" / "api.token"


@dataclass
class SinkWatch:
    """Reads every sink every few milliseconds, as a consumer would: each read must be a
    whole token that has not expired."""

    idp: TokenEndpoint
    sinks: list[Path]
    bad: list[str] = field(default_factory=list)
    reads: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            for sink in self.sinks:
                try:
                    access = read_token(sink)
                except (ValueError, UnicodeDecodeError) as exc:
                    self.bad.append(f"{sink}: partial: {exc}")
                    continue
                now = time.time()
                self.reads += 1
                if access is None:
                    self.bad.append(f"{sink}: gone")
                elif self.idp.expires_at(access) <= now:
                    self.bad.append(f"{sink}: {access} read {now - self.idp.expires_at(access):.3f}s expired")
            self.stopping.wait(0.005)


def one_shared(configs: list[Path]) -> str | None:
    tokens = {read_token(sink_of(c)) for c in configs}
    return tokens.pop() if len(tokens) == 1 else None


def rejoined(daemons: list[DaemonProcess]) -> bool:
    """Every daemon that saw an episode said it ended ("answers again"), as often."""
    return all(len(EPISODE.findall(d.log)) == d.log.count("answers again; rejoining") for d in daemons)


def subscribed(node: redis.Redis) -> int:
    """How many subscribers the fleet's channel has on this node."""
    channels = node.pubsub_channels("tokend:rotated:*")
    return int(node.pubsub_numsub(*channels)[0][1]) if len(channels) == 1 else 0


def stored_token(node: redis.Redis, config: Path) -> str:
    """The access token in the node's token key, unsealed with the credential's secret."""
    (name,) = node.keys("tokend:token:*")
    identity = (name.decode() if isinstance(name, bytes) else str(name)).rsplit(":", 1)[1]
    cred = parse(config.read_text(), config, environ={}).credentials["api"]
    blob = node.get(name)
    assert isinstance(blob, bytes)
    return unseal(blob, key_material(cred, {}), identity).token.access_token


def requests_between(idp: TokenEndpoint, start: float, end: float) -> int:
    return sum(1 for seen in list(idp.seen) if start <= seen.at <= end)


def rotations(idp: TokenEndpoint, configs: list[Path], count: int) -> int:
    """Watch ``count`` rotations, each shared by every sink within a second; return the
    IdP requests they cost."""
    before = len(idp.seen)
    for _ in range(count):
        issued = len(idp.issued_at)
        wait_for(lambda issued=issued: len(idp.issued_at) > issued, ROTATION + 2, "a rotation")  # type: ignore[misc]
        latest = max(idp.issued_at, key=lambda t: idp.issued_at[t])
        wait_for(lambda latest=latest: one_shared(configs) == latest, 1.0, f"every sink to hold {latest}")  # type: ignore[misc]
    return len(idp.seen) - before


def test_a_fleet_keeps_one_shared_token_through_sentinel_failovers(
    tmp_path: Path, idp: TokenEndpoint, cluster: Cluster, daemons: Start
) -> None:
    idp.expires_in = EXPIRES_IN
    configs = []
    for n in range(3):
        home = tmp_path / f"host{n}"
        home.mkdir()
        configs.append(write_config(home, fleet_block(home, cluster), credential_toml(idp.url, home)))
    fleet = [daemons(config, config.parent) for config in configs]
    wait_for(lambda: all(read_token(sink_of(c)) is not None for c in configs), 15, "every sink to fill")
    assert len(idp.seen) == 1, "the fleet started with one request, not one per host"
    watch = SinkWatch(idp, [sink_of(c) for c in configs])
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    figures: list[str] = []
    try:
        assert rotations(idp, configs, 2) <= 2

        def fail_over(what: str, act: object, most: int) -> None:
            """``most``: the IdP requests the episode may cost, its own rotations included."""
            old = cluster.primary()
            assert old is not None
            started = time.time()
            act()  # type: ignore[operator]
            wait_for(
                lambda: (new := cluster.primary()) not in (None, old) and cluster.accepts_writes(new),
                10,
                f"a new primary after {what}",
            )
            promoted = time.time()
            new = cluster.primary()
            assert new is not None
            node = cluster.nodes[new].client()
            wait_for(
                lambda: (
                    rejoined(fleet) and subscribed(node) == len(fleet) and one_shared(configs) is not None
                ),
                LEASE + 1,
                "every host on the new primary, and on one shared token",
            )
            back = time.time() - promoted
            # The shared token from here on: one request a rotation, every sink within 1 s,
            # and it is the new primary that holds it.
            after = rotations(idp, configs, 2)
            assert stored_token(node, configs[0]) == one_shared(configs)
            episode = requests_between(idp, started, promoted + back)
            figures.append(
                f"{what}: promoted {promoted - started:.1f}s after, {episode} IdP requests meanwhile "
                f"(~{max(1.0, (promoted + back - started) / ROTATION):.1f} rotations, 3 hosts), "
                f"back on one shared token {back:.2f}s after the promotion, then {after} for 2 rotations"
            )
            assert after <= 3 and episode <= most, figures[-1]
            assert all(d.proc.poll() is None for d in fleet), "a daemon died"

        # No outage: every host moves at its next renewal; at most the rotations' own.
        fail_over("SENTINEL FAILOVER", lambda: cluster.sentinels[0].client.sentinel_failover("svc"), 2)
        victim = cluster.primary()
        assert victim is not None
        # Until a replica is promoted, each host on its own once a rotation (3 at most in
        # the ~2 rotations it lasts), then the shared token's.
        kill = cluster.nodes[victim].proc.kill  # type: ignore[union-attr]
        fail_over("kill -9 of the primary", kill, len(fleet) + 2)
        # `tokend status` names the service, its sentinels and the primary they name now.
        now_primary = cluster.primary()
        shown = f"fleet: Redis sentinel svc via 127.0.0.1:{cluster.sentinels[0].port},"

        def status_names_it() -> bool:
            out = run_tokend("status", "-c", configs[0], tmp=tmp_path, env=clean_env(tmp_path)).stdout
            return shown in out and f"(primary 127.0.0.1:{now_primary}) reachable" in out

        wait_for(status_names_it, 5, "tokend status to name the new primary")
    finally:
        watch.stopping.set()
        watcher.join(5)
        print("\n".join(figures))
    assert watch.reads > 1000 and not watch.bad, watch.bad[:5]
    for daemon in fleet:
        log = daemon.log
        assert daemon.proc.poll() is None and "Traceback" not in log, log
        # SENTINEL FAILOVER leaves the old primary writable for seconds: said once, and left.
        assert log.count("name a new primary") == 1, log
        assert SENTINEL_PASSWORD not in log and PASSWORD not in log
        assert "sentinel svc via 127.0.0.1:" in log  # where the fleet's Redis is, said at start


ID = "0123456789abcdef0123456789abcdef"
INLINE = '[credentials.api]\ntoken_url = "https://idp.example.com/t"\nclient_id = "a"\nclient_secret = "b"\n'


def test_subscribed_again_the_listener_reads_the_token_key_once(tmp_path: Path, cluster: Cluster) -> None:
    """Pub/sub does not survive a fail-over (nor a subscriber cut off): what was published
    in the gap is not replayed. Subscribed again (through the sentinels, on the primary
    they name), the listener reads the token key once and delivers a token it would take."""
    config = parse(fleet_block(tmp_path, cluster) + INLINE, tmp_path / "tokend.toml", environ={})
    assert config.fleet is not None
    fleet = Fleet(config.fleet, config.path, environ={})
    cred = config.credentials["api"]
    woken: list[str] = []
    primary = cluster.primary()
    assert primary is not None
    admin = cluster.nodes[primary].client()
    channel = redis_keys("tokend", ID)[2]
    try:
        fleet.start(woken.append)
        assert fleet.offer(cred, ID, None, time.time(), due=True) == ASK
        wait_for(lambda: admin.pubsub_numsub(channel)[0][1] == 1, 5, "the listener to subscribe")
        assert fleet.store.primary() == f"127.0.0.1:{primary}"
        # A leader elsewhere stored a token while our subscription was gone: SET, no PUBLISH.
        now = time.time()
        newer = Token("tok-gap", now + 60, now, "Bearer", "api")
        blob = seal(Shared(ID, newer, "host-b", 60, redis_clock(admin)), key_material(cred, {}))
        admin.set(redis_keys("tokend", ID)[1], blob, px=60_000)
        assert not woken and ID not in fleet.state.inbox
        assert admin.client_kill_filter(_type="pubsub") >= 1  # ours, and the sentinels' own
        wait_for(lambda: woken == ["api"], 3, "the token key read once after subscribing again")
        assert fleet.state.inbox[ID] == blob and fleet.state.reachable
        assert admin.pubsub_numsub(channel)[0][1] == 1
        assert fleet.store.take_rejoined() == set()  # once, not at every turn
    finally:
        fleet.stop()


def redis_clock(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000
