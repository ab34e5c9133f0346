"""Revision, PRM-guided and prompted, on the calibrated simulator beside best-of-N, weighted
best-of-N, DVTS and particle filtering: its curves at N = 4, 16, 64 and what they do not win.

The same problems, seeds and simulator as benchmarks/particle_filter_sim.py (its helpers,
imported): in process, all 500 MATH-500 problems, for each seed:
- the best-of-N family from one run of max(N) samples per problem, as there;
- each revise variant at every N it can use (n >= 1 + continuations * rounds): "revise"
  (the defaults: threshold 0.5, first step below it, 2 continuations, 2 rounds),
  "revise[rounds=1]" (3 generations a solution, so N = 4 runs) and "revise[largest_drop]";
  prompted self-refinement with the same settings, "revise[prompted]" and
  "revise[prompted,rounds=1]": on the simulator a prompted revision is a fresh sample of the
  problem (the model does not fix itself), so these lines measure what the PRM's choice among
  more samples of the flagged solutions buys; "revise[prompted,gain=G]" runs a second
  simulator whose revisions of a wrong solution are drawn right with chance G
  (`SimModel.refine_gain`, --gain), to show how much self-correction the method needs.
DVTS and the particle filter are read from particle_filter_sim.py's results file (the runs
are deterministic, so they pair problem by problem; the best-of-N lines of both files are
checked to agree). Accuracy is each problem's share of seeds right; 95% intervals come from a
bootstrap over problems, differences are paired per problem. Revise draws at most N
generations and leaves unspent what its solutions did not need: the table gives the
generations it drew.

    python benchmarks/revise_sim.py [--n 4 16 64] [--seeds 0 1 2] [--problems 500] [--gain 0.25]
        [--show]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from particle_filter_sim import Meter, finished, per_problem, pick

from asynctts.answers import normalize
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.data import load_dataset
from asynctts.protocols import Path
from asynctts.search.best_of_n import BestOfN
from asynctts.search.revise import Revise
from asynctts.testing.sim_model import SimModel, math500_problem

RESULTS = pathlib.Path(__file__).parent / "results"
VARIANTS: dict[str, Callable[[], Revise]] = {
    "revise": Revise,
    "revise[rounds=1]": lambda: Revise(rounds=1),
    "revise[largest_drop]": lambda: Revise(cut="largest_drop"),
    "revise[prompted]": lambda: Revise(revision="prompted"),
    "revise[prompted,rounds=1]": lambda: Revise(revision="prompted", rounds=1),
}
# run on the simulator with `refine_gain` (label suffix ",gain=G]")
GAIN_VARIANT = "revise[prompted]"
# lines of particle_filter_sim's results each revise line is set against
AGAINST = ("weighted_best_of_n", "dvts", "particle_filter")


class Counted(Meter):
    """A `Meter` that also counts the generations asked for."""

    def __init__(self, sim: SimModel, problem: str, seed: int) -> None:
        super().__init__(sim, problem, seed)
        self.generations = 0

    async def generate(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        self.generations += k
        return await super().generate(path, k, to_end=to_end, greedy=greedy)


Cell = tuple[float, float, float, float]  # right, tokens, requests, generations
Row = dict[str, Cell]


async def revised(sim: SimModel, strategy: Revise, text: str, gold: str, seed: int, n: int) -> Cell:
    meter = Counted(sim, text, seed)
    paths = finished(await strategy.run(Path(), n, meter.generate, meter.score))
    right = float(pick(paths, "weighted") == gold)
    return right, meter.tokens, meter.requests, meter.generations


async def one_problem(
    sim: SimModel,
    gained: SimModel | None,
    text: str,
    gold: str,
    seed: int,
    budgets: Sequence[int],
) -> Row:
    row: Row = {}
    family = Counted(sim, text, seed)
    samples = finished(await BestOfN().run(Path(), max(budgets), family.generate, family.score))
    per_sample = family.tokens / max(budgets)
    for n in budgets:
        for label, rule in (("best_of_n", "best"), ("weighted_best_of_n", "weighted")):
            row[f"{label}@{n}"] = (float(pick(samples[:n], rule) == gold), per_sample * n, n, n)
    runs = [(label, make(), sim) for label, make in VARIANTS.items()]
    if gained is not None:
        label = f"{GAIN_VARIANT[:-1]},gain={gained.refine_gain}]"
        runs.append((label, VARIANTS[GAIN_VARIANT](), gained))
    for label, strategy, model in runs:
        for n in budgets:
            if n >= strategy.cost:
                row[f"{label}@{n}"] = await revised(model, strategy, text, gold, seed, n)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument(
        "--gain",
        type=float,
        default=0.25,
        help="refine_gain of the simulator the gain line runs on (0: no gain line)",
    )
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS / "revise_sim.json")
    parser.add_argument(
        "--against",
        type=pathlib.Path,
        default=RESULTS / "particle_filter_sim.json",
        help="particle_filter_sim.py's results: the DVTS and particle filter lines",
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
    data = random.Random(0).sample(load_dataset().problems, args.problems)
    problems = {p.problem: math500_problem(p.problem, p.answer, p.level) for p in data}
    sim = SimModel(problems)
    gained = SimModel(problems, refine_gain=args.gain) if args.gain else None
    started = time.perf_counter()
    lines: dict[str, list[list[Cell]]] = {}  # line@n -> seed -> per-problem cells
    for seed in args.seeds:
        rows = [
            await one_problem(sim, gained, p.problem, normalize(p.answer), seed, budgets)
            for p in data
        ]
        for key in rows[0]:
            lines.setdefault(key, []).append([row[key] for row in rows])
    results = {
        "problems": len(data),
        "seeds": args.seeds,
        "budgets": budgets,
        "gain": args.gain,
        "elapsed_s": round(time.perf_counter() - started),
        "lines": lines,
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
    lines = dict(results["lines"])
    comparable = (
        against is not None
        and against["problems"] == results["problems"]
        and against["seeds"] == results["seeds"]
    )
    if comparable and against is not None:
        for key, columns in against["lines"].items():
            label = key.rsplit("@", 1)[0]
            if label in ("best_of_n", "weighted_best_of_n") and key in lines:
                mine = [[cell[0] for cell in seed] for seed in lines[key]]
                theirs = [[cell[0] for cell in seed] for seed in columns]
                if mine != theirs:
                    raise SystemExit(f"{key} differs from {key} of the --against file")
            elif label in AGAINST:
                lines[key] = columns  # (right, tokens, requests): no generations count
    print(
        f"MATH-500 on the simulator (fitted defaults), {results['problems']} problems,"
        f" seeds {results['seeds']}; {results['elapsed_s']} s\n"
    )
    print("| N | strategy | accuracy % | 95% CI | tokens / problem | generations | requests |")
    print("|---:|---|---:|---|---:|---:|---:|")
    for n in results["budgets"]:
        for key in [k for k in lines if k.endswith(f"@{n}")]:
            label = key.rsplit("@", 1)[0]
            right = per_problem(lines[key], 0)
            ci = mean_interval(right)
            counted = len(lines[key][0][0]) > 3
            generations = f"{sum(per_problem(lines[key], 3)) / len(right):.1f}" if counted else ""
            print(
                f"| {n} | {label} | {100 * sum(right) / len(right):.1f} | "
                f"{100 * ci.low:.1f}-{100 * ci.high:.1f} | "
                f"{sum(per_problem(lines[key], 1)) / len(right):,.0f} | {generations} | "
                f"{sum(per_problem(lines[key], 2)) / len(right):.1f} |"
            )
    if not comparable:
        print("\n(no comparable --against file: DVTS and particle filter left out)")
        return
    print("\nEach revise line against the others at the same N: points (95% CI), paired;")
    print("a prompted line also against the guided line of its settings")
    print("| N | line | " + " | ".join(f"vs {label}" for label in AGAINST) + " | vs guided |")
    print("|---:|---|" + "---|" * (len(AGAINST) + 1))
    for key in lines:
        label, n = key.rsplit("@", 1)
        if not label.startswith("revise"):
            continue
        cells = [paired(lines[key], lines[f"{other}@{n}"]) for other in AGAINST]
        guided = f"{guided_of(label)}@{n}"
        cells.append(paired(lines[key], lines[guided]) if "prompted" in label else "")
        print(f"| {n} | {label} | " + " | ".join(cells) + " |")


def guided_of(label: str) -> str:
    """The PRM-guided line with a prompted line's settings: "revise[prompted,rounds=1]" ->
    "revise[rounds=1]", "revise[prompted,gain=0.25]" -> "revise"."""
    settings = label.removeprefix("revise[").removesuffix("]").split(",")
    kept = [s for s in settings if s != "prompted" and not s.startswith("gain=")]
    return f"revise[{','.join(kept)}]" if kept else "revise"


if __name__ == "__main__":
    asyncio.run(main())
