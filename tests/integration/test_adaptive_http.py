"""Adaptive concurrency (issue 6, part 5) over real HTTP against the simulated server.

- A server that answers 429 past K requests in flight: the cap ramps up from a low start,
  settles near K with few 429s, and once the limit is lifted climbs back to the ceiling.
- A server whose waiting queue grows (`vllm:num_requests_waiting` on /metrics): the cap backs
  off until the queue is short.
- `solve_many` against a limited server: with adaptation every problem completes with far
  fewer 429s than with a fixed cap.

The cap trajectory is sampled after every completed request (by count, not by clock);
nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from asynctts import BestOfN, Solution, Solver
from asynctts.equivalence import Equivalence
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer
from asynctts.transport import Transport

from helpers_endpoints import endpoints, policy_of

ROUTE = "/v1/completions"


async def drive(
    transport: Transport, successes: int, workers: int, body: Callable[[int, int], dict[str, Any]]
) -> list[int]:
    """`workers` loops post until `successes` requests have succeeded; returns the cap seen
    after each success."""
    caps: list[int] = []

    async def worker(index: int) -> None:
        sent = 0
        while len(caps) < successes:
            sent += 1
            await transport.post_json(ROUTE, body(index, sent))
            caps.append(transport.statistics().max_in_flight)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return caps


def short_request(index: int, sent: int) -> dict[str, Any]:
    return {"model": "sim-policy", "prompt": f"q{index}", "max_tokens": 5, "seed": sent}


def posts(server: SimulatedServer) -> int:
    return sum(1 for r in server.stats.records if r.route == ROUTE)


async def test_the_cap_settles_near_a_concurrency_limit_and_recovers_when_it_is_lifted() -> None:
    limit = 16
    latency = LatencyModel.zero(per_request_jitter_s=0.04)  # 20 ms a request on average
    async with SimulatedServer(latency=latency, max_concurrent_requests=limit, seed=2) as server:
        endpoint = policy_of(
            server,
            adaptive_concurrency=True,
            max_in_flight=128,
            adaptive_initial_in_flight=8,
            max_attempts=10,
        )
        async with Transport(endpoint, name="policy") as transport:
            limited = await drive(transport, 1000, workers=160, body=short_request)
            rejected, sent = server.stats.statuses[429], posts(server)
            lowered = transport.statistics().cap_decreases
            server.max_concurrent_requests = None  # the limit is lifted
            lifted = await drive(transport, 1200, workers=160, body=short_request)
            stats = transport.statistics()
    # limited: ramps up from 8, then a sawtooth just under the limit, with few 429s
    assert limited[0] <= 9 and max(limited[:100]) >= limit
    settled = limited[len(limited) // 2 :]
    assert 0.7 * limit <= statistics.mean(settled) <= 1.1 * limit
    assert limit // 2 <= min(settled) and max(settled) <= limit + 4
    assert lowered >= 3 and rejected / sent < 0.05
    # lifted: no more 429s, and the cap climbs to the ceiling within a few windows
    assert server.stats.statuses[429] == rejected
    assert lifted[-1] == 128 and lifted.index(128) < 800
    assert stats.failures == 0 and stats.lowest_max_in_flight == 8


async def test_a_growing_waiting_queue_backs_the_cap_off() -> None:
    # 8 sequences run at once; everything beyond waits in the server's queue
    latency = LatencyModel.constant(0.004)
    async with SimulatedServer(latency=latency, max_num_seqs=8) as server:
        endpoint = policy_of(
            server,
            adaptive_concurrency=True,
            max_in_flight=64,
            adaptive_initial_in_flight=64,
            adaptive_max_waiting=4,
            metrics_interval_s=0.05,
        )
        async with Transport(endpoint, name="policy") as transport:
            caps = await drive(transport, 800, workers=80, body=short_request)
            stats = transport.statistics()
    assert server.stats.peak_waiting >= 40  # at the start 64 in flight left 56 waiting
    assert caps[0] == 64 and stats.cap_decreases >= 3 and stats.lowest_max_in_flight <= 16
    # at the end the cap hovers where the queue stays near max_waiting: 8 running + ~4
    assert max(caps[-200:]) <= 24
    assert stats.server_waiting is not None and server.stats.statuses[429] == 0
    assert server.stats.routes["/metrics"] >= 3


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], n_steps=3) for r in math500[40:80]}


async def best_of_8(
    problems: dict[str, SimProblem], equivalence: Equivalence, *, adaptive: bool
) -> tuple[list[Solution], SimulatedServer]:
    server = SimulatedServer(
        prm_model="sim-prm",
        problems=problems,
        latency=LatencyModel.zero(per_request_jitter_s=0.02),
        max_concurrent_requests=16,  # shared by both routes, like one API key's limit
        seed=3,
    )
    async with server:
        settings = endpoints(server, adaptive_concurrency=adaptive, max_attempts=8)
        items = [(f"p{i}", text) for i, text in enumerate(problems)]
        async with Solver(**settings, equivalence=equivalence) as solver:
            solutions = [
                s
                async for s in solver.solve_many(
                    items, strategy=BestOfN(per_request=1), n=8, seed=1
                )
            ]
    return solutions, server


def rejected_share(server: SimulatedServer) -> float:
    statuses = [r.status for r in server.stats.records if r.route in (ROUTE, "/pooling")]
    return statuses.count(429) / len(statuses)


async def test_solve_many_against_a_limited_api_completes_with_few_429s(
    problems: dict[str, SimProblem], equivalence: Equivalence
) -> None:
    adapted, server = await best_of_8(problems, equivalence, adaptive=True)
    fixed, fixed_server = await best_of_8(problems, equivalence, adaptive=False)
    for solutions in (adapted, fixed):
        assert sorted(s.problem_id for s in solutions) == sorted(f"p{i}" for i in range(40))
        assert all(s.ok and not s.lost and len(s.candidates) == 8 for s in solutions)
    # the ledgers saw every 429 the server sent, on each route
    for route in (ROUTE, "/pooling"):
        mine: Counter[int | None] = Counter()
        for sol in adapted:
            for a in sol.ledger.attempts:
                if a.route == route:
                    mine[a.status] += a.share  # type: ignore[assignment]
        seen = Counter(r.status for r in server.stats.records if r.route == route)
        assert {k: round(v, 6) for k, v in mine.items()} == dict(seen)
    assert rejected_share(server) < 0.2
    assert rejected_share(server) < rejected_share(fixed_server) / 2
