"""tokend/daemon/refresher.py: one credential end to end. The cached token while it is
fresh, else the token source's say, else the identity provider (over real HTTP to the test
endpoint on 127.0.0.1); the new token remembered; then every sink, each in its own try; and
one Attempt saying what happened. Real files, on the fake clock."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tokend.config import ConfigError, CredentialConfig, load
from tokend.core.results import Attempt, Origin, Result
from tokend.core.tokens import Token
from tokend.daemon.refresher import Refresher
from tokend.daemon.token_source import ASK, Offer, TokenSource
from tokend.io.cache import CacheEntry, TokenCache, cache_key
from tokend.io.token_client import TokenClient

from .support.clock import FakeClock
from .support.configs import credential_toml, write_config
from .support.endpoint import SECRETS, TokenEndpoint, answer
from .support.sinks import read_token

LIFETIME = 3600  # the test endpoint's expires_in


class Setup:
    """One credential, its cache and a refresher on the fake clock."""

    def __init__(self, idp: TokenEndpoint, tmp: Path, extra: str = "", sinks: str | None = None) -> None:
        self.idp, self.tmp = idp, tmp
        self.config = load(write_config(tmp, credential_toml(idp.url, tmp, extra=extra, sinks=sinks)), {})
        self.cred = self.config.credentials["api"]
        self.cache = TokenCache(self.config.state_dir)
        self.clock = FakeClock()
        self.sink = tmp / "out" / "api.token"

    def refresher(self, source: TokenSource | None = None, cred: CredentialConfig | None = None) -> Refresher:
        kw = {} if source is None else {"source": source}
        return Refresher(cred or self.cred, self.cache, environ={}, clock=self.clock.time, **kw)

    def client(self) -> TokenClient:
        return TokenClient(clock=self.clock.time)

    def refresh(
        self,
        source: TokenSource | None = None,
        *,
        force: bool = False,
        fresh_until: float | None = None,
        write_sinks: bool = True,
    ) -> Attempt:
        client = self.client()
        try:
            return self.refresher(source).refresh(
                client, force=force, fresh_until=fresh_until, write_sinks=write_sinks
            )
        finally:
            client.close()

    @property
    def key(self) -> str:
        return cache_key(self.cred, "client-1")

    def cached(self) -> CacheEntry | None:
        return self.cache.load(self.key)


@pytest.fixture
def setup(idp: TokenEndpoint, tmp_path: Path) -> Setup:
    return Setup(idp, tmp_path)


def sinks_toml(tmp: Path, *sinks: str) -> str:
    return "".join(f'[[credentials.api.sink]]\npath = "{tmp}/out/{s}"\n' for s in sinks)


# --------------------------------------------------------------------------- cache or identity provider


def test_without_a_cached_token_the_idp_is_asked_and_the_token_remembered(setup: Setup) -> None:
    attempt = setup.refresh()
    assert attempt.result is Result.SUCCESS and attempt.fetched and attempt.origin is Origin.IDP
    assert attempt.token is not None and attempt.token.access_token == "tok-1"
    assert attempt.token.obtained_at == setup.clock.time()  # stamped by the fake clock
    (seen,) = setup.idp.seen
    assert seen.basic_auth == ("client-1", "s3cret-value")
    entry = setup.cached()
    assert entry is not None and entry.token == attempt.token
    assert (entry.wire, entry.auth) == ("form", "basic")  # what worked, for next time
    assert read_token(setup.sink) == "tok-1" and attempt.sinks_written == 1


def test_a_fresh_cached_token_is_kept_without_a_request_or_the_secret(setup: Setup) -> None:
    setup.refresh()
    (setup.tmp / "api.secret").unlink()  # read only when the identity provider is asked
    setup.clock.advance(0.5 * LIFETIME)
    setup.sink.unlink()
    kept = setup.refresh()
    assert kept.result is Result.SUCCESS and not kept.fetched and kept.origin is Origin.CACHE
    assert kept.token is not None and kept.token.access_token == "tok-1"
    assert len(setup.idp.seen) == 1
    assert read_token(setup.sink) == "tok-1" and kept.sinks_written == 1  # the sink caught up
    assert setup.refresh().sinks_written == 0  # a sink that holds it already is not rewritten


def test_a_token_past_its_due_time_is_replaced(setup: Setup) -> None:
    setup.refresh()
    setup.clock.advance(0.9 * LIFETIME)  # still valid, but due (refresh_at 0.8)
    attempt = setup.refresh()
    assert attempt.fetched and attempt.token is not None and attempt.token.access_token == "tok-2"
    assert read_token(setup.sink) == "tok-2"


def test_force_asks_even_for_a_fresh_token(setup: Setup) -> None:
    setup.refresh()
    attempt = setup.refresh(force=True)
    assert attempt.fetched and len(setup.idp.seen) == 2 and read_token(setup.sink) == "tok-2"


def test_the_daemons_due_time_decides_freshness_when_given(setup: Setup) -> None:
    """``fresh_until`` (the jittered due time) over the policy's, later or earlier; never
    past the token's expiry."""
    setup.refresh()
    setup.clock.advance(0.82 * LIFETIME)  # the policy alone calls it due (refresh_at 0.8)
    assert not setup.refresh(fresh_until=setup.clock.time() + 60).fetched
    assert setup.refresh(fresh_until=setup.clock.time()).fetched  # tok-2, obtained now
    setup.clock.advance(11)  # the policy alone calls tok-2 fresh
    assert setup.refresh(fresh_until=setup.clock.time() - 1).fetched
    setup.clock.advance(2 * LIFETIME)
    assert setup.refresh(fresh_until=setup.clock.time() + 60).fetched  # expired: due whatever it says


