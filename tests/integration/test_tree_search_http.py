"""Beam search and DVTS over real HTTP against the simulated server: guided by its honest
(calibrated, fallible) PRM they solve more problems than majority voting at the same n, but
not all; each problem advances on its own requests (no lockstep across problems), and
permanent failures of a third of the policy requests are survived and recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from asynctts import BeamSearch, Solver
from asynctts.answers import normalize
from asynctts.testing import Fault, LatencyModel, SimProblem, SimulatedServer, math500_problem

from helpers_endpoints import endpoints


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {
        r["problem"]: math500_problem(r["problem"], r["answer"], r["level"])
        for r in math500[10:130]
    }


@pytest.fixture
async def server(problems: dict[str, SimProblem]) -> AsyncIterator[SimulatedServer]:
    latency = LatencyModel.zero(per_request_jitter_s=0.01)
    async with SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency) as s:
        yield s


@pytest.mark.parametrize("strategy", ["beam_search", "dvts"])
async def test_tree_searches_beat_voting_but_solve_nowhere_near_everything(
    server: SimulatedServer, problems: dict[str, SimProblem], strategy: str
) -> None:
    """On 120 MATH-500 problems with their levels' difficulty, seeded: the PRM steers the
    search to more right answers than majority voting finds, and is too fallible to get
    them all."""
    items = [(str(i), p) for i, p in enumerate(problems)]
    truth = {str(i): normalize(p.answer) for i, p in enumerate(problems.values())}
    solved: dict[str, int] = {}
    async with Solver(**endpoints(server, max_attempts=2)) as solver:
        for name in ("majority", strategy):
            solutions = [s async for s in solver.solve_many(items, strategy=name, n=8, seed=3)]
            solved[name] = sum(1 for s in solutions if s.answer == truth[s.problem_id])
    assert solved["majority"] + 6 <= solved[strategy] <= 0.75 * len(problems), solved
    for sol in solutions:
        assert sol.ok and not sol.lost and not sol.degradation.degraded
        assert 1 <= len(sol.candidates) <= 8 and all(
            c.finish.value == "eos" for c in sol.candidates
        )
        assert all(len(c.scores) == len(c.steps) for c in sol.candidates)


async def test_a_slow_problem_does_not_hold_back_the_others(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    slow, *fast = list(problems)[:4]
    # every policy request of the slow problem takes 1.5 s; the others' take ~10 ms
    server.add_fault(
        Fault(
            route="/v1/completions",
            delay_s=1.5,
            times=10**6,
            match=lambda body: slow in body.get("prompt", ""),
        )
    )
    async with Solver(**endpoints(server, max_attempts=2)) as solver:
        order = [
            s.problem
            async for s in solver.solve_many(
                [slow, *fast], strategy=BeamSearch(width=2), n=4, seed=0
            )
        ]
    assert order[-1] == slow
    records = [r for r in server.stats.records if r.route == "/v1/completions"]
    slow_ends = sorted(r.end_s for r in records if r.problem == slow)
    for problem in fast:
        mine = [r for r in records if r.problem == problem]
        assert len(mine) >= 3  # several iterations (root, then each beam's children)
        # every iteration of a fast problem ended before the slow one's first request did
        assert max(r.end_s for r in mine) < slow_ends[0]


@pytest.mark.parametrize("strategy", ["beam_search", "dvts"])
async def test_a_third_of_policy_requests_failing_for_good(
    server: SimulatedServer, problems: dict[str, SimProblem], strategy: str
) -> None:
    server.add_fault(
        Fault(
            route="/v1/completions",
            status=500,
            times=10**6,
            match=lambda body: body.get("seed", 1) % 3 == 0,
        )
    )
    problem = next(iter(problems))
    async with Solver(**endpoints(server, max_attempts=2)) as solver:
        sol = await solver.solve(problem, strategy=strategy, n=16, seed=11)
    attempts = [r for r in server.stats.records if r.route == "/v1/completions"]
    failed = sum(1 for r in attempts if r.status == 500) // 2  # each was tried twice
    served = sum(1 for r in attempts if r.status == 200)
    assert 0.15 < failed / (failed + served) < 0.5
    assert sol.answer is not None and sol.candidates
    assert sol.lost and all(b.stage == "generating" for b in sol.lost)
    assert all("HTTP 500" in b.reason for b in sol.lost)
    assert sol.degradation.degraded
    assert sol.degradation.lost_generating == len(sol.lost)
    assert f"{len(sol.lost)} branches lost ({len(sol.lost)} generating, 0 scoring)" in (
        sol.degradation.notes()
    )
    # every failed request was tried twice (max_attempts=2) and the ledger counted it
    assert sol.ledger.totals().retries == failed == len(sol.lost)
