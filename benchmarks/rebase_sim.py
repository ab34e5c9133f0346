"""REBASE on the calibrated simulator beside pass@1, best-of-N, weighted best-of-N, DVTS and
particle filtering: its curve at N = 4, 16, 64 and what it does not win.

The same problems, seeds and simulator as benchmarks/particle_filter_sim.py (its helpers,
imported): in process, all 500 MATH-500 problems, each seed, REBASE at every N with its
default balance temperature and each of --weight-temperatures. The other lines are read from
particle_filter_sim.py's results file: the runs are deterministic, so they pair problem by
problem (the file must hold the same problems and seeds). Accuracy is each problem's share of
seeds right; 95% intervals come from a bootstrap over problems, differences are paired per
problem. Tokens are generated words plus PRM-read words, as the simulator counts.

    python benchmarks/rebase_sim.py [--n 4 16 64] [--seeds 0 1 2] [--problems 500]
        [--weight-temperatures 0.05 1.0] [--show]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import time
from collections.abc import Sequence
from typing import Any

from particle_filter_sim import Meter, finished, per_problem, pick

from asynctts.answers import normalize
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.data import load_dataset
from asynctts.protocols import Path
from asynctts.search.rebase import Rebase
from asynctts.testing.sim_model import SimModel, math500_problem

RESULTS = pathlib.Path(__file__).parent / "results"
# lines of particle_filter_sim's results shown beside REBASE, and those it is paired against
BESIDE = ("pass@1", "best_of_n", "weighted_best_of_n", "dvts", "particle_filter")
AGAINST = ("weighted_best_of_n", "dvts", "particle_filter")

Cell = tuple[float, float, float]  # right, tokens, requests
Row = dict[str, Cell]


async def one_problem(
    sim: SimModel, text: str, gold: str, seed: int, budgets: Sequence[int], lines: dict[str, Rebase]
) -> Row:
    row: Row = {}
    for label, strategy in lines.items():
        for n in budgets:
            meter = Meter(sim, text, seed)
            paths = finished(await strategy.run(Path(), n, meter.generate, meter.score))
            row[f"{label}@{n}"] = (
                float(pick(paths, "weighted") == gold),
                meter.tokens,
                meter.requests,
            )
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument(
        "--weight-temperatures",
        type=float,
        nargs="*",
        default=[],
        help="also these balance temperatures",
    )
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS / "rebase_sim.json")
    parser.add_argument(
        "--against",
        type=pathlib.Path,
        default=RESULTS / "particle_filter_sim.json",
        help="particle_filter_sim.py's results: the lines beside REBASE",
    )
    parser.add_argument(
        "--show", action="store_true", help="print the tables of --results; run nothing"
    )
    args = parser.parse_args()
    against = json.loads(args.against.read_text()) if args.against.exists() else None
    if args.show:
        show(json.loads(args.results.read_text()), against)
        return
    budgets = sorted(args.n)
    lines = {"rebase": Rebase()} | {
        f"rebase[weight_temperature={t}]": Rebase(weight_temperature=t)
        for t in args.weight_temperatures
    }
    data = random.Random(0).sample(load_dataset().problems, args.problems)
    sim = SimModel({p.problem: math500_problem(p.problem, p.answer, p.level) for p in data})
    started = time.perf_counter()
    columns: dict[str, list[list[Cell]]] = {}  # line@n -> seed -> per-problem cells
    for seed in args.seeds:
        rows = [
            await one_problem(sim, p.problem, normalize(p.answer), seed, budgets, lines)
            for p in data
        ]
        for key in rows[0]:
            columns.setdefault(key, []).append([row[key] for row in rows])
    results = {
        "problems": len(data),
        "seeds": args.seeds,
        "budgets": budgets,
        "elapsed_s": round(time.perf_counter() - started),
        "lines": columns,
    }
    args.results.write_text(json.dumps(results) + "\n")
    show(results, against)


def paired(
    ours: Sequence[Sequence[Sequence[float]]], theirs: Sequence[Sequence[Sequence[float]]]
) -> str:
    diff = [a - b for a, b in zip(per_problem(ours, 0), per_problem(theirs, 0), strict=True)]
    ci = mean_interval(diff)
    return f"{100 * sum(diff) / len(diff):+.1f} ({100 * ci.low:+.1f} to {100 * ci.high:+.1f})"


def show(results: dict[str, Any], against: dict[str, Any] | None) -> None:
    comparable = (
        against is not None
        and against["problems"] == results["problems"]
        and against["seeds"] == results["seeds"]
    )
    lines = {
        key: cells
        for key, cells in (against["lines"].items() if comparable and against else ())
        if key.rsplit("@", 1)[0] in BESIDE
    } | results["lines"]
    print(
        f"MATH-500 on the simulator (fitted defaults), {results['problems']} problems,"
        f" seeds {results['seeds']}; REBASE {results['elapsed_s']} s\n"
    )
    print("| N | strategy | accuracy % | 95% CI | tokens / problem | requests |")
    print("|---:|---|---:|---|---:|---:|")
    for n in [1, *results["budgets"]]:
        for key in [k for k in lines if k.endswith(f"@{n}")]:
            right = per_problem(lines[key], 0)
            ci = mean_interval(right)
            print(
                f"| {n} | {key.rsplit('@', 1)[0]} | {100 * sum(right) / len(right):.1f} | "
                f"{100 * ci.low:.1f}-{100 * ci.high:.1f} | "
                f"{sum(per_problem(lines[key], 1)) / len(right):,.0f} | "
                f"{sum(per_problem(lines[key], 2)) / len(right):.1f} |"
            )
    if not comparable:
        print("\n(no comparable --against file: only the REBASE lines)")
        return
    print("\nEach REBASE line against the others at the same N: points (95% CI), paired")
    print("| N | line | " + " | ".join(f"vs {label}" for label in AGAINST) + " |")
    print("|---:|---|" + "---|" * len(AGAINST))
    for key in results["lines"]:
        label, n = key.rsplit("@", 1)
        cells = [paired(lines[key], lines[f"{other}@{n}"]) for other in AGAINST]
        print(f"| {n} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
