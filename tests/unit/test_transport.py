"""Transport over real HTTP on 127.0.0.1, against small scripted aiohttp.web apps.

Time is virtual (injected clock and sleep) except for the timeout cases, which need real
socket timeouts of a few tenths of a second at most. No test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from asynctts.endpoint import Endpoint
from asynctts.errors import (
    BadResponse,
    ConfigError,
    ConnectFailed,
    ContextLengthExceeded,
    HostNotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    TimedOut,
    TLSFailed,
)
from asynctts.ledger import Attempt, Charge, Ledger, Usage
from asynctts.transport import (
    Transport,
    TransportStatistics,
    _Gate,
    _parse_retry_after,
    _request_limiter,
    _server_message,
    _usage,
)

Fault = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTE = "/v1/completions"
USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 40,
    "prompt_tokens_details": {"cached_tokens": 60},
}
OK_BODY: dict[str, Any] = {"id": "cmpl-1", "choices": [{"text": "2"}], "usage": USAGE}


# --- the scripted server -------------------------------------------------------------------


class Scripted:
    """Plays `faults` in order to successive requests, then answers `ok`; records what it saw
    and how many handlers ran at once."""

    def __init__(self, *faults: Fault, ok: Any = OK_BODY) -> None:
        self.faults = list(faults)
        self.ok = ok
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.in_flight = 0
        self.peak = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.method, request.path, dict(request.headers), await request.read())
        )
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.faults:
                return await self.faults.pop(0)(request)
            return web.json_response(self.ok)
        finally:
            self.in_flight -= 1


def status(code: int, body: Any, headers: dict[str, str] | None = None) -> Fault:
    async def fault(request: web.Request) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(status=code, text=body, headers=headers)
        return web.json_response(body, status=code, headers=headers)

    return fault


def hold(release: asyncio.Event) -> Fault:
    async def fault(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(OK_BODY)

    return fault


async def drop(request: web.Request) -> web.StreamResponse:
    """Send the headers and part of the body, then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"choices": [')
    assert request.transport is not None
    request.transport.close()
    return response


async def malformed(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200, text='{"choices": [', content_type="application/json")


async def json_list(request: web.Request) -> web.StreamResponse:
    return web.json_response([1, 2])


Serve = Callable[[Scripted], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(server: Scripted) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


class VirtualTime:
    """Clock and sleep for the transport. `sleep` records its delay and moves the clock to the
    sleeper's wake time; when `hold` is set, sleepers wait for it first."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.hold: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake = self.now + seconds
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


def transport(url: str, vt: VirtualTime, *, seed: int = 0, **limits: Any) -> Transport:
    endpoint = Endpoint(base_url=url, model="m", **limits)
    return Transport(
        endpoint, name="policy", clock=vt.clock, sleep=vt.sleep, rng=random.Random(seed)
    )


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


def statuses(ledger: Ledger) -> list[int | None]:
    return [a.status for a in ledger.attempts]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- success and accounting ----------------------------------------------------------------


async def test_success_returns_the_json_and_bills_every_charge_by_share(serve: Serve) -> None:
    server = Scripted()
    url = await serve(server)
    ticks = iter(range(100))
    endpoint = Endpoint(base_url=url, model="m", max_in_flight=8)
    one, two = Ledger(), Ledger()
    body = {"model": "m", "prompt": "1+1=", "n": 2}
    async with Transport(endpoint, name="policy", clock=lambda: float(next(ticks))) as t:
        result = await t.post_json(
            ROUTE,
            body,
            charges=[Charge(one, ("0.1", "0.2"), share=0.25), Charge(two, ("3",), share=0.75)],
        )
        stats = t.statistics()
    assert result == OK_BODY
    method, path, headers, sent = server.seen[0]
    assert (method, path, orjson.loads(sent)) == ("POST", ROUTE, body)
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    common: dict[str, Any] = {
        "endpoint": "policy",
        "route": ROUTE,
        "attempt": 1,
        "status": 200,
        "error": None,
    }
    assert one.attempts == [
        Attempt(branches=("0.1", "0.2"), start_s=0.0, end_s=1.0, prompt_tokens=25.0,
                cached_tokens=15.0, completion_tokens=10.0, share=0.25, **common)
    ]  # fmt: skip
    assert two.attempts == [
        Attempt(branches=("3",), start_s=0.0, end_s=1.0, prompt_tokens=75.0,
                cached_tokens=45.0, completion_tokens=30.0, share=0.75, **common)
    ]  # fmt: skip
    total = one.totals() + two.totals()
    assert (total.prompt_tokens, total.cached_tokens, total.completion_tokens) == (100, 60, 40)
    assert stats == TransportStatistics(
        in_flight=0, waiting=0, peak_in_flight=1, requests=1, attempts=1, retries=0,
        failures=0, max_in_flight=8, adaptive=False, cap_decreases=0, lowest_max_in_flight=8,
        server_waiting=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 7, "completion_tokens": 3}, (7.0, 0.0, 3.0)),
        ({"prompt_tokens": 7, "prompt_tokens_details": None}, (7.0, 0.0, 0.0)),
        ({"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": None}}, (7.0, 0.0, 0.0)),
        (None, (0.0, 0.0, 0.0)),
        ({"prompt_tokens": "7", "completion_tokens": True}, (0.0, 0.0, 0.0)),
    ],
)
def test_usage_reads_openai_fields_and_treats_missing_as_zero(
    usage: Any, expected: tuple[float, float, float]
) -> None:
    assert _usage({"usage": usage}) == expected
    assert _usage([1]) == (0.0, 0.0, 0.0)


async def test_get_json_and_get_text_are_not_charged(serve: Serve) -> None:
    models = {"object": "list", "data": [{"id": "m"}]}
    metrics = "vllm:num_requests_running 3\nvllm:num_requests_waiting 0\n"
    server = Scripted(status(503, "warming up"), status(200, models), status(200, metrics))
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt) as t:
        assert t.url == url.removesuffix("/v1")
        assert await t.get_json("/v1/models") == models
        assert await t.get_text("/metrics") == metrics
        assert t.statistics().requests == 2
        assert t.statistics().retries == 1
    assert [(m, p) for m, p, _, _ in server.seen] == [
        ("GET", "/v1/models"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
    ]


async def test_get_json_accepts_any_json_but_post_json_wants_an_object(serve: Serve) -> None:
    url = await serve(Scripted(ok=[1, 2]))
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=2) as t:
        assert await t.get_json("/v1/models") == [1, 2]
        with pytest.raises(BadResponse, match=r"/v1/completions: HTTP 200: expected a JSON object"):
            await t.post_json(ROUTE, {})


# --- retries -------------------------------------------------------------------------------


async def test_429_retry_after_is_waited_exactly_and_billed_as_a_retry(serve: Serve) -> None:
    limited = status(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"})
    url = await serve(Scripted(limited))
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, max_attempts=3) as t:
        assert await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]) == OK_BODY
        stats = t.statistics()
    assert vt.sleeps == [7.0]
    assert statuses(ledger) == [429, 200]
    assert [a.attempt for a in ledger.attempts] == [1, 2]
    assert (
        ledger.attempts[0].error
        == f"RateLimited: {url.removesuffix('/v1')}{ROUTE}: HTTP 429: slow down"
    )
    assert (ledger.attempts[1].start_s, ledger.attempts[1].prompt_tokens) == (7.0, 100.0)
    usage = ledger.totals()
    assert (usage.requests, usage.retries, usage.failures) == (1, 1, 1)
    assert (stats.requests, stats.attempts, stats.retries, stats.failures) == (1, 2, 1, 0)


async def test_retry_after_is_capped(serve: Serve) -> None:
    url = await serve(Scripted(status(503, "busy", {"Retry-After": "100000"})))
    vt = VirtualTime()
    async with transport(url, vt) as t:
        await t.post_json(ROUTE, {})
    assert vt.sleeps == [120.0]


async def test_retry_after_zero_retries_at_once_without_pausing(serve: Serve) -> None:
    server = Scripted(
        status(429, "now", {"Retry-After": "0"}), status(429, "now", {"Retry-After": "0"})
    )
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt) as t:
        assert await t.post_json(ROUTE, {}) == OK_BODY
    assert (vt.sleeps, len(server.seen)) == ([0.0, 0.0], 3)


async def test_503_burst_then_success_backs_off_with_full_jitter(serve: Serve) -> None:
    server = Scripted(*[status(503, "overloaded")] * 3)
    url = await serve(server)
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, seed=7, max_attempts=4) as t:
        assert await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]) == OK_BODY
    jitter = random.Random(7)
    assert vt.sleeps == [jitter.uniform(0, 0.5), jitter.uniform(0, 1.0), jitter.uniform(0, 2.0)]
    assert statuses(ledger) == [503, 503, 503, 200]
    assert len(server.seen) == 4


async def test_backoff_ceiling_is_capped_at_30_s(serve: Serve) -> None:
    url = await serve(Scripted(*[status(500, "boom")] * 8))
    vt = VirtualTime()
    async with transport(url, vt, seed=1, max_attempts=9) as t:
        await t.post_json(ROUTE, {})
    jitter = random.Random(1)
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert vt.sleeps == [jitter.uniform(0, c) for c in ceilings]


async def test_backoff_base_is_an_endpoint_setting(serve: Serve) -> None:
    url = await serve(Scripted(*[status(500, "boom")] * 3))
    vt = VirtualTime()
    async with transport(url, vt, seed=3, max_attempts=4, backoff_base_s=0.01) as t:
        await t.post_json(ROUTE, {})
    jitter = random.Random(3)
    assert vt.sleeps == [jitter.uniform(0, c) for c in (0.01, 0.02, 0.04)]


async def test_read_timeout_is_retried_then_succeeds(serve: Serve) -> None:
    stalled = asyncio.Event()  # the server answers the first request only after the test
    url = await serve(Scripted(hold(stalled)))
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, read_timeout_s=0.25) as t:
        assert await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]) == OK_BODY
    stalled.set()
    assert statuses(ledger) == [None, 200]
    assert (ledger.attempts[0].error or "").startswith("TimedOut: ")


async def test_read_timeouts_exhaust_attempts_into_timed_out(serve: Serve) -> None:
    stalled = asyncio.Event()
    server = Scripted(hold(stalled), hold(stalled))
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt, read_timeout_s=0.05, max_attempts=2) as t:
        with pytest.raises(
            TimedOut, match=rf"{url.removesuffix('/v1')}{ROUTE}: timed out .*read 0.05 s"
        ):
            await t.post_json(ROUTE, {})
        assert t.statistics().failures == 1
    stalled.set()
    assert len(server.seen) == 2


async def test_connection_dropped_mid_body_is_retried(serve: Serve) -> None:
    url = await serve(Scripted(drop))
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt) as t:
        assert await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]) == OK_BODY
    assert statuses(ledger) == [200, 200]  # the first one's headers had arrived
    assert (ledger.attempts[0].error or "").startswith(
        f"ConnectFailed: {url.removesuffix('/v1')}{ROUTE}: connection failed during the response"
    )


async def test_malformed_json_is_a_bad_response_and_retried(serve: Serve) -> None:
    server = Scripted(malformed, json_list)
    url = await serve(server)
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt) as t:
        assert await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]) == OK_BODY
    errors = [(a.error or "").split(":")[0] for a in ledger.attempts]
    assert errors == ["BadResponse", "BadResponse", ""]
    assert len(server.seen) == 3


async def test_invalid_http_is_a_bad_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    vt = VirtualTime()
    try:
        async with transport(f"http://127.0.0.1:{port}", vt, max_attempts=2) as t:
            with pytest.raises(BadResponse, match="ClientResponseError"):
                await t.post_json(ROUTE, {})
        assert len(vt.sleeps) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_refused_is_connect_failed_after_max_attempts() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, max_attempts=3) as t:
        with pytest.raises(ConnectFailed, match=rf"{url}{ROUTE}: connection failed before"):
            await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))])
        stats = t.statistics()
    assert statuses(ledger) == [None, None, None]
    assert [a.attempt for a in ledger.attempts] == [1, 2, 3]
    assert len(vt.sleeps) == 2
    assert (stats.attempts, stats.retries, stats.failures, stats.in_flight) == (3, 2, 1, 0)


# --- timeouts, deadlines and failures that are not retried --------------------------------


def trickle(every_s: float) -> Fault:
    """Send the headers, then one byte of the body every `every_s`, never finishing."""

    async def fault(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client gave up
            for _ in range(1000):
                await response.write(b" ")
                await asyncio.sleep(every_s)
        return response

    return fault


async def test_a_failure_after_retries_says_how_many_attempts(serve: Serve) -> None:
    stalled = asyncio.Event()
    url = await serve(Scripted(hold(stalled), hold(stalled)))
    root = url.removesuffix("/v1")
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, read_timeout_s=0.05, max_attempts=2) as t:
        with pytest.raises(TimedOut) as caught:
            await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))])
    stalled.set()
    attempt_message = (
        f"{root}{ROUTE}: timed out (the server sent nothing for 0.05 s; "
        "timeouts: connect 10.0 s, read 0.05 s, total 900.0 s)"
    )
    assert str(caught.value) == f"{attempt_message}; gave up after 2 attempts"
    assert caught.value.attempts == 2
    assert [a.error for a in ledger.attempts] == [f"TimedOut: {attempt_message}"] * 2
    # aiohttp's error is summarised in the message, not chained under it
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_trickling_answer_is_cut_by_the_total_timeout(serve: Serve) -> None:
    url = await serve(Scripted(trickle(0.01)))
    vt = VirtualTime()
    async with transport(url, vt, read_timeout_s=0.2, total_timeout_s=0.3, max_attempts=1) as t:
        with pytest.raises(TimedOut) as caught:
            await t.post_json(ROUTE, {})
    # the bytes keep coming, so the read timeout never fires: the total one bounds the attempt
    assert str(caught.value) == (
        f"{url.removesuffix('/v1')}{ROUTE}: timed out (no complete answer within 0.3 s; "
        "timeouts: connect 10.0 s, read 0.2 s, total 0.3 s)"
    )


async def test_a_call_timeout_replaces_the_endpoint_timeouts(serve: Serve) -> None:
    stalled = asyncio.Event()
    url = await serve(Scripted(hold(stalled)))
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=1) as t:
        with pytest.raises(TimedOut) as caught:
            await t.get_json("/v1/models", attempt_timeout_s=0.1, deadline_s=60.0)
    stalled.set()
    assert str(caught.value) == (
        f"{url.removesuffix('/v1')}/v1/models: timed out (no complete answer within 0.1 s; "
        "timeouts: total 0.1 s)"
    )


async def test_an_attempt_ends_at_the_call_deadline(serve: Serve) -> None:
    stalled = asyncio.Event()
    url = await serve(Scripted(hold(stalled)))
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=1) as t:
        with pytest.raises(
            TimedOut, match=r"no complete answer within 0.1 s; timeouts: total 0.1 s"
        ):
            await t.get_json("/v1/models", attempt_timeout_s=5.0, deadline_s=0.1)
    stalled.set()


async def test_no_retry_starts_whose_wait_ends_past_the_deadline() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=50, backoff_base_s=0.1, seed=3) as t:
        with pytest.raises(ConnectFailed) as caught:
            await t.get_json("/v1/models", deadline_s=1.0)
    # the same jitter as the transport's: full jitter, doubling from 0.1 s
    jitter = random.Random(3)
    waits: list[float] = []
    while True:
        wait = jitter.uniform(0, 0.1 * 2 ** len(waits))
        if sum(waits) + wait >= 1.0:  # this wait would end past the deadline: no retry
            break
        waits.append(wait)
    assert vt.sleeps == waits
    assert caught.value.attempts == len(waits) + 1 < 50
    assert str(caught.value).endswith(f"; gave up after {len(waits) + 1} attempts")


async def test_an_unresolvable_host_fails_at_once() -> None:
    vt = VirtualTime()
    ledger = Ledger()
    url = "http://no-such-host.invalid:8000/v1"
    # a connect timeout long enough for a slow resolver to say no
    async with transport(url, vt, max_attempts=4, connect_timeout_s=60.0) as t:
        with pytest.raises(HostNotFound) as caught:
            await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))])
        stats = t.statistics()
    message = str(caught.value)
    assert message.startswith(
        f"http://no-such-host.invalid:8000{ROUTE}: cannot resolve host 'no-such-host.invalid' ("
    )
    assert message.endswith("); check the host name in the URL")
    assert not caught.value.transient and caught.value.__cause__ is None
    assert (stats.attempts, stats.retries, stats.failures) == (1, 0, 1)
    assert vt.sleeps == [] and [a.attempt for a in ledger.attempts] == [1]


async def test_https_to_a_plain_http_server_fails_at_once(serve: Serve) -> None:
    server = Scripted()
    url = (await serve(server)).replace("http://", "https://")
    host_port = url.removeprefix("https://").removesuffix("/v1")
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=4) as t:
        with pytest.raises(TLSFailed) as caught:
            await t.post_json(ROUTE, {})
        stats = t.statistics()
    message = str(caught.value)
    assert message.startswith(
        f"https://{host_port}{ROUTE}: TLS handshake failed with {host_port} ("
    )
    assert message.endswith("); if the server speaks plain HTTP, use an http:// URL")
    assert caught.value.__cause__ is None
    assert (stats.attempts, stats.retries, vt.sleeps, server.seen) == (1, 0, [], [])


async def test_an_untrusted_certificate_fails_at_once() -> None:
    certificate = trustme.CA().issue_cert("127.0.0.1")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(tls)
    server = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        port = runner.addresses[0][1]
        vt = VirtualTime()
        async with transport(f"https://127.0.0.1:{port}/v1", vt, max_attempts=4) as t:
            with pytest.raises(TLSFailed) as caught:
                await t.post_json(ROUTE, {})
            stats = t.statistics()
    finally:
        await runner.cleanup()
    assert str(caught.value).startswith(
        f"https://127.0.0.1:{port}{ROUTE}: TLS handshake failed: the certificate of "
        f"127.0.0.1:{port} was rejected ("
    )
    assert str(caught.value).endswith(
        "); check the host name, or trust the server's CA (SSL_CERT_FILE)"
    )
    assert (stats.attempts, stats.retries, vt.sleeps, server.seen) == (1, 0, [], [])


FAULTS: dict[str, Fault] = {
    "500": status(500, "boom"),
    "502": status(502, "bad gateway"),
    "408": status(408, "request timeout"),
    "409": status(409, "conflict"),
    "429": status(429, "later", {"Retry-After": "0"}),
    "malformed": malformed,
    "drop": drop,
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(sorted(FAULTS)), max_size=5),
    max_attempts=st.integers(min_value=1, max_value=4),
)
def test_attempts_never_exceed_max_attempts(kinds: list[str], max_attempts: int) -> None:
    async def scenario() -> None:
        server = Scripted(*[FAULTS[k] for k in kinds])
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        vt = VirtualTime()
        ledger = Ledger()
        try:
            async with transport(f"http://{host}:{port}", vt, max_attempts=max_attempts) as t:
                try:
                    await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))])
                    failed = False
                except (ServerError, RateLimited, BadResponse, ConnectFailed):
                    failed = True
                stats = t.statistics()
        finally:
            await runner.cleanup()
        expected = min(len(kinds) + 1, max_attempts)
        assert len(server.seen) == expected
        assert [a.attempt for a in ledger.attempts] == list(range(1, expected + 1))
        assert failed == (len(kinds) >= max_attempts)
        assert (stats.attempts, stats.retries, stats.failures) == (expected, expected - 1, failed)
        assert Usage.of(ledger.attempts).failures == min(len(kinds), max_attempts)

    asyncio.run(scenario())


# --- rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "temperature must be >= 0", "type": "BadRequestError"}},
         "temperature must be >= 0"),
        ({"object": "error", "message": "n must be >= 1", "code": 400}, "n must be >= 1"),
        ({"error": "plain error string"}, "plain error string"),
        ("<html>nope</html>", "<html>nope</html>"),
    ],
)  # fmt: skip
async def test_400_is_rejected_without_retry_and_carries_the_server_message(
    serve: Serve, body: Any, message: str
) -> None:
    server = Scripted(status(400, body))
    url = await serve(server)
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt) as t:
        with pytest.raises(RequestRejected) as caught:
            await t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))])
        assert t.statistics().failures == 1
    assert type(caught.value) is RequestRejected
    assert caught.value.status == 400
    assert str(caught.value) == f"{url.removesuffix('/v1')}{ROUTE}: HTTP 400: {message}"
    assert (len(server.seen), vt.sleeps, statuses(ledger)) == (1, [], [400])


def test_server_message_falls_back_to_the_first_300_characters() -> None:
    assert _server_message(b"x" * 500) == "x" * 300
    assert _server_message(b"") == "(empty body)"
    assert _server_message(b'{"detail": "no"}') == '{"detail": "no"}'


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens",
        "prompt + max_tokens exceeds max_model_len 2048",
        "Input exceeds the Context Length of the model",
    ],
)
async def test_context_length_400_is_context_length_exceeded(serve: Serve, message: str) -> None:
    url = await serve(Scripted(status(400, {"object": "error", "message": message})))
    vt = VirtualTime()
    async with transport(url, vt) as t:
        with pytest.raises(ContextLengthExceeded) as caught:
            await t.post_json(ROUTE, {})
    assert message in str(caught.value)
    assert caught.value.status == 400
    assert vt.sleeps == []


async def test_unknown_model_404_is_rejected(serve: Serve) -> None:
    message = "The model `nope` does not exist."
    body = {"object": "error", "message": message, "type": "NotFoundError", "code": 404}
    server = Scripted(status(404, body))
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt) as t:
        with pytest.raises(
            RequestRejected, match=rf"{ROUTE}: HTTP 404: The model `nope`"
        ) as caught:
            await t.post_json(ROUTE, {"model": "nope"})
    assert type(caught.value) is RequestRejected
    assert (caught.value.status, len(server.seen)) == (404, 1)


# --- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 3, 8])
async def test_server_never_sees_more_than_max_in_flight(serve: Serve, cap: int) -> None:
    full = asyncio.Event()
    server = Scripted()

    async def handler(request: web.Request) -> web.StreamResponse:
        if server.in_flight >= cap:  # `handle` counted this request already
            full.set()
        await asyncio.wait_for(full.wait(), 2.0)  # hold until the cap is reached: no serialising
        await asyncio.sleep(0.002)
        return web.json_response(OK_BODY)

    server.faults = [handler] * (3 * cap + 2)
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt, max_in_flight=cap) as t:
        results = await asyncio.gather(*(t.post_json(ROUTE, {}) for _ in range(3 * cap + 2)))
        stats = t.statistics()
    assert results == [OK_BODY] * (3 * cap + 2)
    assert server.peak == cap
    assert (stats.peak_in_flight, stats.in_flight, stats.waiting) == (cap, 0, 0)


async def test_set_max_in_flight_resizes_the_cap_at_runtime(serve: Serve) -> None:
    release = asyncio.Event()
    server = Scripted(*[hold(release)] * 6)
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt, max_in_flight=4) as t:
        t.set_max_in_flight(1)
        calls = [asyncio.create_task(t.post_json(ROUTE, {})) for _ in range(6)]
        await eventually(lambda: t.statistics().waiting == 5 and server.in_flight == 1)
        assert t.statistics().max_in_flight == 1
        t.set_max_in_flight(3)  # two waiters are admitted at once
        await eventually(lambda: server.in_flight == 3)
        assert t.statistics().waiting == 3
        release.set()
        await asyncio.gather(*calls)
        assert server.peak == 3
        with pytest.raises(ConfigError, match=r"max_in_flight=0 .*need 1\.\.4"):
            t.set_max_in_flight(0)
        with pytest.raises(ConfigError, match=r"max_in_flight=5 "):
            t.set_max_in_flight(5)


async def test_gate_is_fifo_and_survives_cancelled_waiters() -> None:
    gate = _Gate(1)
    await gate.take()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.take()
        order.append(i)
        gate.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[0].cancel()  # cancelled while queued; its task has not run yet
    gate.release()  # skips waiter 0 and hands the slot to waiter 1
    tasks[1].cancel()  # cancelled after the hand-over: must pass the slot on
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [2, 3]
    assert [type(r).__name__ for r in results] == [
        "CancelledError",
        "CancelledError",
        "NoneType",
        "NoneType",
    ]
    assert (gate.in_use, gate.peak) == (0, 1)
    await gate.take()
    queued = asyncio.create_task(gate.take())
    await asyncio.sleep(0)
    queued.cancel()  # leaves the queue by itself
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.release()
    assert (gate.try_take(), gate.in_use) == (True, 1)


async def test_retry_after_pauses_the_whole_endpoint(serve: Serve) -> None:
    limited = status(429, {"error": {"message": "too many"}}, {"Retry-After": "3"})
    server = Scripted(limited)
    url = await serve(server)
    vt = VirtualTime()
    vt.hold = asyncio.Event()
    async with transport(url, vt) as t:
        first = asyncio.create_task(t.post_json(ROUTE, {"i": 1}))
        await eventually(lambda: vt.sleeps == [3.0])  # the first request is backing off
        second = asyncio.create_task(t.post_json(ROUTE, {"i": 2}))
        await eventually(lambda: len(vt.sleeps) == 2)  # the second waits out the pause
        assert vt.sleeps == [3.0, 3.0]
        assert len(server.seen) == 1
        assert (t.statistics().waiting, t.statistics().in_flight) == (1, 0)
        vt.hold.set()
        assert list(await asyncio.gather(first, second)) == [OK_BODY, OK_BODY]
    assert len(server.seen) == 3
    assert len(vt.sleeps) == 2


async def test_a_request_that_fails_for_good_still_pauses_the_endpoint(serve: Serve) -> None:
    server = Scripted(status(429, "later", {"Retry-After": "5"}))
    url = await serve(server)
    vt = VirtualTime()
    async with transport(url, vt, max_attempts=1) as t:
        with pytest.raises(RateLimited) as caught:
            await t.post_json(ROUTE, {})
        assert caught.value.retry_after_s == 5.0
        assert await t.post_json(ROUTE, {}) == OK_BODY
    assert vt.sleeps == [5.0]
    assert vt.now == 5.0


async def test_a_pause_that_begins_while_queued_for_the_slot_is_honoured(serve: Serve) -> None:
    release = asyncio.Event()
    vt = VirtualTime()
    arrivals: list[float] = []

    async def held_then_limited(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"error": {"message": "busy"}}, status=503,
                                 headers={"Retry-After": "3"})  # fmt: skip

    async def ok(request: web.Request) -> web.StreamResponse:
        arrivals.append(vt.now)
        return web.json_response(OK_BODY)

    server = Scripted(held_then_limited, ok, ok)
    url = await serve(server)
    async with transport(url, vt, max_in_flight=1) as t:
        first = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: server.in_flight == 1)
        second = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: t.statistics().waiting == 1)
        release.set()  # the 503 frees the slot for `second`, and then pauses the endpoint
        assert list(await asyncio.gather(first, second)) == [OK_BODY, OK_BODY]
    assert vt.sleeps == [3.0, 3.0]  # `first` backs off, `second` waits out the pause
    assert arrivals == [3.0, 3.0]


async def test_token_admission_is_fifo_and_clamps_big_hints(serve: Serve) -> None:
    server = Scripted()
    url = await serve(server)
    # A 60,000-token bucket refilling 1,000 tokens/s: 50 ms between admissions of small ones.
    endpoint = Endpoint(base_url=url, model="m", tokens_per_min=60_000, rate_per_s=1000)
    async with Transport(endpoint, name="policy") as t:
        await t.post_json(ROUTE, {"i": "drain"}, tokens_hint=10**9)  # clamped to the bucket
        big = asyncio.create_task(t.post_json(ROUTE, {"i": "big"}, tokens_hint=200))
        await eventually(lambda: t.statistics().waiting == 1)
        small = [
            asyncio.create_task(t.post_json(ROUTE, {"i": i}, tokens_hint=50)) for i in range(3)
        ]
        await asyncio.gather(big, *small)
        assert t.statistics().requests == 5
    order = [orjson.loads(body)["i"] for _, _, _, body in server.seen]
    assert order == ["drain", "big", 0, 1, 2]  # aiolimiter alone would admit the small ones first


def test_request_rate_bucket_holds_at_least_one_request() -> None:
    slow = _request_limiter(0.5)
    fast = _request_limiter(50.0)
    assert slow is not None and (slow.max_rate, slow.time_period) == (1.0, 2.0)
    assert fast is not None and (fast.max_rate, fast.time_period) == (50.0, 1.0)
    assert _request_limiter(None) is None


# --- adaptive concurrency ----------------------------------------------------------------------


def adaptive(url: str, sleep: Callable[[float], Awaitable[None]], **limits: Any) -> Transport:
    endpoint = Endpoint(base_url=url, model="m", adaptive_concurrency=True, **limits)
    return Transport(endpoint, name="policy", sleep=sleep, rng=random.Random(0))


def held_status(release: asyncio.Event, code: int) -> Fault:
    async def fault(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"error": {"message": "busy"}}, status=code)

    return fault


@pytest.mark.parametrize("code", [429, 503])
async def test_an_overload_lowers_the_cap_once_per_window(serve: Serve, code: int) -> None:
    release = asyncio.Event()
    server = Scripted(*[held_status(release, code)] * 8)
    url = await serve(server)
    vt = VirtualTime()
    async with adaptive(
        url, vt.sleep, max_in_flight=16, adaptive_initial_in_flight=8, max_attempts=2
    ) as t:
        assert t.statistics().max_in_flight == 8
        calls = [asyncio.create_task(t.post_json(ROUTE, {})) for _ in range(12)]
        await eventually(lambda: server.in_flight == 8 and t.statistics().waiting == 4)
        release.set()  # eight overloads from one window: one decrease
        assert await asyncio.gather(*calls) == [OK_BODY] * 12
        stats = t.statistics()
    assert (stats.adaptive, stats.cap_decreases, stats.lowest_max_in_flight) == (True, 1, 5)
    assert server.peak == 8 and len(server.seen) == 20
    assert stats.max_in_flight >= 5  # the successes since have raised it again


async def test_only_successes_at_a_full_cap_raise_it(serve: Serve) -> None:
    url = await serve(Scripted())
    vt = VirtualTime()
    async with adaptive(url, vt.sleep, max_in_flight=64, adaptive_initial_in_flight=4) as t:
        for _ in range(20):  # one at a time: the cap of 4 is never reached
            await t.post_json(ROUTE, {})
        assert t.statistics().max_in_flight == 4
        await asyncio.gather(*(t.post_json(ROUTE, {}) for _ in range(40)))
        stats = t.statistics()
    assert 4 < stats.max_in_flight <= 44 and stats.cap_decreases == 0  # slow start


async def test_a_fixed_cap_ignores_overloads(serve: Serve) -> None:
    url = await serve(Scripted(status(429, "later", {"Retry-After": "0"})))
    vt = VirtualTime()
    async with transport(url, vt, max_in_flight=8) as t:  # loopback: fixed by default
        await t.post_json(ROUTE, {})
        stats = t.statistics()
    assert (stats.adaptive, stats.max_in_flight, stats.cap_decreases) == (False, 8, 0)


async def test_set_max_in_flight_hands_the_cap_to_the_controller(serve: Serve) -> None:
    url = await serve(Scripted())
    vt = VirtualTime()
    async with adaptive(url, vt.sleep, max_in_flight=16, adaptive_min_in_flight=3) as t:
        t.set_max_in_flight(4)
        assert (t.statistics().max_in_flight, t.statistics().lowest_max_in_flight) == (4, 4)
        await asyncio.gather(*(t.post_json(ROUTE, {}) for _ in range(12)))
        assert t.statistics().max_in_flight > 4  # adaptation went on from 4
        with pytest.raises(ConfigError, match=r"max_in_flight=2 for .*: need 3\.\.16"):
            t.set_max_in_flight(2)


class Ticks:
    """A sleep that returns only when the test calls `tick()`: the test decides when the
    /metrics poller runs."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


def gets(server: Scripted, path: str = "/metrics") -> int:
    return sum(1 for method, seen, _, _ in server.seen if (method, seen) == ("GET", path))


async def test_the_queue_is_read_off_the_hot_path_and_lowers_the_cap(serve: Serve) -> None:
    waiting = '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{m="m"} 50\n'
    server = Scripted(
        status(200, waiting),
        status(500, "metrics broken for a moment"),
        status(200, "vllm:num_requests_waiting 2\n"),
        status(404, "no such route"),
    )
    url = await serve(server)
    ticks = Ticks()
    async with adaptive(
        url,
        ticks.sleep,
        max_in_flight=32,
        adaptive_initial_in_flight=16,
        adaptive_max_waiting=4,
        metrics_interval_s=0.25,
    ) as t:
        await eventually(lambda: ticks.sleeps == [0.25])
        assert gets(server) == 0  # nothing is read before the first interval
        ticks.tick()
        await eventually(lambda: t.statistics().server_waiting == 50)
        stats = t.statistics()
        assert (stats.max_in_flight, stats.cap_decreases, stats.requests) == (11, 1, 0)
        ticks.tick()  # a 500: skipped, the next read comes as usual
        await eventually(lambda: len(ticks.sleeps) == 3)
        ticks.tick()
        await eventually(lambda: t.statistics().server_waiting == 2)
        ticks.tick()  # a 404: this server has no /metrics, so reading stops for good
        await eventually(lambda: gets(server) == 4)
        await asyncio.sleep(0.01)
        ticks.tick()
        await asyncio.sleep(0.01)
        stats = t.statistics()
    assert len(ticks.sleeps) == 4 and gets(server) == 4
    assert (stats.requests, stats.attempts, stats.max_in_flight) == (0, 0, 11)


async def test_metrics_without_the_queue_gauge_stop_the_reading(serve: Serve) -> None:
    server = Scripted(status(200, "vllm:num_requests_running 3\n"))
    url = await serve(server)
    ticks = Ticks()
    async with adaptive(url, ticks.sleep, adaptive_max_waiting=4) as t:
        ticks.tick()
        await eventually(lambda: gets(server) == 1)
        await asyncio.sleep(0.01)
        ticks.tick()
        await asyncio.sleep(0.01)
        assert t.statistics().server_waiting is None
    assert len(ticks.sleeps) == 1 and gets(server) == 1


async def test_the_metrics_read_takes_no_slot_and_survives_a_dead_server(serve: Serve) -> None:
    release = asyncio.Event()
    server = Scripted(hold(release), status(200, "vllm:num_requests_waiting 0\n"))
    url = await serve(server)
    ticks = Ticks()
    async with adaptive(
        url, ticks.sleep, max_in_flight=4, adaptive_initial_in_flight=1, adaptive_max_waiting=4
    ) as t:
        held = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: server.in_flight == 1)
        assert t.statistics().in_flight == t.statistics().max_in_flight == 1  # the cap is full
        ticks.tick()
        await eventually(lambda: t.statistics().server_waiting == 0)
        release.set()
        await held
    # a server that is down: the read fails, and the poller waits for the next interval
    ticks = Ticks()
    down = f"http://127.0.0.1:{unused_port()}"
    async with adaptive(down, ticks.sleep, adaptive_max_waiting=4, connect_timeout_s=1.0) as t:
        ticks.tick()
        await eventually(lambda: len(ticks.sleeps) == 2)
        assert t.statistics().server_waiting is None


async def test_closing_stops_the_metrics_reader(serve: Serve) -> None:
    server = Scripted()
    url = await serve(server)
    ticks = Ticks()
    t = adaptive(url, ticks.sleep, adaptive_max_waiting=4)
    async with t:
        await eventually(lambda: len(ticks.sleeps) == 1)  # waiting for its first interval
    # the reader was cancelled in its sleep and awaited: no pending task, no GET
    assert gets(server) == 0 and len(ticks.sleeps) == 1
    assert not [task for task in asyncio.all_tasks() if "metrics" in task.get_name()]


async def test_without_max_waiting_metrics_are_never_read(serve: Serve) -> None:
    server = Scripted()
    url = await serve(server)
    ticks = Ticks()
    async with adaptive(url, ticks.sleep) as t:
        await t.post_json(ROUTE, {})
        assert t.statistics().adaptive
    assert ticks.sleeps == [] and gets(server) == 0


# --- cancellation --------------------------------------------------------------------------


async def test_cancellation_propagates_and_releases_the_slot(serve: Serve) -> None:
    release = asyncio.Event()
    server = Scripted(hold(release), hold(release))
    url = await serve(server)
    vt = VirtualTime()
    ledger = Ledger()
    async with transport(url, vt, max_in_flight=1) as t:
        sent = asyncio.create_task(t.post_json(ROUTE, {}, charges=[Charge(ledger, ("0",))]))
        await eventually(lambda: server.in_flight == 1)
        queued = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: t.statistics().waiting == 1)
        queued.cancel()  # cancelled while waiting for the slot
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (t.statistics().waiting, t.statistics().in_flight) == (0, 1)
        sent.cancel()  # cancelled mid-request
        with pytest.raises(asyncio.CancelledError):
            await sent
        assert (t.statistics().in_flight, t.statistics().failures) == (0, 0)
        release.set()
        assert await t.post_json(ROUTE, {}) == OK_BODY  # the only slot is free again
    assert vt.sleeps == []
    assert [(a.status, a.error) for a in ledger.attempts] == [(None, "CancelledError")]


