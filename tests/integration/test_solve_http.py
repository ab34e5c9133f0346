"""`solve` and `solve_many` over real HTTP against the simulated vLLM-shaped server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from asynctts import (
    BestOfN,
    ConfigError,
    Endpoint,
    EndpointUnreachable,
    MajorityVote,
    ModelNotFound,
    PromptTooLong,
    Sampling,
    Solver,
    solve,
    solve_many,
)
from asynctts.answers import normalize
from asynctts.testing import Fault, LatencyModel, SimProblem, SimulatedServer

from helpers_endpoints import POLICY_FORMAT, policy_of, prm_of


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], slip_rate=0.0) for r in math500[:40]}


@pytest.fixture
async def server(problems: dict[str, SimProblem]) -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(model="sim-policy", prm_model="sim-prm", problems=problems) as s:
        yield s


@pytest.mark.parametrize("strategy", ["majority", "best_of_n", "weighted_best_of_n"])
@pytest.mark.parametrize("mode", ["completions", "chat"])
async def test_each_strategy_solves_over_http(
    server: SimulatedServer, math500: list[dict[str, Any]], strategy: str, mode: str
) -> None:
    record = math500[3]
    sol = await solve(
        record["problem"],
        strategy=strategy,
        n=8,
        policy=policy_of(server, mode=mode),
        prm=prm_of(server),
        seed=1,
    )
    assert len(sol.candidates) == 8 and not sol.lost
    assert all(c.finish.value == "eos" for c in sol.candidates)
    assert sol.answer == normalize(record["answer"])
    totals = sol.ledger.totals()
    assert totals.requests >= 1 and totals.retries == 0 and totals.completion_tokens > 0
    if strategy != "majority":
        assert all(len(c.scores) == len(c.steps) for c in sol.candidates)
        assert totals.prm_tokens > 0


async def test_same_seed_same_solution(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    problem = next(iter(problems))
    args: dict[str, Any] = {
        "strategy": "best_of_n",
        "n": 4,
        "policy": policy_of(server),
        "prm": prm_of(server),
    }
    a = await solve(problem, seed=7, **args)
    b = await solve(problem, seed=7, **args)
    c = await solve(problem, seed=8, **args)
    assert [x.text for x in a.candidates] == [x.text for x in b.candidates]
    assert [x.text for x in a.candidates] != [x.text for x in c.candidates]


async def test_two_thousand_branches_concurrently(math500: list[dict[str, Any]]) -> None:
    problems = {r["problem"]: SimProblem(answer=r["answer"], slip_rate=0.0) for r in math500[:128]}
    # every request is held ~1.5 s (50 tokens x 30 ms), so all 2,048 are in flight at once
    latency = LatencyModel.constant(0.03)
    async with SimulatedServer(
        model="sim-policy",
        prm_model="sim-prm",
        problems=problems,
        latency=latency,
        max_num_seqs=4096,
    ) as server:
        policy = policy_of(server, max_in_flight=4096)
        prm = prm_of(server, max_in_flight=512)
        solutions = [
            s
            async for s in solve_many(
                [(str(i), p) for i, p in enumerate(problems)],
                strategy=BestOfN(per_request=1),
                n=16,
                policy=policy,
                prm=prm,
                seed=0,
                max_problems_in_flight=128,
            )
        ]
        stats = server.stats
    assert len(solutions) == 128
    by_id = {s.problem_id: s for s in solutions}
    assert sorted(by_id, key=int) == [str(i) for i in range(128)]
    answers = list(problems.values())
    for i, answer in enumerate(answers):
        sol = by_id[str(i)]
        assert sol.ok and not sol.lost and len(sol.candidates) == 16
        assert sol.answer == normalize(answer.answer)
    assert stats.peak_concurrent >= 2000
    policy_attempts = [a for s in solutions for a in s.ledger.attempts if a.endpoint == "policy"]
    assert len(policy_attempts) == stats.routes["/v1/completions"] == 128 * 16
    assert (
        sum(s.ledger.totals().completion_tokens for s in solutions)
        == (stats.completion_tokens["/v1/completions"])
    )
    total_prm_tokens = sum(s.ledger.totals().prm_tokens for s in solutions)
    assert total_prm_tokens == pytest.approx(stats.prompt_tokens["/pooling"])


async def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = Endpoint(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        prompt_format=POLICY_FORMAT,
        max_attempts=2,
    )
    with pytest.raises(EndpointUnreachable, match=f"127.0.0.1:{port}"):
        await solve("1+1?", strategy="majority", n=1, policy=policy)


async def test_wrong_model_name_is_a_clear_error(server: SimulatedServer) -> None:
    policy = policy_of(server, model="nope")
    with pytest.raises(ModelNotFound, match=r"'nope'.*sim-policy"):
        await solve("1+1?", strategy="majority", n=1, policy=policy)


async def test_prompt_over_context_is_a_clear_error(problems: dict[str, SimProblem]) -> None:
    async with SimulatedServer(model="sim-policy", problems=problems, max_model_len=64) as s:
        with pytest.raises(PromptTooLong, match="maximum context length is 64"):
            await solve("word " * 100, strategy="majority", n=2, policy=policy_of(s))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "nope", "n": 4}, "unknown strategy 'nope'"),
        ({"strategy": "majority", "n": 0}, "n=0: the budget must be >= 1"),
        ({"strategy": "majority", "n": "4"}, "n must be an int"),
        ({"strategy": "best_of_n", "n": 4}, "'best_of_n' needs a PRM endpoint"),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    server: SimulatedServer, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await solve("1+1?", policy=policy_of(server), **kwargs)
    assert sum(server.stats.routes.values()) == 0


async def test_empty_problem_is_rejected(server: SimulatedServer) -> None:
    with pytest.raises(ConfigError, match="problem is empty"):
        await solve("  \n", strategy="majority", n=1, policy=policy_of(server))


async def test_solver_shares_connections_across_solves(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    async with Solver(policy=policy_of(server), prm=prm_of(server)) as solver:
        for problem in list(problems)[:3]:
            sol = await solver.solve(problem, strategy=MajorityVote(), n=2, seed=0)
            assert sol.answer == normalize(problems[problem].answer)
    assert server.stats.routes["/v1/models"] == 2


async def test_solver_statistics_per_endpoint(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    async with Solver(policy=policy_of(server, max_in_flight=7), prm=prm_of(server)) as solver:
        await solver.solve(next(iter(problems)), strategy=BestOfN(per_request=1), n=3, seed=0)
        stats = solver.statistics()
    assert sorted(stats) == ["policy", "prm"]
    assert stats["policy"].max_in_flight == 7 and stats["policy"].in_flight == 0
    assert stats["policy"].requests == 1 + 3  # /v1/models, then one request per sample
    assert stats["prm"].requests >= 2


async def test_max_tokens_above_the_context_is_capped_to_it(
    problems: dict[str, SimProblem],
) -> None:
    """vLLM rejects max_tokens > max_model_len outright; the solver asks for no more."""
    async with SimulatedServer(model="sim-policy", problems=problems, max_model_len=1024) as s:
        async with Solver(policy=policy_of(s), sampling=Sampling(max_tokens=4096)) as solver:
            assert solver.sampling.max_tokens == 1024
            sol = await solver.solve(next(iter(problems)), strategy="majority", n=2, seed=0)
        bodies = [r for r in s.stats.records if r.route == "/v1/completions"]
    assert sol.answer is not None and len(bodies) == 1


async def test_solve_many_yields_problems_in_the_order_they_finish(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    texts = list(problems)[:4]
    # problem i's requests are held 0.9 - 0.3 i seconds: they finish in the order 3, 2, 1, 0
    for i, text in enumerate(texts[:3]):
        server.add_fault(
            Fault(
                route="/v1/completions",
                delay_s=0.9 - 0.3 * i,
                times=10**6,
                match=lambda body, text=text: text in body.get("prompt", ""),
            )
        )
    async with Solver(policy=policy_of(server)) as solver:
        order = [
            s.problem_id
            async for s in solver.solve_many(
                [(str(i), t) for i, t in enumerate(texts)], strategy="majority", n=2, seed=0
            )
        ]
    assert order == ["3", "2", "1", "0"]


async def test_leaving_solve_many_early_cancels_the_problems_still_running(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    texts = list(problems)[:3]
    slow = texts[1:]
    server.add_fault(
        Fault(
            route="/v1/completions",
            delay_s=30.0,
            times=10**6,
            match=lambda body: any(t in body.get("prompt", "") for t in slow),
        )
    )
    async with Solver(policy=policy_of(server)) as solver:
        first = None
        many = solver.solve_many(
            [(str(i), t) for i, t in enumerate(texts)], strategy="majority", n=2, seed=0
        )
        async with aclosing(many):
            async for s in many:
                first = s
                break
        assert first is not None and first.problem_id == "0" and first.ok
        running = [t for t in asyncio.all_tasks() if "_solve_one" in repr(t.get_coro())]
        assert running == []
