"""tokend/daemon/token_source.py: the seam between the refresher and fleet mode, and its
standalone null object: always "ask it yourself", never news, no role, no health, nothing
imported, nothing kept. (What the refresher does with each kind of offer is
tests/test_refresher.py's; the fleet's own source is tests/test_fleet.py's.)"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tokend.config import parse
from tokend.core.tokens import Token
from tokend.daemon.refresher import Refresher
from tokend.daemon.token_source import ASK, STANDALONE, Offer, TokenSource
from tokend.io.cache import TokenCache

NOW = 1_900_000_000.0
CRED = parse(
    '[credentials.api]\ntoken_url = "https://idp.example/t"\nclient_id = "x"\nclient_secret = "y"\n',
    Path("/t/tokend.toml"),
    environ={},
).credentials["api"]
TOKEN = Token("tok-ours", NOW + 60, NOW - 60)


def test_ask_is_neither_a_token_nor_a_wait() -> None:
    assert Offer() == ASK and (ASK.token, ASK.follow, ASK.waited) == (None, False, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ASK.follow = True  # type: ignore[misc]


@pytest.mark.parametrize("ours", [None, TOKEN])
@pytest.mark.parametrize("due", [True, False])
def test_standalone_always_says_ask_it_yourself(ours: Token | None, due: bool) -> None:
    assert STANDALONE.offer(CRED, "0" * 32, ours, NOW, due=due) is ASK


def test_standalone_keeps_nothing_of_what_it_is_told() -> None:
    STANDALONE.obtained(CRED, "0" * 32, TOKEN)
    STANDALONE.failed(CRED, "0" * 32)
    STANDALONE.forget("api")
    assert STANDALONE.offer(CRED, "0" * 32, None, NOW, due=True) is ASK
    assert vars(STANDALONE) == {}  # no state at all: one instance serves every credential


def test_standalone_has_no_role_no_next_look_no_health_and_no_warnings() -> None:
    assert STANDALONE.role("api") is None
    assert STANDALONE.next_look("api") is None
    assert STANDALONE.health() is None
    assert STANDALONE.warnings() == ()


def test_standalone_starts_no_thread_and_never_has_news() -> None:
    news: list[str] = []
    before = threading.enumerate()
    STANDALONE.start(news.append)
    assert threading.enumerate() == before and news == []
    STANDALONE.stop()
    assert news == []


def test_a_source_that_overrides_only_what_it_needs_is_standalone_in_the_rest() -> None:
    class OnlyOffers(TokenSource):
        def offer(self, cred: object, identity: str, ours: Token | None, now: float, *, due: bool) -> Offer:
            return Offer(follow=True)

    source = OnlyOffers()
    assert source.offer(CRED, "0" * 32, None, NOW, due=True) == Offer(follow=True)
    assert (source.role("api"), source.next_look("api"), source.health(), source.warnings()) == (
        None,
        None,
        None,
        (),
    )


def test_a_refresher_without_a_source_is_standalone(tmp_path: Path) -> None:
    assert Refresher(CRED, TokenCache(tmp_path)).source is STANDALONE


def test_the_seam_imports_neither_redis_nor_cryptography() -> None:
    code = (
        "import sys, tokend.daemon.token_source, tokend.daemon.refresher;"
        "print(sorted({'redis', 'cryptography'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