# --- affinity for a router ---------------------------------------------------------------------


async def test_the_affinity_key_goes_in_the_session_header_and_no_other_id(serve: Serve) -> None:
    """vllm-router hashes X-Session-ID (or, failing it, a request id header): the problem id
    goes there, a call without one sends none, and no changing id header is ever sent."""
    server = Scripted()
    url = await serve(server)
    async with Transport(Endpoint(base_url=url, model="m"), name="policy") as t:
        await t.post_json(ROUTE, {"prompt": "a"}, affinity="problem-7")
        await t.post_json("/pooling", {"input": ["a"]}, affinity="problem-7")
        await t.post_json(ROUTE, {"prompt": "b"})
        await t.post_json(ROUTE, {"prompt": "c"}, affinity="π/2 ≠ 1")
        await t.get_json("/v1/models")
    sent = [headers for _, _, headers, _ in server.seen]
    assert [h.get("X-Session-ID") for h in sent] == [
        "problem-7",
        "problem-7",
        None,
        "%CF%80%2F2%20%E2%89%A0%201",  # not ASCII: percent-encoded
        None,
    ]
    ids = {"x-request-id", "x-correlation-id", "x-trace-id", "request-id", "x-user-id"}
    assert all(ids.isdisjoint(name.lower() for name in h) for h in sent)
    assert all(h["Content-Type"] == "application/json" for h in sent[:4])


