"""The AIMD controller in virtual time, its /metrics reader, and the Endpoint settings that
switch it on.

`simulate` is a discrete-event model of a closed loop against a server that answers 429 to a
request arriving while `limit` are running: requests hold a slot for an exponential service
time (seeded), a 429 comes back at once and the request queues again. Time is a heap of event
times; nothing sleeps.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.concurrency import (
    AIMDController,
    Signal,
    controller_for,
    queue_length,
    signal_of,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError

OK, OVER, NEUTRAL = Signal.SUCCESS, Signal.OVERLOAD, Signal.NEUTRAL


def controller(
    initial: int = 8, floor: int = 1, ceiling: int = 1000, **kw: object
) -> AIMDController:
    return AIMDController(initial=initial, floor=floor, ceiling=ceiling, **kw)  # type: ignore[arg-type]


def succeed(c: AIMDController, times: int, *, saturated: bool = True) -> None:
    for _ in range(times):
        c.finished(c.started(), OK, saturated=saturated)


def window(c: AIMDController) -> None:
    """One window: as many saturated successes as the cap at its start."""
    succeed(c, c.cap)


# --- signals and the rules one at a time -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "signal"),
    [
        (200, OK),
        (204, OK),
        (429, OVER),
        (503, OVER),
        (500, NEUTRAL),
        (502, NEUTRAL),
        (400, NEUTRAL),
        (None, NEUTRAL),
    ],
)
def test_only_429_and_503_mean_overload(status: int | None, signal: Signal) -> None:
    assert signal_of(status) is signal


def test_slow_start_doubles_the_cap_every_window_until_the_ceiling() -> None:
    c = controller(initial=4, ceiling=40)
    caps = [c.cap]
    for _ in range(5):
        window(c)
        caps.append(c.cap)
    assert caps == [4, 8, 16, 32, 40, 40]
    assert c.slow_start and c.decreases == 0


def test_successes_at_a_cap_never_reached_do_not_raise_it() -> None:
    c = controller(initial=4)
    succeed(c, 100, saturated=False)
    assert c.cap == 4


def test_neutral_outcomes_change_nothing() -> None:
    c = controller(initial=10)
    for _ in range(20):
        assert c.finished(c.started(), NEUTRAL, saturated=True) is False
    assert (c.cap, c.decreases, c.slow_start) == (10, 0, True)


def test_an_overload_decreases_once_per_window() -> None:
    c = controller(initial=100)
    tickets = [c.started() for _ in range(100)]
    assert c.finished(tickets[0], OVER, saturated=True) is True
    assert (c.cap, c.decreases, c.slow_start) == (70, 1, False)
    for ticket in tickets[1:]:  # the rest of that window's 429s were caused by the old cap
        assert c.finished(ticket, OVER, saturated=True) is False
    assert (c.cap, c.decreases) == (70, 1)
    # an attempt started after the decrease reports a new overload
    assert c.finished(c.started(), OVER, saturated=True) is True
    assert (c.cap, c.decreases, c.lowest) == (49, 2, 49)


def test_the_cap_never_leaves_floor_and_ceiling() -> None:
    c = controller(initial=3, floor=2, ceiling=5)
    for _ in range(10):
        c.finished(c.started(), OVER, saturated=True)
    assert c.cap == 2
    for _ in range(50):
        window(c)
    assert c.cap == 5
    assert controller(initial=100, ceiling=20).cap == 20  # the start is clamped too
    assert controller(initial=1, floor=4).cap == 4


def test_after_a_decrease_the_cap_returns_to_the_last_overload_then_probes_faster() -> None:
    c = controller(initial=100, ceiling=10_000)
    c.finished(c.started(), OVER, saturated=True)
    assert c.cap == 70
    caps = []
    for _ in range(14):
        window(c)
        caps.append(c.cap)
    # below 100 (the cap at the overload) each window closes about half the remaining gap;
    # from 100 on the step doubles every window: +1, +2, +4, ... (rounded down)
    assert caps == [81, 88, 92, 95, 97, 98, 99, 100, 101, 104, 109, 118, 134, 162]


def test_reset_continues_from_a_hand_set_cap() -> None:
    c = controller(initial=50, floor=2, ceiling=100)
    c.reset(10)
    assert (c.cap, c.lowest) == (10, 10)
    window(c)
    assert c.cap == 20  # still in slow start
    with pytest.raises(ConfigError, match=r"cap=1: need 2\.\.100"):
        c.reset(1)
    with pytest.raises(ConfigError, match=r"cap=101: need 2\.\.100"):
        c.reset(101)


def test_bad_settings_are_config_errors_naming_the_value() -> None:
    with pytest.raises(ConfigError, match=r"floor=5, ceiling=4"):
        AIMDController(initial=4, floor=5, ceiling=4)
    with pytest.raises(ConfigError, match=r"floor=0"):
        AIMDController(initial=4, floor=0, ceiling=4)
    with pytest.raises(ConfigError, match=r"decrease_factor=1.0"):
        AIMDController(initial=4, floor=1, ceiling=4, decrease_factor=1.0)
    with pytest.raises(ConfigError, match=r"max_waiting=-1"):
        AIMDController(initial=4, floor=1, ceiling=4, max_waiting=-1)


# --- the queue signal ------------------------------------------------------------------------


def test_a_long_queue_stops_growth_and_decreases_once_the_old_attempts_are_done() -> None:
    c = controller(initial=40, max_waiting=5)
    before = [c.started() for _ in range(40)]
    assert c.observe_waiting(30) is True  # nothing from an earlier cap is in flight
    assert c.cap == 28
    # the 40 attempts sent under the old cap are still queued at the server: no new decrease
    assert c.observe_waiting(30) is False
    for ticket in before[:39]:
        c.finished(ticket, OK, saturated=True)
    assert c.cap == 28  # no growth while the queue is long
    assert c.observe_waiting(30) is False
    c.finished(before[39], OK, saturated=True)
    assert c.observe_waiting(30) is True  # the queue now reflects the current cap
    assert c.cap == 19
    assert c.observe_waiting(5) is False  # short again: growth resumes
    window(c)
    assert c.cap > 19
    assert c.decreases == 2


def test_a_queue_a_little_too_long_costs_only_its_excess() -> None:
    c = controller(initial=40, max_waiting=5)
    assert c.observe_waiting(8) is True
    assert c.cap == 37  # 3 too many waiting: 3 fewer in flight, not 30% fewer
    assert c.observe_waiting(5) is False  # at the threshold: fine
    assert c.cap == 37 and c.decreases == 1


def test_without_max_waiting_the_queue_is_ignored() -> None:
    c = controller(initial=40)
    assert c.observe_waiting(10_000) is False
    assert c.cap == 40


# --- closed-loop simulation in virtual time ---------------------------------------------------


@dataclass
class Run:
    caps: list[int] = field(default_factory=list)  # the cap after every completion
    rejected: int = 0  # 429s
    attempts: int = 0


def simulate(
    c: AIMDController,
    *,
    limit: int | None,
    demand: int,
    completions: int,
    seed: int,
    lift_after: int | None = None,
) -> Run:
    """`demand` requests always want a slot; the server runs at most `limit` (then `None`
    from the `lift_after`-th success on) and answers 429 at once beyond it."""
    rng = random.Random(seed)
    run = Run()
    now = 0.0
    events: list[tuple[float, int, int, bool]] = []  # (time, order, ticket, served)
    order = 0
    queued, in_flight, running, done = demand, 0, 0, 0

    def admit() -> None:
        nonlocal queued, in_flight, running, order
        while queued and in_flight < c.cap:
            queued -= 1
            in_flight += 1
            run.attempts += 1
            ticket = c.started()
            cap = limit if lift_after is None or done < lift_after else None
            served = cap is None or running < cap
            if served:
                running += 1
            else:
                run.rejected += 1
            delay = rng.expovariate(1.0) if served else 1e-3
            heapq.heappush(events, (now + delay, order, ticket, served))
            order += 1

    admit()
    while done < completions:
        now, _, ticket, served = heapq.heappop(events)
        saturated = in_flight >= c.cap or queued > 0
        c.finished(ticket, OK if served else OVER, saturated=saturated)
        in_flight -= 1
        if served:
            running -= 1
            done += 1
        queued += 1  # a 429 queues again; a success makes room for the next request
        run.caps.append(c.cap)
        admit()
    return run


@pytest.mark.parametrize("limit", [20, 100, 400])
def test_started_low_it_settles_near_the_servers_limit_with_few_429s(limit: int) -> None:
    c = controller(initial=32, ceiling=1000)
    run = simulate(c, limit=limit, demand=2000, completions=300 * limit, seed=limit)
    second_half = run.caps[len(run.caps) // 2 :]
    assert run.rejected / run.attempts < 0.02
    assert 0.85 * limit <= sum(second_half) / len(second_half) <= limit
    assert 0.69 * limit <= min(second_half) and max(second_half) <= limit + 2


def test_started_at_the_ceiling_it_draws_a_429_storm_first() -> None:
    """docs/design.md, section 8: started at 1,000 against a server that takes 100, a fixed-start
    controller drew far more 429s than one started low."""
    low = simulate(controller(initial=32), limit=100, demand=2000, completions=3000, seed=1)
    high = simulate(controller(initial=1000), limit=100, demand=2000, completions=3000, seed=1)
    assert high.rejected > 10 * low.rejected and high.rejected > 900
    assert low.rejected / low.attempts < 0.01


def test_when_the_limit_is_lifted_the_cap_recovers_to_the_ceiling() -> None:
    c = controller(initial=32, ceiling=1000)
    run = simulate(c, limit=50, demand=2000, completions=20_000, seed=3, lift_after=5_000)
    at_lift = run.caps[5_000]
    assert at_lift <= 52
    reached = next(i for i, cap in enumerate(run.caps) if cap == 1000)
    # exponential probing: from ~50 to 1000 within a few thousand completions (a handful of
    # windows), where one slot per window would take ~475 windows
    assert reached - 5_000 < 4_000
    assert run.caps[-1] == 1000


def test_a_server_without_limits_is_never_throttled_after_the_ramp() -> None:
    c = controller(initial=32, ceiling=512)
    run = simulate(c, limit=None, demand=2000, completions=3000, seed=4)
    ramp = run.caps.index(512)
    assert ramp < 512  # doubling from 32: 32 + 64 + 128 + 256 successes
    assert set(run.caps[ramp:]) == {512} and run.rejected == 0 and c.decreases == 0


@settings(max_examples=60, deadline=None)
@given(
    initial=st.integers(1, 300),
    floor=st.integers(1, 10),
    extra=st.integers(0, 300),
    events=st.lists(
        st.one_of(
            st.tuples(st.just("start"), st.just(0), st.booleans()),
            st.tuples(
                st.sampled_from(["ok", "over", "neutral"]), st.integers(0, 50), st.booleans()
            ),
            st.tuples(st.just("queue"), st.integers(0, 50), st.booleans()),
        ),
        max_size=300,
    ),
)
def test_any_sequence_keeps_the_cap_in_bounds_and_the_books_balanced(
    initial: int, floor: int, extra: int, events: list[tuple[str, int, bool]]
) -> None:
    ceiling = floor + extra
    c = AIMDController(initial=initial, floor=floor, ceiling=ceiling, max_waiting=10)
    open_tickets: list[int] = []
    decreases = 0
    for kind, value, saturated in events:
        before = c.cap
        if kind == "start":
            open_tickets.append(c.started())
        elif kind == "queue":
            changed = c.observe_waiting(value)
            assert changed == (c.cap != before)
        elif open_tickets:
            ticket = open_tickets.pop(value % len(open_tickets))
            signal = {"ok": OK, "over": OVER, "neutral": NEUTRAL}[kind]
            changed = c.finished(ticket, signal, saturated=saturated)
            assert changed == (c.cap != before)
            if signal is not OK:
                assert c.cap <= before
        assert floor <= c.cap <= ceiling
        assert c.lowest <= c.cap
        assert c.decreases >= decreases
        decreases = c.decreases
    for ticket in open_tickets:
        c.finished(ticket, NEUTRAL, saturated=False)
    # every attempt is accounted for: with nothing in flight, a long queue can always decrease
    before = c.decreases
    c.observe_waiting(11)
    assert c.decreases == before + 1


# --- reading /metrics ------------------------------------------------------------------------

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="a {b} c"} 3.0 1712345678000
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
"""