def test_the_cached_refresh_token_is_sent(idp: TokenEndpoint, setup: Setup) -> None:
    idp.refresh_tokens = True
    setup.refresh()
    setup.refresh(force=True)
    assert idp.seen[1].params == {"grant_type": "refresh_token", "refresh_token": "refresh-1"}
    entry = setup.cached()
    assert entry is not None and entry.token.refresh_token == "refresh-2"


def test_what_worked_is_asked_first_next_time_even_by_another_client(
    idp: TokenEndpoint, tmp_path: Path
) -> None:
    setup = Setup(idp, tmp_path, extra='client_auth = "auto"')
    idp.then(401, {"error": "invalid_client"})  # this server wants the secret in the body
    first = setup.refresh()
    assert first.fetched and [s.basic_auth is None for s in idp.seen] == [False, True]
    setup.refresh(force=True)  # a new TokenClient: only the cache remembers
    assert len(idp.seen) == 3 and idp.seen[2].basic_auth is None
    assert idp.seen[2].params["client_secret"] == "s3cret-value"


# --------------------------------------------------------------------------- when the identity provider fails


def test_a_failed_refresh_keeps_the_valid_cached_token_in_the_sinks(idp: TokenEndpoint, setup: Setup) -> None:
    setup.refresh()
    setup.clock.advance(0.9 * LIFETIME)
    setup.sink.unlink()
    idp.fault = answer(503, headers={"Retry-After": "30"})
    attempt = setup.refresh()
    assert attempt.result is Result.RETRYABLE_ERROR and attempt.request_failed and attempt.needs_token
    assert attempt.retry_after == 30 and attempt.error is not None and "503" in attempt.error
    assert attempt.token is not None and attempt.token.access_token == "tok-1" and not attempt.fetched
    assert read_token(setup.sink) == "tok-1"  # readers keep working until it runs out


def test_a_failed_refresh_without_a_valid_token_writes_no_sink(idp: TokenEndpoint, setup: Setup) -> None:
    idp.fault = answer(401, json.dumps({"error": "invalid_client"}))
    attempt = setup.refresh()
    assert attempt.result is Result.FATAL_ERROR and attempt.error_code == "invalid_client"
    assert attempt.token is None and attempt.sinks_written == 0 and not setup.sink.exists()