async def test_the_affinity_header_can_be_renamed_or_turned_off(serve: Serve) -> None:
    server = Scripted()
    url = await serve(server)
    for header in ("X-User-Id", None):
        async with Transport(
            Endpoint(base_url=url, model="m", affinity_header=header), name="prm"
        ) as t:
            await t.post_json("/pooling", {"input": ["a"]}, affinity="q1")
    renamed, off = (headers for _, _, headers, _ in server.seen)
    assert renamed["X-User-Id"] == "q1" and "X-Session-ID" not in renamed
    assert not {"X-Session-ID", "X-User-Id"} & set(off)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", r"affinity_header='': need an HTTP header name"),
        ("X Session", r"affinity_header='X Session': need an HTTP header name"),
        ("X-Session:", r"affinity_header='X-Session:': need an HTTP header name"),
        ("authorization", r"affinity_header='authorization': asynctts sets that header itself"),
    ],
)
def test_a_bad_affinity_header_is_a_config_error(header: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Endpoint(base_url="http://127.0.0.1:8000/v1", model="m", affinity_header=header)


# --- the API key -------------------------------------------------------------------------------


@pytest.mark.usefixtures("verbose_logging")
async def test_api_key_is_sent_but_never_logged_or_shown(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-5ecret-key-0123456789"
    monkeypatch.setenv("ASYNCTTS_TEST_KEY", secret)
    server = Scripted(status(503, {"error": {"message": "overloaded"}}), status(401, "bad key"))
    url = await serve(server)
    vt = VirtualTime()
    ledger = Ledger()
    endpoint = Endpoint(base_url=url, model="m", api_key_env="ASYNCTTS_TEST_KEY")
    with capture_logs() as logs:
        t = Transport(endpoint, name="prm", clock=vt.clock, sleep=vt.sleep)
        async with t:
            with pytest.raises(RequestRejected) as caught:
                await t.post_json("/pooling", {"input": ["x"]}, charges=[Charge(ledger, ("0",))])
    assert [headers["Authorization"] for _, _, headers, _ in server.seen] == [
        f"Bearer {secret}"
    ] * 2
    opened = next(entry for entry in logs if entry["event"] == "transport open")
    assert opened["max_in_flight"] == 512 and opened["authorized"] is True
    retry = next(entry for entry in logs if entry["event"] == "retrying request")
    assert retry["log_level"] == "warning"
    assert "HTTP 503: overloaded" in retry["reason"]
    failed = [entry for entry in logs if entry["event"] == "request failed"]
    assert [(entry["log_level"], entry["attempts"]) for entry in failed] == [("debug", 2)]
    shown = [repr(logs), str(caught.value), repr(caught.value), repr(t), repr(ledger.attempts)]
    assert all(secret not in text for text in shown)
    assert all(a.endpoint == "prm" for a in ledger.attempts)


# --- lifecycle and bad input -----------------------------------------------------------------


async def test_use_before_open_or_after_close_raises(serve: Serve) -> None:
    url = await serve(Scripted())
    vt = VirtualTime()
    t = transport(url, vt)
    root = url.removesuffix("/v1")
    with pytest.raises(RuntimeError, match=rf"Transport policy for {root} is unopened"):
        await t.post_json(ROUTE, {})
    async with t:
        await t.post_json(ROUTE, {})
        with pytest.raises(RuntimeError, match="is open; a transport is opened once"):
            await t.__aenter__()
    for call in (t.post_json(ROUTE, {}), t.get_json("/v1/models"), t.get_text("/metrics")):
        with pytest.raises(RuntimeError, match=rf"Transport policy for {root} is closed"):
            await call
    with pytest.raises(RuntimeError, match="is closed; a transport is opened once"):
        await t.__aenter__()
    await t.aclose()  # closing twice is harmless
    assert repr(t) == f"<Transport policy {root} closed>"


async def test_closing_fails_waiting_and_running_calls_with_the_endpoint_named(
    serve: Serve,
) -> None:
    release = asyncio.Event()
    server = Scripted(hold(release))
    url = await serve(server)
    vt = VirtualTime()
    t = transport(url, vt, max_in_flight=1)
    async with t:
        running = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: server.in_flight == 1)
        waiting = asyncio.create_task(t.post_json(ROUTE, {}))
        await eventually(lambda: t.statistics().waiting == 1)
    outcomes = await asyncio.gather(running, waiting, return_exceptions=True)
    release.set()
    root = url.removesuffix("/v1")
    assert [str(o) for o in outcomes] == [
        f"Transport policy for {root} is closed: use it inside `async with`"
    ] * 2
    assert all(type(o) is RuntimeError for o in outcomes)
    assert (t.statistics().in_flight, t.statistics().waiting) == (0, 0)


async def test_bad_route_and_body_are_clear_errors(serve: Serve) -> None:
    url = await serve(Scripted())
    vt = VirtualTime()
    async with transport(url, vt) as t:
        with pytest.raises(ValueError, match=r"route 'v1/models' .*must start with '/'"):
            await t.get_json("v1/models")
        with pytest.raises(TypeError, match=rf"{ROUTE}: request body is not JSON"):
            await t.post_json(ROUTE, {"x": object()})
        assert await t.post_json(ROUTE, MappingProxyType({"x": 1})) == OK_BODY


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert _parse_retry_after("7") == 7.0
    assert _parse_retry_after("1.5") == 1.5
    assert _parse_retry_after("-3") == 0.0
    assert _parse_retry_after("soon") is None
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert _parse_retry_after(past) == 0.0
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    waited = _parse_retry_after(future)
    assert waited is not None and 20.0 < waited <= 30.0
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00") == 0.0  # no zone: read as UTC
