"""Faults over real HTTP against the simulated server: every solve completes, the ledger
counts exactly the retries the server caused, and a rejected request loses one branch only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asynctts import BestOfN, MajorityVote, Solution, solve
from asynctts.answers import normalize
from asynctts.api import problem_key
from asynctts.backends.context import derive_seed
from asynctts.testing import Fault, SimProblem, SimulatedServer

from helpers_endpoints import endpoints, policy_of

PROBLEM = "What is the sum of the first $10$ positive integers?"
ANSWER = "55"


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    problems = {PROBLEM: SimProblem(answer=ANSWER, slip_rate=0.0)}
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as s:
        yield s


async def best_of_4(server: SimulatedServer, **kw: Any) -> Solution:
    return await solve(
        PROBLEM, strategy=BestOfN(per_request=1), n=4, seed=0, **endpoints(server, **kw)
    )


def retried_attempts(sol: Solution) -> list[tuple[str, int, int | None]]:
    return [(a.route, a.attempt, a.status) for a in sol.ledger.attempts if a.attempt > 1]


async def test_429_with_retry_after_is_honoured_and_counted(server: SimulatedServer) -> None:
    server.add_fault(Fault(route="/v1/completions", status=429, retry_after_s=0.3, times=3))
    started = time.monotonic()
    sol = await best_of_4(server)
    assert time.monotonic() - started >= 0.3  # Retry-After held back the whole endpoint
    assert sol.answer == ANSWER and len(sol.candidates) == 4 and not sol.lost
    totals = sol.ledger.totals()
    assert totals.retries == 3 and totals.failures == 3
    assert server.stats.statuses[429] == 3
    statuses = [a.status for a in sol.ledger.attempts if a.route == "/v1/completions"]
    assert statuses.count(429) == 3 and statuses.count(200) == 4


async def test_503_burst_on_both_endpoints(server: SimulatedServer) -> None:
    server.add_fault(Fault(route="/v1/completions", status=503, times=2))
    server.add_fault(Fault(route="/pooling", status=503, times=2))
    sol = await best_of_4(server)
    assert sol.answer == ANSWER and not sol.lost
    assert sol.ledger.totals().retries == 4
    assert sorted(r[0] for r in retried_attempts(sol)) == ["/pooling"] * 2 + ["/v1/completions"] * 2
    assert all(a.prompt_tokens == 0 for a in sol.ledger.attempts if a.status == 503)


async def test_a_timeout_is_retried(server: SimulatedServer) -> None:
    server.add_fault(Fault(route="/v1/completions", delay_s=3.0, times=1))
    sol = await best_of_4(server, total_timeout_s=0.5)
    assert sol.answer == ANSWER and not sol.lost
    timed_out = [a for a in sol.ledger.attempts if a.error and a.error.startswith("TimedOut")]
    assert len(timed_out) == 1 and timed_out[0].status is None
    assert sol.ledger.totals().retries == 1


async def test_dropped_connections_are_retried(server: SimulatedServer) -> None:
    server.add_fault(Fault(route="/v1/completions", drop=True, times=2))
    server.add_fault(Fault(route="/pooling", close_mid_body=True, times=1))
    sol = await best_of_4(server)
    assert sol.answer == ANSWER and not sol.lost
    errors = sorted(a.error.split(":")[0] for a in sol.ledger.attempts if a.error)
    assert errors == ["ConnectFailed"] * 3
    assert sol.ledger.totals().retries == 3


async def test_a_400_fails_one_branch_and_the_others_finish(server: SimulatedServer) -> None:
    server.add_fault(
        Fault(route="/v1/completions", status=400, body='{"error": {"message": "bad seed"}}')
    )
    sol = await best_of_4(server)
    assert sol.answer == ANSWER
    assert len(sol.candidates) == 3 and len(sol.lost) == 1
    (lost,) = sol.lost
    assert lost.stage == "generating"
    assert lost.reason.startswith("RequestRejected") and "HTTP 400: bad seed" in lost.reason
    assert sol.ledger.totals().retries == 0  # a 400 is never retried


async def test_retries_exhausted_lose_the_branch_not_the_problem(
    server: SimulatedServer,
) -> None:
    # branch 0's request fails on both of its 2 attempts; the other three succeed
    seed = derive_seed(0, problem_key(PROBLEM), (0,))
    server.add_fault(
        Fault(route="/v1/completions", status=500, times=2, match=lambda b: b["seed"] == seed)
    )
    sol = await solve(
        PROBLEM,
        strategy=MajorityVote(per_request=1),
        n=4,
        seed=0,
        policy=policy_of(server, max_attempts=2),
    )
    assert sol.answer == normalize(ANSWER)
    assert [(b.branch, b.stage) for b in sol.lost] == [("0.0", "generating")]
    assert "ServerError" in sol.lost[0].reason and "HTTP 500" in sol.lost[0].reason
    totals = sol.ledger.totals()
    assert (totals.requests, totals.retries, totals.failures) == (4, 1, 2)
