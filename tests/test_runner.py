"""The daemon's timing, in-process on a fake clock: hours of rotations, outages and clock
steps in milliseconds. Real HTTP to a real loopback IdP, real files, the real policy; only
time is simulated (tokend.daemon.clock and tokend.daemon.jobs are the daemon's own seams).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from werkzeug import Response

from tokend.config import CredentialConfig, load
from tokend.core import policy
from tokend.core.fleet import Role, follow_deadline
from tokend.core.health import CredentialStatus
from tokend.core.results import Attempt, Result
from tokend.core.tokens import Token
from tokend.daemon.fleet import Fleet
from tokend.daemon.reporting import Observer
from tokend.daemon.runner import Runner
from tokend.daemon.token_source import ASK, STANDALONE, Offer, TokenSource
from tokend.io.cache import TokenCache, cache_key
from tokend.io.fleet_store import FleetStore
from tokend.io.token_client import TokenClient

from .support.clock import FakeClock, ManualJobs, runner_on
from .support.configs import credential_toml, write_config
from .support.endpoint import Seen, TokenEndpoint, answer
from .support.redis import RedisServer
from .support.sinks import read_token


class Recorder(Observer):
    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def attempted(self, attempt: Attempt, cred: CredentialConfig, status: CredentialStatus) -> None:
        self.attempts.append(attempt)


class Harness:
    """A Runner with one credential, on a fake clock that starts at the real time (the
    test IdP stamps tokens with its own clock; it only counts them)."""

    def __init__(
        self, idp: TokenEndpoint, tmp: Path, extra: str = "", seed: int = 1, source: TokenSource = STANDALONE
    ) -> None:
        self.idp = idp
        self.config = load(write_config(tmp, credential_toml(idp.url, tmp, extra=extra)))
        self.clock = FakeClock()
        self.jobs = ManualJobs(self.clock)
        self.recorder = Recorder()
        self.runner = Runner(
            self.jobs,
            self.recorder,
            cache=TokenCache(self.config.state_dir),
            clock=self.clock,
            rng=random.Random(seed),
            environ={},
            on_ran=lambda name, first: None,
            client_factory=lambda: TokenClient(clock=self.clock.time),
            source=source,
        )
        self.sink = tmp / "out" / "api.token"

    def start(self) -> Attempt:
        self.runner.add(self.config.credentials["api"])
        self.jobs.run_until(self.clock.monotonic())
        return self.last

    @property
    def last(self) -> Attempt:
        return self.recorder.attempts[-1]

    def next_in(self) -> float:
        at = self.jobs.next_at("api")
        assert at is not None
        return at - self.clock.monotonic()

    def run_next(self) -> Attempt:
        """Move the clock to the next run and let it happen."""
        count = len(self.recorder.attempts)
        self.jobs.run_until(self.clock.monotonic() + self.next_in())
        assert len(self.recorder.attempts) == count + 1
        return self.last

    def token_in_sink(self) -> str | None:
        return read_token(self.sink)


@pytest.fixture
def harness(idp: TokenEndpoint, tmp_path: Path) -> Callable[..., Harness]:
    def make(extra: str = "", seed: int = 1) -> Harness:
        return Harness(idp, tmp_path, extra, seed)

    return make


def test_an_hour_token_is_replaced_at_80_percent_give_or_take_the_jitter(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    first = h.start()
    assert first.fetched and h.token_in_sink() == "tok-1"
    for n in range(2, 6):  # four hours of rotations
        wait = h.next_in()
        assert 0.75 * 3600 <= wait <= 0.85 * 3600
        attempt = h.run_next()
        assert attempt.result is Result.SUCCESS and attempt.fetched
        assert h.token_in_sink() == f"tok-{n}"
    assert len(h.idp.seen) == 5


def test_an_outage_backs_off_keeps_the_token_then_recovers(
    harness: Callable[..., Harness], idp: TokenEndpoint
) -> None:
    h = harness('min_ttl_margin = "60s"')
    h.start()
    h.jobs.run_until(h.clock.monotonic() + h.next_in() - 1)  # just before the due time
    idp.fault = answer(503)
    delays = []
    for _ in range(6):
        attempt = h.run_next()
        assert attempt.result is Result.RETRYABLE_ERROR and attempt.token is not None
        delays.append(h.next_in())
        assert h.token_in_sink() == "tok-1"  # still valid: readers keep working
    ceilings = [min(policy.BACKOFF_CAP, 2.0**n) for n in range(6)]
    assert all(d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    idp.fault = None
    recovered = h.run_next()
    assert recovered.result is Result.SUCCESS and h.token_in_sink() == "tok-2"


def test_without_a_valid_token_a_long_outage_retries_within_ten_seconds(
    harness: Callable[..., Harness], idp: TokenEndpoint
) -> None:
    idp.expires_in = 60
    h = harness('min_ttl_margin = "0s"')
    h.start()
    idp.fault = answer(503)
    waited = 0.0
    while waited < 600:  # ten minutes of outage, long past the token's expiry
        attempt = h.run_next()
        delay = h.next_in()
        waited += delay
        if attempt.token is None:
            assert delay <= policy.NO_TOKEN_CAP, (waited, delay)
    assert h.last.token is None and h.last.failures > 20
    idp.fault = None
    back = h.clock.monotonic()
    h.jobs.run_until(back + 12)
    assert h.last.result is Result.SUCCESS and h.token_in_sink() == "tok-2"


def test_retry_after_is_honoured(harness: Callable[..., Harness], idp: TokenEndpoint) -> None:
    idp.then(503, None, {"Retry-After": "120"})
    h = harness()
    first = h.start()
    assert first.result is Result.RETRYABLE_ERROR and first.retry_after == 120
    assert h.next_in() == pytest.approx(120)
    assert h.run_next().result is Result.SUCCESS


def test_an_unfixable_error_is_retried_at_the_cap_and_at_once_after_a_reload(
    harness: Callable[..., Harness], idp: TokenEndpoint
) -> None:
    idp.fault = answer(401, '{"error": "invalid_client"}')
    h = harness()
    attempt = h.start()
    assert attempt.result is Result.FATAL_ERROR
    assert h.next_in() == pytest.approx(policy.BACKOFF_CAP)
    idp.fault = None
    h.runner.retry_fatal(["api"])  # what an applied reload does for an unchanged credential
    assert h.next_in() == 0
    assert h.run_next().result is Result.SUCCESS


def test_a_wall_clock_stepped_back_does_not_postpone_the_refresh(
    harness: Callable[..., Harness], idp: TokenEndpoint
) -> None:
    idp.expires_in = 600
    h = harness()
    h.start()
    due_in = h.next_in()
    h.clock.step_wall(-7200)  # the wall clock goes back two hours; monotonic time does not
    h.runner.rearm_all()  # what the main loop does when it sees the clocks part
    assert h.next_in() == pytest.approx(due_in)
    attempt = h.run_next()
    assert attempt.fetched and h.token_in_sink() == "tok-2"  # not kept as "fresh" for 2 h more


def test_a_sub_second_token_is_asked_for_at_most_every_five_seconds(
    harness: Callable[..., Harness], idp: TokenEndpoint
) -> None:
    def tiny(_: Seen) -> Response:
        n = len(idp.seen)
        return Response(
            f'{{"access_token": "tiny-{n}", "expires_in": 0.001}}', content_type="application/json"
        )

    idp.fault = tiny
    h = harness('min_ttl_margin = "0s"')
    h.start()
    h.jobs.run_for(60)
    assert 10 <= len(idp.seen) <= 13  # one every 5 s, not nine a second


# --------------------------------------------------------------------------- fleet mode's seam


class ScriptedSource(TokenSource):
    """The fleet's side of the seam, scripted: what Redis would offer (tests/test_fleet.py
    runs the real one against a real redis-server)."""

    def __init__(self) -> None:
        self.offers: list[Offer] = []
        self.as_role: Role | None = Role.FOLLOWER
        self.look: float | None = None
        self.obtained_tokens: list[Token] = []

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        return self.offers.pop(0) if self.offers else ASK

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        self.obtained_tokens.append(token)

    def role(self, name: str) -> Role | None:
        return self.as_role

    def next_look(self, name: str) -> float | None:
        return self.look


def test_a_token_from_the_fleet_goes_to_the_sinks_and_is_due_by_its_own_age(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    source = ScriptedSource()
    h = Harness(idp, tmp_path, source=source)
    clock = h.clock
    shared = Token("tok-shared", clock.time() + 2400, clock.time() - 1200)  # a third of its life gone
    source.offers = [Offer(shared)]
    attempt = h.start()
    assert attempt.result is Result.SUCCESS and not attempt.fetched and idp.seen == []
    assert h.token_in_sink() == "tok-shared"
    status = h.runner.slots["api"].status
    assert status.role == "follower" and status.last_success == clock.time()
    # Due at 80 % of its life counted from when the leader got it, in the late half of
    # the jitter (the leader's is the early half): 1680 s to 1800 s from now.
    assert 0.8 * 3600 - 1200 <= h.next_in() <= 0.85 * 3600 - 1200
    assert source.obtained_tokens == []


def test_a_follower_waits_for_its_leader_and_a_leader_comes_due_first(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    source = ScriptedSource()
    source.as_role = Role.LEADER
    h = Harness(idp, tmp_path, source=source)
    clock = h.clock
    first = h.start()
    assert first.fetched and source.obtained_tokens == [first.token]  # the leader publishes
    assert 0.75 * 3600 <= h.next_in() <= 0.8 * 3600  # the early half of the jitter
    # Now a follower: at its due time the leader is on it; it keeps its token and looks
    # again when the source says, asking nobody.
    source.as_role = Role.FOLLOWER
    source.offers = [Offer(follow=True)]
    due = h.next_in()
    source.look = clock.time() + due + 7.5
    attempt = h.run_next()
    assert attempt.result is Result.SUCCESS and not attempt.fetched and len(idp.seen) == 1
    assert h.token_in_sink() == "tok-1"
    assert h.next_in() == pytest.approx(7.5)
    assert h.runner.slots["api"].status.role == "follower"


# --------------------------------------------------------------------------- second-round review


def test_a_followers_late_jitter_never_passes_the_moment_it_stops_waiting(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """Finding 4: with refresh_at above 0.9 and no margin, a follower's due time (the late
    half of the jitter) landed after its follow deadline, at the token's expiry. It is
    capped at that deadline, where it asks the identity provider itself if need be."""
    idp.expires_in = 100
    source = ScriptedSource()  # a follower whose leader did not deliver: it asked itself
    h = Harness(idp, tmp_path, extra='refresh_at = 0.95\nmin_ttl_margin = "0s"', source=source)
    first = h.start()
    assert first.fetched and first.token is not None
    deadline = follow_deadline(first.token, refresh_at=0.95, min_ttl_margin=0.0, timeout=10.0)
    assert deadline == pytest.approx(first.token.expires_at - 2.5)  # half of what refresh_at leaves
    jitter = abs(random.Random(1).uniform(-1, 1))  # the runner's first draw: the late half
    uncapped = policy.refresh_due_at(first.token, refresh_at=0.95, min_ttl_margin=0.0, jitter=jitter)
    assert uncapped > deadline  # what it was armed for before
    assert h.next_in() == pytest.approx(deadline - first.token.obtained_at)
    source.as_role = Role.LEADER  # a leader's (early) due time is its own
    second = h.run_next()
    assert second.fetched and second.token is not None
    assert h.next_in() <= 0.95 * 100


def test_a_credential_removed_while_its_run_is_in_flight_keeps_no_lease(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """Finding 5: a reload removed the credential while its run was in flight; the fleet
    forgot it at once, then the run's offer() put it back and its lease was renewed for
    good. The fleet forgets it only when the run has ended (a real redis-server)."""
    server = RedisServer(tmp_path)
    server.start()
    fleet_table = f'[fleet]\nredis_url = "{server.url}"\nlease = "1s"\n'
    config = load(write_config(tmp_path, fleet_table, credential_toml(idp.url, tmp_path)))
    assert config.fleet is not None
    fleet = Fleet(config.fleet, config.path, environ={})
    other = FleetStore(config.fleet, None)
    identity = cache_key(config.credentials["api"], "client-1")
    clock = FakeClock()
    jobs = ManualJobs(clock)

    def reload_comes_in_flight() -> TokenClient:  # in the run, before the fleet's offer()
        runner.remove("api")
        return TokenClient(clock=clock.time)

    runner = runner_on(jobs, config.state_dir, client_factory=reload_comes_in_flight, source=fleet)
    try:
        runner.add(config.credentials["api"])
        jobs.run_until(clock.monotonic())
        assert len(idp.seen) == 1  # the run went on, as the leader
        assert fleet.state.identities == {} and fleet.role("api") is None
        assert not fleet.store.holds(identity) and other.lead(identity)  # at once
        assert jobs.next_at("api") is None
    finally:
        fleet.stop()
        other.release_all()
        other.close()
        server.stop()


def test_a_removed_credentials_sinks_go_only_once_its_run_in_flight_has_ended(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """A reload removed a credential whose run was in flight: its remove_on_stop sink was
    deleted at once, and the run then wrote it again, to stay for good. The deletion now
    waits for the run."""
    sinks = f'[[credentials.api.sink]]\npath = "{tmp_path}/out/api.token"\nremove_on_stop = true\n'
    config = load(write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks)))
    sink = tmp_path / "out" / "api.token"
    clock = FakeClock()
    jobs = ManualJobs(clock)
    removed: list[str] = []

    def remove_sinks(cred: CredentialConfig) -> None:
        sink.unlink()
        removed.append(cred.name)

    def reload_comes_in_flight() -> TokenClient:  # in the run, before its request
        runner.remove("api", then=remove_sinks)
        assert removed == []  # not while the run is in flight
        return TokenClient(clock=clock.time)

    runner = runner_on(jobs, config.state_dir, client_factory=reload_comes_in_flight)
    runner.add(config.credentials["api"])
    jobs.run_until(clock.monotonic())
    assert len(idp.seen) == 1  # the run went on and wrote its sink...
    assert removed == ["api"] and not sink.exists()  # ...which was removed once it ended


def test_a_sink_a_current_credential_writes_survives_the_cleanup_of_a_removed_one(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    """A reload renamed a credential (same remove_on_stop sink) while the old one's run was
    in flight: the new one wrote the sink, then the old one's deferred cleanup deleted it,
    for most of a token's life. The cleanup keeps every sink a current credential writes."""
    from tokend.daemon.reloader import Reloader

    sink = tmp_path / "out" / "shared.token"

    def sinks(name: str) -> str:
        return f'[[credentials.{name}.sink]]\npath = "{sink}"\nremove_on_stop = true\n'

    old = load(write_config(tmp_path, credential_toml(idp.url, tmp_path, sinks=sinks("api"))))
    (tmp_path / "new").mkdir()
    renamed = credential_toml(idp.url, tmp_path, name="api2", sinks=sinks("api2"))
    new = load(write_config(tmp_path / "new", renamed))
    clock = FakeClock()
    jobs = ManualJobs(clock)
    reloaded: list[bool] = []

    def reload_comes_in_flight() -> TokenClient:  # in api's run, before its request
        if not reloaded:
            reloaded.append(True)
            plan = Reloader(environ={}, touched=lambda: None).apply(runner, old, new, set())
            assert plan.removed == ("api",) and plan.added == ("api2",), plan
            runner.run("api2", runner.slots["api2"].generation, False, True)  # another worker
            assert sink.exists()
        return TokenClient(clock=clock.time)

    runner = runner_on(jobs, old.state_dir, client_factory=reload_comes_in_flight)
    runner.add(old.credentials["api"])
    jobs.run_until(clock.monotonic())  # api's run ends: its cleanup runs now
    assert reloaded and sink.exists()
    next_run = jobs.next_at("api2")
    assert next_run is not None and next_run > clock.monotonic() + 60  # nobody would rewrite it soon
