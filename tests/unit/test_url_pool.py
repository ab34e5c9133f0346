"""Several URLs of one endpoint: `Endpoint(base_url=[...])` checks, the rendezvous order
(stable, balanced, minimal moves) and `UrlPool`'s health (down, skipped, checked, back)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts import ConfigError, Endpoint
from asynctts.cli.arguments import url_list
from asynctts.eval.plan import endpoint_info
from asynctts.url_pool import UrlPool, rendezvous_order

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"
IDS = [f"p{i}" for i in range(3000)]

# distinct servers: 2 to 6 of them, on hosts and ports of their own
url_sets = st.lists(
    st.tuples(st.integers(1, 254), st.integers(1024, 65535)),
    min_size=2,
    max_size=6,
    unique_by=lambda hp: hp[0],
).map(lambda hosts: tuple(f"http://10.1.0.{h}:{p}" for h, p in hosts))


# --- Endpoint --------------------------------------------------------------------------------


def test_one_url_is_kept_as_given() -> None:
    endpoint = Endpoint(base_url="http://127.0.0.1:8000/v1", model="m")
    assert endpoint.base_url == "http://127.0.0.1:8000/v1"
    assert endpoint.urls == ("http://127.0.0.1:8000/v1",)
    assert endpoint.root_url == "http://127.0.0.1:8000"
    assert endpoint.root_urls == ("http://127.0.0.1:8000",)


def test_several_urls_become_a_tuple_of_roots() -> None:
    endpoint = Endpoint(base_url=[A + "/v1", B + "/"], model="m")
    assert endpoint.base_url == (A + "/v1", B + "/")
    assert endpoint.root_urls == (A, B)
    assert endpoint == Endpoint(base_url=(A + "/v1", B + "/"), model="m")
    assert hash(endpoint) == hash(Endpoint(base_url=(A + "/v1", B + "/"), model="m"))
    with pytest.raises(ConfigError, match="2 URLs has no single root_url; use root_urls"):
        _ = endpoint.root_url


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ([], "base_url is an empty list: give one URL or several"),
        ([A, "localhost:8000"], "base_url 'localhost:8000' needs a scheme and a host"),
        ([A, 8000], "base_url entry 8000 is a int, not a URL string"),
        ({A, B}, "need a URL or a list of URLs"),
        (
            [A + "/v1", B, "HTTP://10.0.0.1:8000/"],
            "lists 'http://10.0.0.1:8000/v1' and 'HTTP://10.0.0.1:8000/', the same server",
        ),
    ],
)
def test_bad_url_lists_are_named(base_url: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Endpoint(base_url=base_url, model="m")  # type: ignore[arg-type]


def test_adaptation_defaults_off_only_when_every_url_is_loopback() -> None:
    local = ["http://127.0.0.1:8000", "http://localhost:8001"]
    assert not Endpoint(base_url=local, model="m").adapts_concurrency
    assert Endpoint(base_url=[*local, A], model="m").adapts_concurrency


def test_the_queue_watch_takes_one_server() -> None:
    with pytest.raises(ConfigError, match="watches one server's queue; with 2 URLs leave it"):
        Endpoint(base_url=[A, B], model="m", adaptive_max_waiting=8)


def test_cooldown_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="down_cooldown_s=0: need > 0"):
        Endpoint(base_url=[A, B], model="m", down_cooldown_s=0)


def test_repr_names_the_urls_and_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_KEY", "sk-secret")
    endpoint = Endpoint(base_url=[A, B], model="m", api_key_env="POOL_KEY")
    assert endpoint.api_key() == "sk-secret"
    assert A in repr(endpoint) and B in repr(endpoint) and "sk-secret" not in repr(endpoint)


def test_journals_list_the_urls_without_credentials() -> None:
    one = Endpoint(base_url="http://user:pw@10.0.0.1:8000/v1", model="m")
    several = Endpoint(base_url=["http://user:pw@10.0.0.1:8000/v1", B + "/v1"], model="m")
    assert endpoint_info(one)["base_url"] == A + "/v1"  # type: ignore[index]
    assert endpoint_info(several)["base_url"] == [A + "/v1", B + "/v1"]  # type: ignore[index]


def test_url_flag_splits_on_commas() -> None:
    assert url_list(A) == A
    assert url_list(f"{A}, {B},") == [A, B]


# --- rendezvous order ------------------------------------------------------------------------


def test_order_is_the_same_in_every_process() -> None:
    # blake2b, not hash(): these values hold on every run (PYTHONHASHSEED changes nothing)
    keys = ("p0", "p1", "p2", "p3", "p4", "p5")
    assert [rendezvous_order(key, (A, B, C))[0] for key in keys] == [B, C, A, A, B, C]
    assert rendezvous_order("p0", (A, B, C)) == rendezvous_order("p0", (C, A, B))


@settings(max_examples=30, deadline=None)
@given(urls=url_sets)
def test_keys_spread_evenly(urls: tuple[str, ...]) -> None:
    firsts = Counter(rendezvous_order(key, urls)[0] for key in IDS)
    share = len(IDS) / len(urls)
    assert set(firsts) == set(urls)
    assert all(0.8 * share < count < 1.2 * share for count in firsts.values()), firsts


@settings(max_examples=30, deadline=None)
@given(urls=url_sets, data=st.data())
def test_removing_a_url_moves_only_its_keys(urls: tuple[str, ...], data: st.DataObject) -> None:
    removed = data.draw(st.sampled_from(urls))
    rest = tuple(url for url in urls if url != removed)
    for key in IDS[:500]:
        before = rendezvous_order(key, urls)
        after = rendezvous_order(key, rest)
        # the others keep their order: a key on another URL stays, the removed URL's keys
        # go to their second choice
        assert after == tuple(url for url in before if url != removed)


# --- health ----------------------------------------------------------------------------------


class Checks:
    """The pool's health check: records the URLs asked, answers `passes`, or waits on `gate`."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.passes = True
        self.gate: asyncio.Event | None = None

    async def __call__(self, url: str) -> bool:
        self.asked.append(url)
        if self.gate is not None:
            await self.gate.wait()
        return self.passes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(checks: Checks, clock: Clock) -> UrlPool:
    return UrlPool((A, B, C), cooldown_s=5.0, check=checks, clock=clock)