def test_queue_length_sums_every_engine_and_skips_lookalikes() -> None:
    assert queue_length(METRICS) == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:num_requests_waiting 4\n", 4),
        ('vllm:num_requests_waiting{m="x"} 2.6\n', 3),
        ("vllm:num_requests_running 4\n", None),
        ("", None),
        ('vllm:num_requests_waiting NaN\nvllm:num_requests_waiting{a="b"} 1\n', 1),
        ("vllm:num_requests_waiting +Inf\n", None),
        ("vllm:num_requests_waiting -3\n", None),
        ("vllm:num_requests_waiting{broken 5\n", None),
        ("vllm:num_requests_waiting\n", None),
        ('vllm:num_requests_waiting{a="b"} many\n', None),
        ("<html>not metrics</html>", None),
    ],
)
def test_queue_length_reads_one_gauge_and_ignores_the_rest(text: str, expected: int | None) -> None:
    assert queue_length(text) == expected


# --- Endpoint settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "adapts"),
    [
        ("http://127.0.0.1:8000/v1", False),
        ("http://127.9.9.9:8000", False),
        ("http://localhost:8000/v1", False),
        ("http://vllm.localhost:8000/v1", False),
        ("http://[::1]:8000/v1", False),
        ("http://10.0.0.7:8000/v1", True),
        ("https://api.example.com/v1", True),
        ("http://gpu-box:8000/v1", True),
    ],
)
def test_by_default_only_non_loopback_endpoints_adapt(url: str, adapts: bool) -> None:
    endpoint = Endpoint(base_url=url, model="m")
    assert endpoint.adapts_concurrency is adapts
    assert (controller_for(endpoint) is not None) is adapts


