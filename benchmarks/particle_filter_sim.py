"""Particle filtering on the calibrated simulator beside pass@1, best-of-N, weighted best-of-N
and DVTS: does it lead DVTS at N=64, in the order of Puri et al. 2025's Table 1 (pass@1 26.8
< best-of-N 46.6 <= weighted 47.8 < DVTS 52.8 < particle filtering 59.6)?

In process (no HTTP; `SimPolicy` / `SimPRM` over one `SimModel` with the fitted defaults), all
500 MATH-500 problems, for each seed:
- the best-of-N family from one run of max(N) samples per problem (its first n samples are a
  run of n); pass@1 is the share of those samples that are right;
- DVTS (width 4) and each particle filter variant run at every N.
Particle filter variants: "particle_filter" (the paper's: multinomial resampling every step,
T_w = 1, finished particles resampled, answer by the largest weight) and the same runs read by
weighted vote ("particle_filter/weighted"); with --variants also systematic resampling,
ESS-gated resampling at 0.5, resample_inactive=False and entropic annealing below 0.5.
Accuracy is each problem's share of seeds right; 95% intervals come from a bootstrap over
problems (asynctts.eval.bootstrap.mean_interval), and the difference to DVTS is the interval of
the per-problem paired difference. Tokens are generated words plus PRM-read words, as the
simulator counts.

    python benchmarks/particle_filter_sim.py [--n 4 16 64] [--seeds 0 1 2] [--problems 500]
        [--variants] [--show]
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

from asynctts.answers import best_of, normalize, weighted_vote
from asynctts.errors import BranchLost
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.data import load_dataset
from asynctts.protocols import Path
from asynctts.search.best_of_n import BestOfN
from asynctts.search.dvts import DVTS
from asynctts.search.particle_filter import ParticleFilter
from asynctts.search.strategy import Strategy
from asynctts.solution import answer_of
from asynctts.testing.sim_model import SimModel, count_tokens, math500_problem
from asynctts.testing.sim_protocols import SimPolicy, SimPRM

PUBLISHED_64 = {
    "pass@1": 26.8,
    "best_of_n": 46.6,
    "weighted_best_of_n": 47.8,
    "dvts": 52.8,
    "particle_filter": 59.6,
}
# the searches each run at every N: label -> strategy
SEARCHES: dict[str, Callable[[], Strategy]] = {
    "dvts": DVTS,
    "particle_filter": ParticleFilter,
}
VARIANTS: dict[str, Callable[[], Strategy]] = {
    "particle_filter[systematic]": lambda: ParticleFilter(resampling="systematic"),
    "particle_filter[ess=0.5]": lambda: ParticleFilter(ess_threshold=0.5),
    "particle_filter[resample_inactive=False]": lambda: ParticleFilter(resample_inactive=False),
    "particle_filter[anneal=0.5]": lambda: ParticleFilter(anneal_below=0.5),
}


class Meter:
    """The two protocols of one problem, counting what they spend."""

    def __init__(self, sim: SimModel, problem: str, seed: int) -> None:
        self.policy = SimPolicy(sim, problem, seed)
        self.prm = SimPRM(sim, problem)
        self.tokens = 0
        self.requests = 0

    async def generate(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        children = await self.policy(path, k, to_end=to_end, greedy=greedy)
        self.tokens += sum(count_tokens("".join(c.steps[len(path.steps) :])) for c in children)
        self.requests += 1
        return children

    async def score(self, paths: Sequence[Path]) -> list[Path]:
        self.tokens += sum(count_tokens(p.text) for p in paths)
        return await self.prm(paths)


def finished(results: Sequence[Path | BranchLost]) -> list[Path]:
    return [r for r in results if isinstance(r, Path) and r.done]


def pick(paths: Sequence[Path], rule: str) -> str | None:
    """The answer of the path of largest last-step score ("best") or of the answer group of
    largest summed last-step score ("weighted"); answers grouped by normalised text."""
    answers = [answer_of(p) for p in paths]
    ids: dict[str | None, int] = {}
    groups: list[int | None] = [ids.setdefault(a, len(ids)) for a in answers]
    values = [p.scores[-1] if p.scores else 0.0 for p in paths]
    index = best_of(values) if rule == "best" else weighted_vote(groups, values)
    return None if index is None else answers[index]


Row = dict[str, tuple[float, float, float]]  # line@n -> (right, tokens, requests)


async def one_problem(
    sim: SimModel, text: str, gold: str, seed: int, budgets: Sequence[int], searches: dict[str, Any]
) -> Row:
    row: Row = {}
    family = Meter(sim, text, seed)
    samples = finished(await BestOfN().run(Path(), max(budgets), family.generate, family.score))
    per_sample = family.tokens / max(budgets)
    right = [answer_of(p) == gold for p in samples]
    row["pass@1@1"] = (sum(right) / len(right), per_sample, 1.0)
    for n in budgets:
        for label, rule in (("best_of_n", "best"), ("weighted_best_of_n", "weighted")):
            row[f"{label}@{n}"] = (float(pick(samples[:n], rule) == gold), per_sample * n, n)
        for label, make in searches.items():
            meter = Meter(sim, text, seed)
            paths = finished(await make().run(Path(), n, meter.generate, meter.score))
            spent = (meter.tokens, meter.requests)
            row[f"{label}@{n}"] = (
                float(pick(paths, "weighted" if label == "dvts" else "best") == gold),
                *spent,
            )
            if label == "particle_filter":
                row[f"{label}/weighted@{n}"] = (float(pick(paths, "weighted") == gold), *spent)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--variants", action="store_true", help="also the filter's options")
    # diagnosis only (the fitted defaults stay as they are): what each PRM trait costs
    parser.add_argument("--prm-persistence", type=float, help="override the simulator's")
    parser.add_argument("--prm-fooled-rate", type=float, help="override the simulator's")
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "particle_filter_sim.json",
        help="where the per-problem results go",
    )
    parser.add_argument(
        "--show", action="store_true", help="print the tables of --results; run nothing"
    )
    args = parser.parse_args()
    if args.show:
        show(json.loads(args.results.read_text()))
        return
    budgets = sorted(args.n)
    searches = {**SEARCHES, **(VARIANTS if args.variants else {})}
    data = random.Random(0).sample(load_dataset().problems, args.problems)
    overrides = {
        name: value
        for name, value in (
            ("prm_persistence", args.prm_persistence),
            ("prm_fooled_rate", args.prm_fooled_rate),
        )
        if value is not None
    }
    sim = SimModel(
        {p.problem: math500_problem(p.problem, p.answer, p.level) for p in data}, **overrides
    )
    started = time.perf_counter()
    # line@n -> seed -> per-problem (right, tokens, requests)
    lines: dict[str, list[list[tuple[float, float, float]]]] = {}
    for seed in args.seeds:
        rows = [
            await one_problem(sim, p.problem, normalize(p.answer), seed, budgets, searches)
            for p in data
        ]
        for key in rows[0]:
            lines.setdefault(key, []).append([row[key] for row in rows])
    results = {
        "problems": len(data),
        "seeds": args.seeds,
        "budgets": budgets,
        "simulator": overrides or "fitted defaults",
        "elapsed_s": round(time.perf_counter() - started),
        "lines": lines,
    }
    args.results.write_text(json.dumps(results) + "\n")
    show(results)


def per_problem(columns: Sequence[Sequence[Sequence[float]]], field: int) -> list[float]:
    """Each problem's `field` averaged over the seeds (columns: one per seed)."""
    return [sum(cell[field] for cell in cells) / len(cells) for cells in zip(*columns, strict=True)]


