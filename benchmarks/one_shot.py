"""What a one-shot `solve()` costs over `solver.solve()` on an open `Solver`.

A `SimulatedServer` (zero latency) runs in its own process on 127.0.0.1. Majority voting, n=8,
on two problems: one whose samples reach distinct answers (math-verify groups them in a worker
process) and one whose samples all agree (grouped by string, no worker). After one warm-up call
of each kind (the first starts the process's shared worker), rounds alternate a one-shot
`await solve(...)` and an `await solver.solve(...)` with the same seed, so both do the same
work; the report gives the median wall time of each, the difference and the ratio.

For scale, "own worker" times a one-shot solve that brings its own `Equivalence()` (so starts
and stops a worker process every call), which is what every `solve()` paid before the shared
pool.

    python benchmarks/one_shot.py [--rounds 30] [--own-worker-rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable
from importlib.metadata import version
from typing import Any

from asynctts import Endpoint, Solver, solve
from asynctts.equivalence import Equivalence
from asynctts.testing import SimProblem

from harness import SimServerProcess, add_output_argument, quiet_logs, write_report

PROMPT_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PROBLEMS = {
    "distinct answers": ("What is $7+5$?", SimProblem(answer="12", slip_rate=0.5)),
    "identical answers": ("What is $2+2$?", SimProblem(answer="4", slip_rate=0.0)),
}
N = 8


async def timed(call: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await call
    return time.perf_counter() - start


async def one_shot(policy: Endpoint, problem: str, seed: int) -> set[int | None]:
    """A one-shot solve; the group ids its candidates got."""
    solution = await solve(problem, strategy="majority", n=N, policy=policy, seed=seed)
    return {c.group for c in solution.candidates}


async def own_worker(policy: Endpoint, problem: str, seed: int) -> None:
    """A one-shot solve with an `Equivalence` (so a worker process) of its own."""
    async with (
        Equivalence() as equivalence,
        Solver(policy=policy, equivalence=equivalence) as solver,
    ):
        await solver.solve(problem, strategy="majority", n=N, seed=seed)


async def measure_case(
    policy: Endpoint, solver: Solver, problem: str, rounds: int, own_worker_rounds: int
) -> dict[str, Any]:
    started = time.perf_counter()
    groups = await one_shot(policy, problem, -1)  # warm-up: the first starts the shared worker
    first_one_shot_s = time.perf_counter() - started
    await solver.solve(problem, strategy="majority", n=N, seed=-1)
    one_shot_s: list[float] = []
    open_s: list[float] = []
    for seed in range(rounds):
        one_shot_s.append(await timed(one_shot(policy, problem, seed)))
        open_s.append(await timed(solver.solve(problem, strategy="majority", n=N, seed=seed)))
    own_s = [await timed(own_worker(policy, problem, s)) for s in range(own_worker_rounds)]
    one_shot_median, open_median = statistics.median(one_shot_s), statistics.median(open_s)
    paired = statistics.median(a - b for a, b in zip(one_shot_s, open_s, strict=True))
    return {
        "groups_in_warm_up": len(groups),
        "first_one_shot_ms": round(first_one_shot_s * 1000, 1),
        "one_shot_median_ms": round(one_shot_median * 1000, 2),
        "open_solver_median_ms": round(open_median * 1000, 2),
        "difference_ms": round((one_shot_median - open_median) * 1000, 2),
        "paired_difference_ms": round(paired * 1000, 2),
        "ratio": round(one_shot_median / open_median, 2),
        "own_worker_median_ms": round(statistics.median(own_s) * 1000, 1) if own_s else None,
    }


async def measure(base_url: str, rounds: int, own_worker_rounds: int) -> list[dict[str, Any]]:
    policy = Endpoint(base_url=base_url, model="sim-policy", prompt_format=PROMPT_FORMAT)
    async with Solver(policy=policy) as solver:
        return [
            {"case": case, **await measure_case(policy, solver, problem, rounds, own_worker_rounds)}
            for case, (problem, _) in PROBLEMS.items()
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed pairs per case")
    parser.add_argument(
        "--own-worker-rounds", type=int, default=5, help="timed one-shot solves with own worker"
    )
    add_output_argument(parser, "one_shot")
    args = parser.parse_args()
    quiet_logs()
    problems = {text: sim for text, sim in PROBLEMS.values()}
    with SimServerProcess(model="sim-policy", problems=problems) as server:
        rows = asyncio.run(measure(server.base_url, args.rounds, args.own_worker_rounds))
    print(
        f"{'case':<18} {'one-shot ms':>11} {'open ms':>8} {'diff ms':>8} {'paired':>7}"
        f" {'ratio':>6} {'first ms':>9} {'own worker ms':>13}"
    )
    for row in rows:
        print(
            f"{row['case']:<18} {row['one_shot_median_ms']:>11} {row['open_solver_median_ms']:>8}"
            f" {row['difference_ms']:>8} {row['paired_difference_ms']:>7} {row['ratio']:>6}"
            f" {row['first_one_shot_ms']:>9} {row['own_worker_median_ms']!s:>13}"
        )
    write_report(
        args.output,
        "one_shot",
        {"rounds": args.rounds, "own_worker_rounds": args.own_worker_rounds, "n": N},
        {"asynctts": version("asynctts"), "aiohttp": version("aiohttp")},
        rows,
    )


if __name__ == "__main__":
    main()