def key_on(url: str, urls: tuple[str, ...] = (A, B, C)) -> str:
    return next(key for key in IDS if rendezvous_order(key, urls)[0] == url)


async def test_a_key_sticks_to_its_url() -> None:
    urls = pool(Checks(), Clock())
    for key in IDS[:50]:
        assert urls.choose(key) == urls.choose(key) == rendezvous_order(key, (A, B, C))[0]


async def test_requests_without_a_key_go_round() -> None:
    urls = pool(Checks(), Clock())
    assert [urls.choose(None) for _ in range(6)] == [B, C, A, B, C, A]


async def test_a_failed_url_is_skipped_then_checked_and_back() -> None:
    checks, clock = Checks(), Clock()
    urls = pool(checks, clock)
    key = key_on(A)
    second = rendezvous_order(key, (A, B, C))[1]
    assert urls.failed(A) and not urls.failed(A)  # marked down once
    assert urls.down() == (A,)
    assert urls.choose(key) == second
    clock.now += 4.9
    assert urls.choose(key) == second and checks.asked == []  # cooling down: no check yet
    clock.now += 0.1
    checks.gate = asyncio.Event()
    assert urls.choose(key) == second  # the check runs off the request path
    await asyncio.sleep(0)
    assert urls.choose(key) == second and checks.asked == [A]
    await asyncio.sleep(0)
    assert checks.asked == [A]  # one check at a time
    checks.gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert urls.down() == () and urls.choose(key) == A


async def test_a_failed_check_keeps_the_url_down_for_another_cooldown() -> None:
    checks, clock = Checks(), Clock()
    urls = pool(checks, clock)
    checks.passes = False
    urls.failed(B)
    clock.now += 5.0
    key = key_on(B)
    assert urls.choose(key) != B
    await asyncio.sleep(0)
    assert urls.down() == (B,) and checks.asked == [B]
    clock.now += 4.0
    urls.choose(key)
    assert checks.asked == [B]
    clock.now += 1.0
    checks.passes = True
    urls.choose(key)
    await asyncio.sleep(0)
    assert checks.asked == [B, B] and urls.down() == ()


async def test_one_5xx_is_the_request_two_in_a_row_the_server() -> None:
    urls = pool(Checks(), Clock())
    assert not urls.failed(C, server_error=True)
    urls.succeeded(C)
    assert not urls.failed(C, server_error=True)
    assert urls.failed(C, server_error=True)
    assert urls.down() == (C,)


async def test_all_down_goes_to_the_first_to_cool_down_and_a_success_brings_it_back() -> None:
    clock = Clock()
    urls = pool(Checks(), clock)
    urls.failed(B)
    clock.now += 1
    urls.failed(A)
    clock.now += 1
    urls.failed(C)
    assert {urls.choose(key) for key in IDS[:20]} == {B}
    assert urls.succeeded(B) and not urls.succeeded(B)
    assert urls.down() == (A, C)


async def test_close_stops_the_checks() -> None:
    checks, clock = Checks(), Clock()
    checks.gate = asyncio.Event()  # never set: the check hangs
    urls = pool(checks, clock)
    urls.failed(A)
    clock.now += 5
    urls.choose(key_on(A))
    await asyncio.sleep(0)
    assert checks.asked == [A]
    await urls.aclose()
    assert urls.down() == (A,)