def test_an_expired_cached_token_is_not_kept_when_the_refresh_fails(idp: TokenEndpoint, setup: Setup) -> None:
    setup.refresh()
    setup.clock.advance(LIFETIME)
    idp.fault = answer(503)
    attempt = setup.refresh()
    assert attempt.token is None and attempt.request_failed and attempt.sinks_written == 0


def test_a_failed_request_outranks_failed_sinks(idp: TokenEndpoint, tmp_path: Path) -> None:
    setup = Setup(idp, tmp_path, sinks=sinks_toml(tmp_path, "a.token", "gone/b.token"))
    setup.refresh()
    setup.clock.advance(0.9 * LIFETIME)
    idp.fault = answer(503)
    attempt = setup.refresh()
    assert attempt.result is Result.RETRYABLE_ERROR and attempt.request_failed
    assert attempt.error is not None and "503" in attempt.error and "does not exist" not in attempt.error
    assert len(attempt.sink_errors) == 1 and "does not exist" in attempt.sink_errors[0]


# --------------------------------------------------------------------------- every sink, each in its own try


def test_every_sink_gets_the_token(idp: TokenEndpoint, tmp_path: Path) -> None:
    sinks = sinks_toml(tmp_path, "a.token") + (
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/b.json"\nformat = "json"\n'
        f'[[credentials.api.sink]]\npath = "{tmp_path}/out/c.env"\nformat = "env"\n'
    )
    setup = Setup(idp, tmp_path, sinks=sinks)
    attempt = setup.refresh()
    assert attempt.sinks_written == 3
    assert [read_token(tmp_path / "out" / n) for n in ("a.token", "b.json", "c.env")] == ["tok-1"] * 3


def test_a_sink_that_fails_costs_no_other_sink(idp: TokenEndpoint, tmp_path: Path) -> None:
    setup = Setup(idp, tmp_path, sinks=sinks_toml(tmp_path, "gone/a.token", "dir.token", "c.token"))
    (tmp_path / "out" / "dir.token").mkdir()  # in the way: tokend replaces only regular files
    attempt = setup.refresh()
    assert attempt.result is Result.RETRYABLE_ERROR and not attempt.request_failed
    assert not attempt.needs_token  # only the sinks are behind
    assert (
        attempt.fetched and attempt.sinks_written == 1 and read_token(tmp_path / "out" / "c.token") == "tok-1"
    )
    first, second = attempt.sink_errors
    assert "gone/a.token" in first and "does not exist" in first
    assert "dir.token" in second and "only replaces regular files" in second
    assert attempt.error == f"{first}; {second}"


def test_a_sink_that_fails_unexpectedly_costs_no_other_sink(idp: TokenEndpoint, tmp_path: Path) -> None:
    """``write_sink`` promises SinkError only; the refresher does not rely on it. Here an
    env sink without its variable name, which the config never makes, trips an assertion."""
    setup = Setup(idp, tmp_path, sinks=sinks_toml(tmp_path, "a.env", "b.token"))
    broken = dataclasses.replace(setup.cred.sinks[0], format="env", env_name=None)
    cred = dataclasses.replace(setup.cred, sinks=(broken, *setup.cred.sinks[1:]))
    client = setup.client()
    try:
        attempt = setup.refresher(cred=cred).refresh(client)
    finally:
        client.close()
    assert attempt.sink_errors == (f"{tmp_path}/out/a.env: internal error: AssertionError",)
    assert attempt.sinks_written == 1 and read_token(tmp_path / "out" / "b.token") == "tok-1"


def test_sinks_are_left_alone_when_asked(setup: Setup) -> None:
    attempt = setup.refresh(write_sinks=False)
    assert attempt.fetched and attempt.sinks_written == 0 and not setup.sink.exists()


