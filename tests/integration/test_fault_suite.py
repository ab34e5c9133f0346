"""The fault suite (issue 6, part 3): faults injected by the simulated server over real HTTP,
on the policy and the PRM routes, through `Solver.solve_many` with majority, best-of-N, beam
search, DVTS and particle filtering.

Every test checks, with `check_run`:
- each problem comes back exactly once;
- it completes, or says why not: `Solution.error` for a problem that failed as a whole, and
  `Solution.lost` (each with its reason) for branches it lost;
- the ledgers agree with the server: per route, the attempts and their statuses equal the
  server's records (a PRM request shared by several problems counts by its shares), failed
  attempts equal faulted records, and the tokens of successful attempts equal the server's
  token counters.

Faults hit the i-th request to arrive on a route (a counter, not a clock): a burst at the start
and, on the policy route, one mid-run. Each route gets fewer faults than `MAX_ATTEMPTS`, so no
request can spend all its attempts on them: every problem must complete with nothing lost.
Retry backoff is scaled down (`Endpoint.backoff_base_s`) so the suite runs in seconds; the
retry logic is unchanged. Nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from asynctts import (
    DVTS,
    BeamSearch,
    BestOfN,
    MajorityVote,
    ParticleFilter,
    Rebase,
    Revise,
    Solution,
    Solver,
)
from asynctts.equivalence import Equivalence
from asynctts.search.strategy import Strategy
from asynctts.testing import Fault, SimProblem, SimulatedServer

from helpers_endpoints import policy_of, prm_of

POLICY = "/v1/completions"
PRM = "/pooling"
MAX_ATTEMPTS = 6
N = 4

STRATEGIES: dict[str, Strategy] = {
    "majority": MajorityVote(per_request=1),
    "best_of_n": BestOfN(per_request=1),
    "beam_search": BeamSearch(width=2, max_depth=8),
    "dvts": DVTS(width=2, max_depth=8),
    "particle_filter": ParticleFilter(max_depth=8),
    "rebase": Rebase(max_depth=8),
    "revise": Revise(continuations=1, rounds=1, per_request=1),
}
# policy requests of a fault-free run of PROBLEMS (one per sample; one per subtree and step;
# particle filter: one per distinct path and step, as many as its resampling left; rebase:
# one per node given a share; revise: one per original and one per revision, 12 and 9)
POLICY_REQUESTS = {
    "majority": 24,
    "best_of_n": 24,
    "beam_search": 48,
    "dvts": 48,
    "particle_filter": 47,
    "rebase": 39,
    "revise": 21,
}


class Nth:
    """A `Fault.match` that picks the i-th request to reach it (0-based), for i in
    `indexes`; with one fault per route that is the i-th request on the route."""

    def __init__(self, indexes: Iterable[int]) -> None:
        self.indexes = frozenset(indexes)
        self.seen = 0

    def __call__(self, body: dict[str, Any]) -> bool:
        index, self.seen = self.seen, self.seen + 1
        return index in self.indexes


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], n_steps=3) for r in math500[20:26]}


@pytest.fixture
async def server(problems: dict[str, SimProblem]) -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(prm_model="sim-prm", problems=problems, seed=6) as s:
        yield s


def solver(server: SimulatedServer, strategy: str, equivalence: Equivalence, **kw: Any) -> Solver:
    settings: dict[str, Any] = {"max_attempts": MAX_ATTEMPTS, "backoff_base_s": 0.01, **kw}
    prm = None if strategy == "majority" else prm_of(server, **settings)
    return Solver(policy=policy_of(server, **settings), prm=prm, equivalence=equivalence)


async def run(
    server: SimulatedServer,
    problems: dict[str, SimProblem],
    strategy: str,
    equivalence: Equivalence,
    **kw: Any,
) -> list[Solution]:
    items = [(f"p{i}", text) for i, text in enumerate(problems)]
    async with solver(server, strategy, equivalence, **kw) as s:
        solutions = [
            sol async for sol in s.solve_many(items, strategy=STRATEGIES[strategy], n=N, seed=5)
        ]
    await settled(server)
    return solutions


async def settled(server: SimulatedServer) -> None:
    """Wait until the server has recorded every request (a client that timed out closes its
    connection; the server notices a moment later). The deadline only stops a hung test."""
    async with asyncio.timeout(10):
        while server.stats.in_flight:  # noqa: ASYNC110 - polls the server's counter from outside
            await asyncio.sleep(0.005)


def attempts_on(solutions: list[Solution], route: str) -> list[tuple[float, Any]]:
    """(share, attempt) of every attempt on `route`, over all problems' ledgers."""
    return [(a.share, a) for sol in solutions for a in sol.ledger.attempts if a.route == route]


