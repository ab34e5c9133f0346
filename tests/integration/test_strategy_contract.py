"""The contract every registered strategy keeps, over real HTTP against the simulated server
(lost branches have their own suite, test_fault_suite.py):

- seeds: the same seed gives the same solution, text for text; another seed another one;
- traces: the trace is a tree whose finished results are exactly the candidates, each
  readable back from it with its answer;
- cancellation: cancelling a solve while its requests are in flight ends it with
  `CancelledError` and leaves no task of it running.

"revise[prompted]" (prompted self-refinement) runs in chat mode: its revisions carry earlier
turns, which a plain `prompt_format` cannot render (refused before any request).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asynctts import ConfigError, Endpoint, Solution, Solver, solve
from asynctts.api import STRATEGIES
from asynctts.search.revise import Revise
from asynctts.search.strategy import Strategy
from asynctts.testing import Fault, SimulatedServer
from asynctts.testing.sim_model import math500_problem

from helpers_endpoints import policy_of, prm_of

PROMPTED = "revise[prompted]"
NAMES = [*sorted(STRATEGIES), PROMPTED]
N = 8  # every strategy's budget: beam search and DVTS split it by width 4, revise takes 5


def strategy_of(name: str) -> str | Strategy:
    return Revise(revision="prompted") if name == PROMPTED else name


def policy_for(server: SimulatedServer, name: str) -> Endpoint:
    """Chat mode for prompted revision (earlier turns as messages), else the format's prompt."""
    if name == PROMPTED:
        return Endpoint(base_url=server.base_url, model="sim-policy", mode="chat")
    return policy_of(server)


@pytest.fixture
def texts(math500: list[dict[str, Any]]) -> list[str]:
    # level 3-4 problems: slips happen, so the searches have choices to make
    return [r["problem"] for r in math500 if r["level"] in (3, 4)][:2]


@pytest.fixture
async def server(math500: list[dict[str, Any]], texts: list[str]) -> AsyncIterator[SimulatedServer]:
    records = {r["problem"]: r for r in math500}
    problems = {t: math500_problem(t, records[t]["answer"], records[t]["level"]) for t in texts}
    async with SimulatedServer(model="sim-policy", prm_model="sim-prm", problems=problems) as s:
        yield s


async def solved(server: SimulatedServer, text: str, name: str, seed: int) -> Solution:
    return await solve(
        text,
        strategy=strategy_of(name),
        n=N,
        policy=policy_for(server, name),
        prm=prm_of(server),
        seed=seed,
        trace=True,
    )


def fingerprint(sol: Solution) -> tuple[Any, ...]:
    return (
        sol.answer,
        [(c.branch, c.text, c.scores) for c in sol.candidates],
        [(lost.branch, lost.reason) for lost in sol.lost],
    )


@pytest.mark.parametrize("name", NAMES)
async def test_same_seed_same_solution_other_seed_other_samples(
    server: SimulatedServer, texts: list[str], name: str
) -> None:
    first = await solved(server, texts[0], name, seed=7)
    again = await solved(server, texts[0], name, seed=7)
    other = await solved(server, texts[0], name, seed=8)
    assert first.ok and first.candidates
    assert fingerprint(again) == fingerprint(first)
    assert [c.text for c in other.candidates] != [c.text for c in first.candidates]


@pytest.mark.parametrize("name", NAMES)
async def test_trace_holds_every_candidate_and_is_a_tree(
    server: SimulatedServer, texts: list[str], name: str
) -> None:
    sol = await solved(server, texts[1], name, seed=3)
    trace = sol.trace
    assert trace is not None
    assert (trace.strategy, trace.n, trace.answer) == (name.split("[")[0], N, sol.answer)
    nodes = trace.nodes
    # one root; every other node hangs from a node of the trace
    assert [key for key, node in nodes.items() if node.parent is None] == [()]
    assert all(node.parent in nodes for key, node in nodes.items() if key != ())
    results = {key for key, node in nodes.items() if node.result}
    candidates = {tuple(map(int, c.branch.split("."))) for c in sol.candidates}
    assert results == candidates
    answers = trace.answers()
    for candidate in sol.candidates:
        key = tuple(map(int, candidate.branch.split(".")))
        assert trace.text_of(key) == candidate.text
        assert answers[key] == candidate.answer


@pytest.mark.parametrize("name", NAMES)
async def test_cancelling_a_solve_mid_flight_leaves_nothing_running(
    server: SimulatedServer, texts: list[str], name: str
) -> None:
    # every policy request hangs until cancelled
    route = "/v1/chat/completions" if name == PROMPTED else "/v1/completions"
    server.add_fault(Fault(route=route, delay_s=600.0, times=10**6))
    async with Solver(policy=policy_for(server, name), prm=prm_of(server)) as solver:
        task = asyncio.create_task(solver.solve(texts[0], strategy=strategy_of(name), n=N, seed=0))
        while server.stats.in_flight < 1:  # noqa: ASYNC110 (the server has no event for it)
            await asyncio.sleep(0.01)
        assert asynctts_tasks()  # the check sees the solve's tasks while it runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asynctts_tasks() == []


def asynctts_tasks() -> list[asyncio.Task[Any]]:
    """The running tasks whose coroutine is asynctts code (the server's run under aiohttp)."""
    tasks = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_globals["__name__"].startswith("asynctts."):
            tasks.append(task)
    return tasks


async def test_prompted_revision_refuses_a_prompt_format_policy_before_any_request(
    server: SimulatedServer, texts: list[str]
) -> None:
    async with Solver(policy=policy_of(server), prm=prm_of(server)) as solver:
        with pytest.raises(ConfigError) as err:
            await solver.solve(texts[0], strategy=strategy_of(PROMPTED), n=N, seed=0)
    assert str(err.value) == (
        f"strategy 'revise' with revision='prompted' sends earlier turns to policy endpoint"
        f" {server.base_url}, but the policy's prompt_format"
        " '{system}\\n\\nProblem: {problem}\\n\\nSolution:\\n' renders one problem and one"
        " answer, not a conversation with earlier turns (a solution, then a request to revise"
        " it): use chat mode, or completions mode with a tokenizer's chat template (no"
        " prompt_format)"
    )
    assert set(server.stats.routes) <= {"/v1/models"}
