"""Failover on real vLLM: two replicas of the tiny policy behind a vllm-router (the launcher
starts it, consistent_hash on asynctts's X-Session-ID), one SIGKILLed while it is serving a
beam search. No problem is lost: the router retries the generations that were on the dead
replica and moves its problems to the survivor; whatever the router gives back as an error,
asynctts retries, and its ledgers count each retry."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from asynctts import Endpoint, Solution, Solver

from helpers_vllm import Fleet, installed, launch, metric_sum

pytestmark = [pytest.mark.vllm, pytest.mark.router, pytest.mark.timeout(900)]

PROBLEMS = [
    (f"q{i}", f"What is {a} + {b} - {c}?")
    for i, (a, b, c) in enumerate(
        [(3, 4, 1), (10, 5, 2), (21, 9, 3), (7, 7, 7), (12, 30, 4), (8, 1, 6)] * 2
    )
]


@pytest.fixture
def router_bin() -> Path:
    path: Path = launch.router_executable(launch.VLLM_PYTHON)
    return installed(path, f"vllm-router missing at {path}: `make venv-vllm` installs it")


async def busy_after(root_url: str, finished: float) -> bool:
    """The server has finished `finished` requests and is running more."""
    done = await metric_sum(root_url, "vllm:request_success_total")
    return done >= finished and await metric_sum(root_url, "vllm:num_requests_running") > 0


async def test_a_replica_killed_mid_run_behind_the_router_loses_no_problem(
    fleet: Fleet, prm: Endpoint, router_bin: Path, tmp_path: Path
) -> None:
    survivor, victim = fleet.server("policy"), fleet.server("replica")
    spec = launch.RouterSpec(
        upstream=survivor.spec,
        workers=(survivor.root_url, victim.root_url),
        port=launch.free_port("127.0.0.1"),
        metrics_port=launch.free_port("127.0.0.1"),
    )
    (front,) = await asyncio.to_thread(
        launch.start_routers, [spec], run_dir=tmp_path, router=router_bin, say=lambda _: None
    )
    try:
        policy = Endpoint(
            base_url=front.base_url, model="tiny-policy", tokenizer=str(fleet.models.policy)
        )

        async def solve_all() -> list[Solution]:
            async with Solver(policy=policy, prm=prm) as solver:
                return [s async for s in solver.solve_many(PROBLEMS, strategy="beam_search", n=8)]

        before = await metric_sum(victim.root_url, "vllm:request_success_total")
        run = asyncio.create_task(solve_all())
        # kill it with generations running on it, once it has finished a few
        async with asyncio.timeout(300):
            while not await busy_after(victim.root_url, before + 3):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert not run.done(), "the solve finished before the kill: make it longer"
        os.killpg(victim.pid, signal.SIGKILL)
        taken_over_from = await metric_sum(survivor.root_url, "vllm:request_success_total")
        solutions = await asyncio.wait_for(run, timeout=300)
        router_retries = await metric_sum(
            f"http://127.0.0.1:{front.spec.metrics_port}", "vllm_router_retries_total"
        )
        survivor_done = await metric_sum(survivor.root_url, "vllm:request_success_total")
    finally:
        await asyncio.to_thread(launch.stop_servers, [front], say=lambda _: None)

    assert sorted(s.problem_id for s in solutions) == sorted(pid for pid, _ in PROBLEMS)
    assert all(s.ok and not s.lost and s.answer for s in solutions), [
        (s.problem_id, s.error, [b.reason for b in s.lost]) for s in solutions
    ]
    assert survivor_done > taken_over_from, "the survivor served nothing after the kill"
    # the generations in flight on the dead replica were retried: by the router (its
    # metrics), or by asynctts where the router gave up (each failed attempt is a retry in
    # the problem's ledger, and the problem still finished)
    failed = [a.error or "" for s in solutions for a in s.ledger.attempts if a.error]
    assert sum(s.ledger.totals().retries for s in solutions) == len(failed)
    assert router_retries + len(failed) >= 1, "nothing on the dead replica was retried"
