"""One endpoint, several plain servers (`Endpoint(base_url=[...])`), over real HTTP on loopback:
each problem stays on one server, a server stopped mid-run loses nothing, and URLs that are
wrong or silent at open give a clear error or a logged skip, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from asynctts import EndpointUnreachable, ModelNotFound, SolveFailed, Solver
from asynctts.equivalence import Equivalence
from asynctts.errors import ConnectFailed
from asynctts.testing import Fault, SimProblem, SimulatedServer
from asynctts.url_pool import rendezvous_order

from helpers_endpoints import (
    COMPLETIONS,
    beam_search_all,
    closed_port,
    endpoints_at,
    numbered,
    server_pair,
    servers_by_problem,
    silent_port,
)


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], n_steps=3) for r in math500[100:120]}


@pytest.fixture
async def pair(problems: dict[str, SimProblem]) -> AsyncIterator[list[SimulatedServer]]:
    async with server_pair(problems, jitter_s=0.01) as servers:
        yield servers


def first_choice(problem_id: str, servers: Sequence[SimulatedServer]) -> SimulatedServer:
    by_root = {s.url: s for s in servers}
    return by_root[rendezvous_order(problem_id, tuple(by_root))[0]]


async def test_each_problem_stays_on_one_server_and_results_match_one_server(
    pair: list[SimulatedServer], problems: dict[str, SimProblem], equivalence: Equivalence
) -> None:
    alone = await beam_search_all([pair[0].base_url], problems, equivalence)
    pair[0].reset_stats()
    spread = await beam_search_all([s.base_url for s in pair], problems, equivalence)
    assert sorted(spread) == sorted(alone) and len(spread) == 20
    for pid, sol in spread.items():
        assert sol.ok and not sol.lost
        assert sol.ledger.totals().retries == 0
        # the same seeded requests, wherever they ran: the same search
        assert [c.text for c in sol.candidates] == [c.text for c in alone[pid].candidates]
    seen = servers_by_problem(pair)
    assert len(seen) == 20
    for pid, text in numbered(problems):
        assert seen[text] == {pair.index(first_choice(pid, pair))}, pid
    counts = [sum(1 for where in seen.values() if where == {i}) for i in (0, 1)]
    assert min(counts) >= 5, counts


async def test_a_server_stopped_mid_run_loses_no_problem(
    pair: list[SimulatedServer], problems: dict[str, SimProblem], equivalence: Equivalence
) -> None:
    """Server 1 holds every POST from its 6th on; once some are held it is stopped (they get
    no answer, like a killed vLLM) and stays down. Its problems finish on server 0."""
    victim = pair[1]
    posts = 0

    def after_five(body: dict[str, Any]) -> bool:
        nonlocal posts
        posts += bool(body)  # GETs (the checks) have no body
        return posts > 5

    hold = Fault("*", delay_s=60.0, times=10**6, match=after_five)
    victim.add_fault(hold)

    async def stop_when_holding() -> float:
        async with asyncio.timeout(30):
            while victim.stats.in_flight == 0:  # noqa: ASYNC110 - watches the server from outside
                await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        stopping_s = time.monotonic()
        await victim.stop()
        return stopping_s

    stopper = asyncio.create_task(stop_when_holding())
    with capture_logs() as logs:
        solutions = await beam_search_all(
            [s.base_url for s in pair],
            problems,
            equivalence,
            backoff_base_s=0.05,
            down_cooldown_s=0.2,
        )
    stopped_s = await stopper
    assert len(solutions) == 20
    assert all(sol.ok and not sol.lost for sol in solutions.values())
    killed = [r for r in victim.stats.records if r.fault is hold]
    assert killed and all(r.status is None and r.disconnected for r in killed)
    moved = {pid for pid in solutions if first_choice(pid, pair) is victim}
    retries = {pid: sol.ledger.totals().retries for pid, sol in solutions.items()}
    assert sum(retries.values()) >= len(killed)
    # a generation is retried only for the victim's problems (a PRM batch may mix problems)
    retried = {
        pid
        for pid, sol in solutions.items()
        for a in sol.ledger.attempts
        if a.route == COMPLETIONS and a.attempt > 1
    }
    assert retried and retried <= moved
    failed = [a.error or "" for sol in solutions.values() for a in sol.ledger.attempts if a.error]
    assert failed and all(error.startswith("ConnectFailed: ") for error in failed)
    # the victim's problems went on on the other server
    texts = dict(numbered(problems))
    after = {
        r.problem for r in pair[0].stats.records if r.route == COMPLETIONS and r.start_s > stopped_s
    }
    assert {texts[pid] for pid in moved} & after
    down = [e for e in logs if e["event"] == "url down"]
    assert {e["url"] for e in down} == {victim.url}


async def test_another_model_at_any_url_fails_the_open(pair: list[SimulatedServer]) -> None:
    async with SimulatedServer(model="other-model") as other:
        urls = [pair[0].base_url, other.base_url]
        with pytest.raises(ModelNotFound) as caught:
            async with Solver(policy=endpoints_at(urls)["policy"]):
                pass
    assert str(caught.value) == (
        f"endpoint {other.base_url} does not serve model 'sim-policy'; it serves ['other-model']"
    )


@pytest.fixture
def quiet_port() -> Iterator[int]:
    with silent_port() as port:
        yield port


async def test_a_silent_url_is_skipped_with_a_warning(
    pair: list[SimulatedServer], problems: dict[str, SimProblem], quiet_port: int
) -> None:
    silent = f"http://127.0.0.1:{quiet_port}/v1"
    policy = endpoints_at([silent, pair[0].base_url], check_timeout_s=1.0)["policy"]
    started = time.monotonic()
    with capture_logs() as logs:
        async with Solver(policy=policy) as solver:
            assert time.monotonic() - started < 15  # the check's 1 s, far from a hang
            solutions = solver.solve_many(numbered(problems), strategy="majority", n=2, seed=0)
            done = [sol async for sol in solutions]
    assert len(done) == 20 and all(sol.ok and sol.ledger.totals().retries == 0 for sol in done)
    assert len(servers_by_problem(pair)) == 20  # every problem ran on the server that answers
    (skipped,) = [e for e in logs if e["event"] == "url skipped"]
    assert skipped["url"] == f"http://127.0.0.1:{quiet_port}"
    assert skipped["reason"].startswith(f"{silent} failed its check at open: it did not answer")


async def test_no_url_answering_is_one_clear_error(quiet_port: int) -> None:
    silent, closed = f"http://127.0.0.1:{quiet_port}/v1", f"http://127.0.0.1:{closed_port()}/v1"
    policy = endpoints_at([silent, closed], check_timeout_s=1.0, backoff_base_s=0.05)["policy"]
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable) as caught:
        async with Solver(policy=policy):
            pass
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert message.startswith(
        f"endpoint {silent}, {closed} is unreachable: none of its 2 URLs answered: "
        f"{silent}: it did not answer GET /v1/models within"
    )
    assert f"; {closed}: http://127.0.0.1:" in message and "connection failed" in message


async def test_a_url_down_at_open_comes_back_after_its_cooldown(
    pair: list[SimulatedServer], problems: dict[str, SimProblem]
) -> None:
    late = pair[1]
    await late.stop()
    policy = endpoints_at([s.base_url for s in pair], down_cooldown_s=0.1)["policy"]
    pid, text = next(
        (pid, text) for pid, text in numbered(problems) if first_choice(pid, pair) is late
    )
    async with Solver(policy=policy) as solver:
        before = await solver.solve(text, problem_id=pid, strategy="majority", n=2, seed=0)
        assert before.ok and not late.stats.records
        await late.start()
        await asyncio.sleep(0.2)  # past the cooldown: the next choice starts a health check
        # the check runs off the request path: the problem returns a few requests later
        for seed in range(1, 200):
            after = await solver.solve(text, problem_id=pid, strategy="majority", n=2, seed=seed)
            assert after.ok and after.ledger.totals().retries == 0
            if any(r.route == COMPLETIONS for r in late.stats.records):
                break
            await asyncio.sleep(0.01)
    checks = [r for r in late.stats.records if r.route == "/v1/models"]
    assert len(checks) == 1 and checks[0].status == 200
    assert {r.problem for r in late.stats.records if r.route == COMPLETIONS} == {text}


async def test_every_url_down_fails_the_request_after_its_attempts(
    pair: list[SimulatedServer], problems: dict[str, SimProblem]
) -> None:
    policy = endpoints_at([s.base_url for s in pair], backoff_base_s=0.05)["policy"]
    text = next(iter(problems))
    async with Solver(policy=policy) as solver:
        for server in pair:
            await server.stop()
        started = time.monotonic()
        with pytest.raises(SolveFailed) as caught:
            await solver.solve(text, problem_id="q0", strategy="majority", n=2, seed=0)
        assert time.monotonic() - started < 15
    lost = caught.value.lost
    assert lost and all(isinstance(b.cause, ConnectFailed) for b in lost)
    assert all(str(b.cause).endswith("; gave up after 4 attempts") for b in lost)
    assert all("connection failed before the response" in str(b.cause) for b in lost)