def show(results: dict[str, Any]) -> None:
    lines = results["lines"]
    print(
        f"MATH-500 on the simulator ({results.get('simulator', 'fitted defaults')}),"
        f" {results['problems']} problems, seeds {results['seeds']}; {results['elapsed_s']} s\n"
    )
    print("| N | strategy | accuracy % | 95% CI | published % | tokens / problem | requests |")
    print("|---:|---|---:|---|---:|---:|---:|")
    for key in lines:
        label, n = key.rsplit("@", 1)
        right = per_problem(lines[key], 0)
        ci = mean_interval(right)
        published = PUBLISHED_64.get(label) if n == "64" or label == "pass@1" else None
        print(
            f"| {n} | {label} | {100 * sum(right) / len(right):.1f} | "
            f"{100 * ci.low:.1f}-{100 * ci.high:.1f} | "
            f"{'' if published is None else published} | "
            f"{sum(per_problem(lines[key], 1)) / len(right):,.0f} | "
            f"{sum(per_problem(lines[key], 2)) / len(right):.1f} |"
        )
    print("\nEach particle filter line against DVTS at the same N (paired, per problem)")
    print("| N | line | difference, points | 95% CI |")
    print("|---:|---|---:|---|")
    for key in lines:
        label, n = key.rsplit("@", 1)
        if not label.startswith("particle_filter"):
            continue
        ours, theirs = per_problem(lines[key], 0), per_problem(lines[f"dvts@{n}"], 0)
        diff = [a - b for a, b in zip(ours, theirs, strict=True)]
        ci = mean_interval(diff)
        print(
            f"| {n} | {label} | {100 * sum(diff) / len(diff):+.1f} | "
            f"{100 * ci.low:+.1f} to {100 * ci.high:+.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