def test_a_state_dir_that_cannot_be_written_costs_the_memory_not_the_token(setup: Setup) -> None:
    setup.config.state_dir.mkdir()
    (setup.config.state_dir / "tokens").write_text("in the way")
    first = setup.refresh()
    assert first.result is Result.SUCCESS and read_token(setup.sink) == "tok-1"
    assert setup.refresh().fetched  # nothing remembered: asked again
    assert read_token(setup.sink) == "tok-2"


# --------------------------------------------------------------------------- the token source's say


class Recorded(TokenSource):
    """A token source that offers what it is given and records what it is told."""

    def __init__(self, *offers: Offer) -> None:
        self.offers = list(offers)
        self.asked: list[tuple[str, Token | None, bool]] = []
        self.obtained_tokens: list[Token] = []
        self.failures = 0

    def offer(
        self, cred: CredentialConfig, identity: str, ours: Token | None, now: float, *, due: bool
    ) -> Offer:
        self.asked.append((identity, ours, due))
        return self.offers.pop(0) if self.offers else ASK

    def obtained(self, cred: CredentialConfig, identity: str, token: Token) -> None:
        self.obtained_tokens.append(token)

    def failed(self, cred: CredentialConfig, identity: str) -> None:
        self.failures += 1


def test_the_source_is_asked_first_with_our_token_and_whether_it_is_due(setup: Setup) -> None:
    source = Recorded()
    first = setup.refresh(source)
    assert source.asked == [(setup.key, None, True)] and source.obtained_tokens == [first.token]
    setup.refresh(source)
    assert source.asked[1] == (setup.key, first.token, False)
    assert len(source.obtained_tokens) == 1 and source.failures == 0


def test_a_token_the_source_offers_is_used_remembered_and_sunk(setup: Setup) -> None:
    setup.refresh()
    entry = setup.cached()
    assert entry is not None
    setup.clock.advance(0.9 * LIFETIME)
    now = setup.clock.time()
    shared = Token("tok-shared", now + 2400, now - 1200)  # the leader's, a third of its life gone
    SECRETS.add(shared.access_token)
    source = Recorded(Offer(shared, waited=1.5))
    attempt = setup.refresh(source)
    assert attempt.origin is Origin.FLEET and not attempt.fetched and attempt.waited == 1.5
    assert attempt.token == shared and read_token(setup.sink) == "tok-shared"
    assert len(setup.idp.seen) == 1 and source.obtained_tokens == []
    assert setup.cached() == CacheEntry(shared, entry.wire, entry.auth)  # what worked kept


def test_while_another_host_gets_the_next_token_ours_is_kept(setup: Setup) -> None:
    setup.refresh()
    setup.clock.advance(0.9 * LIFETIME)
    attempt = setup.refresh(Recorded(Offer(follow=True)))
    assert attempt.origin is Origin.CACHE and not attempt.fetched and len(setup.idp.seen) == 1
    assert attempt.token is not None and attempt.token.access_token == "tok-1"


def test_following_without_a_valid_token_of_our_own_asks_the_idp(setup: Setup) -> None:
    attempt = setup.refresh(Recorded(Offer(follow=True)))
    assert attempt.fetched and len(setup.idp.seen) == 1
    setup.clock.advance(LIFETIME)  # ours expired
    assert setup.refresh(Recorded(Offer(follow=True))).fetched


def test_the_source_is_told_of_a_failed_request(idp: TokenEndpoint, setup: Setup) -> None:
    idp.fault = answer(503)
    source = Recorded()
    setup.refresh(source)
    assert source.failures == 1 and source.obtained_tokens == []


def test_the_source_is_told_when_the_secret_cannot_be_read(setup: Setup) -> None:
    """A config error is raised, not reported: and a fleet's leader must still let go."""
    (setup.tmp / "api.secret").unlink()
    source = Recorded()
    with pytest.raises(ConfigError, match=r"api\.secret"):
        setup.refresh(source)
    assert source.failures == 1 and setup.idp.seen == []