def weighted(counts: Iterable[tuple[float, Any]]) -> dict[Any, float]:
    total: dict[Any, float] = {}
    for share, key in counts:
        total[key] = total.get(key, 0.0) + share
    return {key: round(value, 6) for key, value in total.items()}


def check_run(
    server: SimulatedServer,
    problems: dict[str, SimProblem],
    solutions: list[Solution],
    routes: tuple[str, ...],
    *,
    never_reached: Callable[[str], bool] = lambda error: False,
) -> None:
    """The invariants every faulty run keeps (see the module docstring). `never_reached`
    picks the failed attempts the server cannot have seen (it was down)."""
    assert sorted(s.problem_id for s in solutions) == sorted(f"p{i}" for i in range(len(problems)))
    for sol in solutions:
        if sol.ok:
            assert sol.candidates and sol.answer is not None, sol.problem_id
        else:
            assert sol.error and sol.answer is None and not sol.candidates, sol.problem_id
        for lost in sol.lost:
            assert lost.stage in ("generating", "scoring") and lost.reason, lost
    records = [r for r in server.stats.records if r.route in routes]
    for route in routes:
        mine = attempts_on(solutions, route)
        seen = [r for r in records if r.route == route]
        # statuses per route: what the ledgers say happened, against what the server did
        reached = [(share, a) for share, a in mine if not never_reached(a.error or "")]
        assert weighted((share, a.status) for share, a in reached) == dict(
            Counter(r.status for r in seen)
        ), route
        # every failed attempt the server saw is one it faulted, and the other way round
        failed = round(sum(share for share, a in reached if a.error), 6)
        assert failed == sum(1 for r in seen if r.fault is not None), route
        # tokens: only intact responses count, on both sides
        ok = [(share, a) for share, a in mine if a.error is None]
        assert all(a.status == 200 for _, a in ok)
        assert all(a.prompt_tokens == a.completion_tokens == 0 for _, a in mine if a.error)
        prompt = sum(a.prompt_tokens for _, a in ok)
        completion = sum(a.completion_tokens for _, a in ok)
        assert math.isclose(prompt, server.stats.prompt_tokens[route], rel_tol=1e-9), route
        assert math.isclose(completion, server.stats.completion_tokens[route], rel_tol=1e-9)


def completed(solutions: list[Solution], strategy: str) -> None:
    """Nothing lost: every problem solved with its full complement of candidates."""
    for sol in solutions:
        assert sol.ok and not sol.lost and not sol.degradation.degraded, sol.problem_id
        if strategy in ("majority", "best_of_n"):
            assert len(sol.candidates) == N
        if strategy != "majority":
            assert all(len(c.scores) == len(c.steps) for c in sol.candidates)


# kind: (policy fault, PRM fault, error type of the failed attempts, endpoint settings)
FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any], str, dict[str, Any]]] = {
    "5xx burst": ({"status": 503}, {"status": 500}, "ServerError", {}),
    "429 with Retry-After": (
        {"status": 429, "retry_after_s": 0.05},
        {"status": 429, "retry_after_s": 0.05},
        "RateLimited",
        {},
    ),
    "slow past the timeout": (
        {"delay_s": 30.0},
        {"delay_s": 30.0},
        "TimedOut",
        {"read_timeout_s": 1.0},
    ),
    "reset mid-body": ({"close_mid_body": True}, {"drop": True}, "ConnectFailed", {}),
    "malformed JSON": (
        {"truncate": True},
        {"status": 200, "body": '{"data": [', "content_type": "application/json"},
        "BadResponse",
        {},
    ),
}


def fault_indexes(kind: str, strategy: str) -> tuple[frozenset[int], frozenset[int]]:
    """Which arrivals fail, on the policy and the PRM route: fewer than MAX_ATTEMPTS each."""
    mid = POLICY_REQUESTS[strategy] // 2
    if kind == "slow past the timeout":  # each costs a read timeout: keep them few
        return frozenset({0, mid}), frozenset({0, 1})
    # best-of-N sends all its paths to the PRM in one or two coalesced requests, so the PRM
    # burst hits the first arrivals, retries included
    return frozenset({0, 1, 2, mid, mid + 1}), frozenset(range(MAX_ATTEMPTS - 1))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("kind", list(FAULTS))