def test_the_choice_can_be_forced_either_way() -> None:
    assert Endpoint(base_url="http://127.0.0.1:8000", model="m", adaptive_concurrency=True)
    local = Endpoint(base_url="http://127.0.0.1:8000", model="m", adaptive_concurrency=True)
    remote = Endpoint(base_url="https://api.example.com", model="m", adaptive_concurrency=False)
    assert local.adapts_concurrency and not remote.adapts_concurrency
    assert controller_for(remote) is None


def test_controller_for_reads_the_endpoint_settings() -> None:
    endpoint = Endpoint(
        base_url="https://api.example.com/v1",
        model="m",
        max_in_flight=64,
        adaptive_initial_in_flight=100,
        adaptive_min_in_flight=3,
        adaptive_max_waiting=9,
    )
    c = controller_for(endpoint)
    assert c is not None
    assert (c.cap, c.floor, c.ceiling, c.max_waiting) == (64, 3, 64, 9)
    default = controller_for(Endpoint(base_url="https://api.example.com/v1", model="m"))
    assert default is not None and (default.cap, default.floor, default.ceiling) == (32, 1, 512)
    assert default.max_waiting is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"adaptive_concurrency": "yes"}, r"adaptive_concurrency='yes': use True, False or None"),
        ({"adaptive_concurrency": 1}, r"adaptive_concurrency=1: use True, False or None"),
        ({"adaptive_initial_in_flight": 0}, r"adaptive_initial_in_flight=0: need >= 1"),
        ({"adaptive_min_in_flight": 0}, r"adaptive_min_in_flight=0: need >= 1"),
        (
            {"adaptive_min_in_flight": 9, "max_in_flight": 8},
            r"adaptive_min_in_flight=9 exceeds max_in_flight=8",
        ),
        ({"adaptive_max_waiting": -1}, r"adaptive_max_waiting=-1: need an int >= 0"),
        ({"adaptive_max_waiting": True}, r"adaptive_max_waiting=True: need an int >= 0"),
        ({"metrics_interval_s": 0}, r"metrics_interval_s=0: need > 0"),
        (
            {"adaptive_max_waiting": 4, "adaptive_concurrency": False},
            r"adaptive_max_waiting=4 needs adaptation, which is off for this endpoint",
        ),
    ],
)
def test_bad_adaptive_settings_name_the_value(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Endpoint(base_url="https://api.example.com/v1", model="m", **settings)  # type: ignore[arg-type]


def test_the_queue_signal_on_a_loopback_endpoint_needs_adaptation_asked_for() -> None:
    with pytest.raises(ConfigError, match=r"http://127.0.0.1:8000/v1: adaptive_max_waiting=4"):
        Endpoint(base_url="http://127.0.0.1:8000/v1", model="m", adaptive_max_waiting=4)
    endpoint = Endpoint(
        base_url="http://127.0.0.1:8000/v1",
        model="m",
        adaptive_concurrency=True,
        adaptive_max_waiting=4,
    )
    assert endpoint.adapts_concurrency
