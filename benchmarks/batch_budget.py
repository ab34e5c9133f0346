"""A batch token budget against uniform weighted best-of-N at the same spend, over HTTP on the
calibrated simulated server (fitted defaults, MATH-500).

1. `asynctts calibrate --fold 1/2` (a subprocess, seeded 2-fold split of MATH-500) writes the
   table on one half; the other half is held out.
2. For each seed, on the held-out problems (the first --problems of fold 2/2):
   a. uniform weighted best-of-N at N; its ledgers' spend (policy generated + PRM prompt
      tokens) is the budget B;
   b. `solve_many(strategy="compute_optimal", n=N, budget_tokens=B)`: probe all, close the
      settled, allocate the rest of B by predicted gain per token;
   c. compute_optimal at N without a batch budget, for reference.
3. Accuracy (graded with math-verify), averaged over seeds per problem, with 95% bootstrap
   intervals over problems; the difference budgeted - uniform is paired (the same resampled
   problems for both). Spend per difficulty bin and the branches the budget cut.

    python benchmarks/batch_budget.py [--problems 200] [--n 16] [--calibrate-n 4 8 16]
        [--probe K [K ...]] [--bins 5] [--seeds 0 1 2] [--out DIR]

The table needs budgets between the probe and n: with only N in {4, 16} each open problem
can buy nothing or a whole N=16 option (~3x uniform's spend per problem), and the budget
goes to a few problems.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from asynctts import Endpoint, Solution, Solver
from asynctts.backends.context import Sampling
from asynctts.calibration import CalibrationTable
from asynctts.equivalence import Equivalence
from asynctts.eval.data import Fold, load_dataset, select
from asynctts.search.weighted_best_of_n import WeightedBestOfN
from asynctts.testing import SimulatedServer, math500_problem

POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"
MAX_TOKENS = 512  # simulated solutions stay far below; the gate holds k x this per request
BOOTSTRAP = 2000


def spend_of(solution: Solution) -> float:
    totals = solution.ledger.totals()
    return totals.completion_tokens + totals.prm_tokens


def calibrate(server: SimulatedServer, out: Path, args: argparse.Namespace) -> CalibrationTable:
    argv = [
        str(Path(sys.executable).with_name("asynctts")),
        "calibrate",
        "--out",
        str(out),
        "--fold",
        "1/2",
        "--n",
        *map(str, args.calibrate_n),
        *(["--probe", *map(str, args.probe)] if args.probe else []),
        "--bins",
        str(args.bins),
        "--max-tokens",
        str(MAX_TOKENS),
        "--policy-url",
        server.base_url,
        "--policy-model",
        "sim-policy",
        "--prompt-format",
        POLICY_FORMAT.replace("\n", r"\n"),
        "--prm-model",
        "sim-prm",
        "--prm-prompt-format",
        PRM_FORMAT.replace("\n", r"\n"),
        "--no-progress",
        "--log-level",
        "WARNING",
    ]
    if (out / "calibration.json").exists():
        argv.append("--resume")
    subprocess.run(argv, check=True)
    return CalibrationTable.load(out / "calibration.json")


async def graded(
    solutions: AsyncIterator[Solution], references: dict[str, str], equivalence: Equivalence
) -> list[tuple[Solution, bool]]:
    out = []
    async for solution in solutions:
        right = solution.answer is not None and bool(
            await equivalence.equal(references[solution.problem_id], solution.answer)
        )
        out.append((solution, right))
    return out


def interval(per_problem: Sequence[float], rng: random.Random) -> tuple[float, float]:
    count = len(per_problem)
    means = sorted(
        sum(per_problem[rng.randrange(count)] for _ in range(count)) / count
        for _ in range(BOOTSTRAP)
    )
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="held-out problems")
    parser.add_argument("--n", type=int, default=16, help="budget per problem (generations)")
    parser.add_argument("--calibrate-n", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--probe", type=int, nargs="+", default=None, help="default: the table's own"
    )
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="calibration run directory")
    args = parser.parse_args()

    data = load_dataset().problems
    held_out = select(data, fold=Fold(2, 2), limit=args.problems)
    references = {p.id: p.answer for p in held_out}
    problems = {p.problem: math500_problem(p.problem, p.answer, p.level or 1) for p in data}
    policy_sampling = Sampling(max_tokens=MAX_TOKENS)
    out = args.out or Path(tempfile.mkdtemp(prefix="batch_budget_"))
    async with (
        SimulatedServer(prm_model="sim-prm", problems=problems, keep_records=False) as server,
        Equivalence() as equivalence,
    ):
        started = time.perf_counter()
        table = await asyncio.to_thread(calibrate, server, out / "calibration", args)
        print(
            f"calibration: {table.problems} problems (fold 1/2), {out / 'calibration'}, "
            f"{time.perf_counter() - started:.0f} s"
        )
        policy = Endpoint(base_url=server.base_url, model="sim-policy", prompt_format=POLICY_FORMAT)
        prm = Endpoint(base_url=server.base_url, model="sim-prm", prompt_format=PRM_FORMAT)
        items = [(p.id, p.problem) for p in held_out]
        lines: dict[str, list[dict[str, bool]]] = {}
        spends: dict[str, list[float]] = {}
        per_bin: dict[int, list[float]] = {}
        bin_right: dict[int, list[tuple[bool, bool]]] = {}  # (budgeted, uniform) per solve
        allotted: dict[str, list[bool]] = {}
        cut = 0
        async with Solver(policy=policy, prm=prm, sampling=policy_sampling) as solver:
            for seed in args.seeds:
                uniform = await graded(
                    solver.solve_many(
                        items,
                        strategy=WeightedBestOfN(aggregate=table.aggregate),
                        n=args.n,
                        seed=seed,
                    ),
                    references,
                    equivalence,
                )
                budget = sum(spend_of(s) for s, _ in uniform)
                budgeted = await graded(
                    solver.solve_many(
                        items,
                        strategy="compute_optimal",
                        n=args.n,
                        seed=seed,
                        calibration=table,
                        budget_tokens=budget,
                    ),
                    references,
                    equivalence,
                )
                free = await graded(
                    solver.solve_many(
                        items, strategy="compute_optimal", n=args.n, seed=seed, calibration=table
                    ),
                    references,
                    equivalence,
                )
                runs = {
                    f"weighted_best_of_n N={args.n} (uniform)": uniform,
                    f"compute_optimal, batch budget B = uniform's spend, n<={args.n}": budgeted,
                    f"compute_optimal N={args.n}, no batch budget": free,
                }
                for name, run in runs.items():
                    lines.setdefault(name, []).append({s.problem_id: r for s, r in run})
                    spends.setdefault(name, []).append(sum(spend_of(s) for s, _ in run))
                uniform_right = {s.problem_id: r for s, r in uniform}
                for solution, right in budgeted:
                    if solution.decision is not None:
                        level = int(solution.decision["bin"])
                        per_bin.setdefault(level, []).append(spend_of(solution))
                        pair = (right, uniform_right[solution.problem_id])
                        bin_right.setdefault(level, []).append(pair)
                        option = solution.decision.get("allocated", solution.decision["choice"])
                        n_run = solution.decision.get("allocated_n", "-")
                        allotted.setdefault(f"{option} @{n_run}", []).append(right)
                    cut += sum("batch budget exhausted" in b.reason for b in solution.lost)
                print(
                    f"seed {seed}: B={budget:.0f}, budgeted spent "
                    f"{sum(spend_of(s) for s, _ in budgeted):.0f}, "
                    f"{time.perf_counter() - started:.0f} s"
                )
    ids = list(references)
    rng = random.Random(0)
    print(f"\n{len(ids)} held-out problems x {len(args.seeds)} seeds; accuracy % [95% CI]")
    print(f"  {'':<60}  {'acc %':>6}  {'95% CI':>13}  {'tokens/problem':>14}")
    per_problem = {
        name: [sum(run[i] for run in runs) / len(runs) for i in ids] for name, runs in lines.items()
    }
    for name, values in per_problem.items():
        low, high = interval(values, random.Random(0))
        mean_spend = sum(spends[name]) / len(spends[name]) / len(ids)
        print(
            f"  {name:<60}  {100 * sum(values) / len(ids):>6.1f}  "
            f"[{100 * low:>4.1f}, {100 * high:>4.1f}]  {mean_spend:>14.0f}"
        )
    names = list(per_problem)
    difference = [b - u for b, u in zip(per_problem[names[1]], per_problem[names[0]], strict=True)]
    low, high = interval(difference, rng)
    print(
        f"\nbatch budget - uniform: {100 * sum(difference) / len(ids):+.1f} points "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] (paired bootstrap)"
    )
    print("batch budget's spend per bin (bin 1 easiest), tokens per problem:")
    for level in sorted(per_bin):
        spent = per_bin[level]
        pairs = bin_right[level]
        print(
            f"  bin {level}: {len(spent) / len(args.seeds):.0f} problems, "
            f"{sum(spent) / len(spent):.0f}; accuracy budgeted "
            f"{100 * sum(b for b, _ in pairs) / len(pairs):.1f}, uniform "
            f"{100 * sum(u for _, u in pairs) / len(pairs):.1f}"
        )
    print("allotments (option @ its budget): solves per run, accuracy %:")
    for label, rights in sorted(allotted.items()):
        print(
            f"  {label:<32} {len(rights) / len(args.seeds):>6.1f}  "
            f"{100 * sum(rights) / len(rights):>5.1f}"
        )
    print(f"branches the budget cut: {cut / len(args.seeds):.1f} per run")


if __name__ == "__main__":
    asyncio.run(main())