async def test_every_problem_completes_and_the_ledgers_match_the_server(
    server: SimulatedServer,
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    strategy: str,
    kind: str,
) -> None:
    policy_fault, prm_fault, error_type, settings = FAULTS[kind]
    policy_at, prm_at = fault_indexes(kind, strategy)
    server.add_fault(Fault(POLICY, times=len(policy_at), match=Nth(policy_at), **policy_fault))
    routes: tuple[str, ...] = (POLICY,)
    if strategy != "majority":
        server.add_fault(Fault(PRM, times=len(prm_at), match=Nth(prm_at), **prm_fault))
        routes = (POLICY, PRM)
    solutions = await run(server, problems, strategy, equivalence, **settings)
    assert server.pending_faults() == []  # every planned fault fired
    completed(solutions, strategy)
    check_run(server, problems, solutions, routes)
    errors = {
        (a.route, (a.error or "").split(":")[0])
        for sol in solutions
        for a in sol.ledger.attempts
        if a.error
    }
    assert errors == {(route, error_type) for route in routes}
    faulted = Counter(r.route for r in server.stats.records if r.fault is not None)
    expected = {POLICY: len(policy_at)} | ({PRM: len(prm_at)} if strategy != "majority" else {})
    assert faulted == expected


@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_failures_for_good_are_reported_with_their_reasons(
    server: SimulatedServer,
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    strategy: str,
) -> None:
    """Problem p1's policy requests always fail (500, retried until spent); p2's PRM requests
    are always rejected (400: not retried; coalesced batches are bisected down to p2's paths).
    Those problems fail with their reasons; the others are untouched."""
    texts = list(problems)
    server.add_fault(
        Fault(POLICY, status=500, times=10**6, match=lambda b: texts[1] in b.get("prompt", ""))
    )
    server.add_fault(
        Fault(
            PRM,
            status=400,
            times=10**6,
            match=lambda b: any(texts[2] in text for text in b.get("input", [])),
        )
    )
    solutions = await run(server, problems, strategy, equivalence, max_attempts=2)
    by_id = {s.problem_id: s for s in solutions}
    failed_policy = by_id.pop("p1")
    assert failed_policy.error is not None and failed_policy.error.startswith("SolveFailed: ")
    assert "ServerError" in failed_policy.error and "HTTP 500" in failed_policy.error
    assert failed_policy.lost and all(
        b.stage == "generating" and b.reason.startswith("ServerError: ") and "HTTP 500" in b.reason
        for b in failed_policy.lost
    )
    attempts = [a.attempt for a in failed_policy.ledger.attempts]
    assert attempts.count(1) == attempts.count(2) > 0  # every request tried exactly twice
    routes: tuple[str, ...] = (POLICY,)
    if strategy != "majority":
        routes = (POLICY, PRM)
        failed_prm = by_id.pop("p2")
        assert failed_prm.error is not None and "RequestRejected" in failed_prm.error
        assert failed_prm.lost and all(
            b.stage == "scoring" and "HTTP 400" in b.reason for b in failed_prm.lost
        )
    for sol in by_id.values():
        assert sol.ok and not sol.lost and not sol.degradation.degraded, sol.problem_id
    check_run(server, problems, solutions, routes)


class From:
    """A `Fault.match` for every POST from the `start`-th on (GETs have no body)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.seen = 0

    def __call__(self, body: dict[str, Any]) -> bool:
        if not body:
            return False
        self.seen += 1
        return self.seen > self.start


def refused(error: str) -> bool:
    """An attempt that found the server down: the connection was refused."""
    return "Cannot connect to host" in error


@pytest.mark.parametrize("strategy", list(STRATEGIES))
async def test_server_killed_and_restarted_mid_run(
    server: SimulatedServer,
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    strategy: str,
) -> None:
    """From the 6th request on the server holds every request; once some are held it is
    stopped (they get no response, like a killed vLLM), stays down a moment (new connections
    are refused), and starts again on the same port. Every problem still completes."""
    hold = Fault("*", delay_s=60.0, times=10**6, match=From(5))
    server.add_fault(hold)
    restarts: list[float] = []

    async def kill_and_restart() -> None:
        async with asyncio.timeout(30):
            while server.stats.in_flight == 0:  # noqa: ASYNC110 - watches the server from outside
                await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)  # let more requests pile up (not asserted on)
        await server.stop()
        server.clear_faults()
        await asyncio.sleep(0.1)
        restarts.append(time.monotonic())
        await server.start()

    killer = asyncio.create_task(kill_and_restart())
    # backoff long enough that retries outlast the outage: 5 retries fit in 0.1 s with
    # negligible probability
    solutions = await run(server, problems, strategy, equivalence, backoff_base_s=0.1)
    await killer
    (restarted_s,) = restarts
    completed(solutions, strategy)
    routes = (POLICY,) if strategy == "majority" else (POLICY, PRM)
    killed = [r for r in server.stats.records if r.fault is hold]
    assert killed and all(r.status is None and r.disconnected for r in killed)
    # the killed requests are the ledgers' failed attempts that reached the server
    check_run(server, problems, solutions, routes, never_reached=refused)
    failed = [a.error or "" for sol in solutions for a in sol.ledger.attempts if a.error]
    assert all(error.startswith("ConnectFailed: ") for error in failed)
    # the run went on after the restart
    assert any(r.status == 200 and r.start_s > restarted_s for r in server.stats.records)
