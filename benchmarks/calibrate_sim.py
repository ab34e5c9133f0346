"""Calibrate the simulated model against published MATH-500 numbers (Llama-3.2-1B-Instruct
judged by Qwen2.5-Math-PRM-7B; asynctts/testing/README.md names them).

Every MATH-500 problem becomes `math500_problem(text, answer, level)`; the strategies' own
`run()` goes over two in-process adapters of the protocols on one `SimModel` (no HTTP: the
same text the simulated server would send, without the wire). The best-of-N family shares one
run of max(N) samples per problem (its first n samples are exactly a run of n, as in the eval
harness); beam search and DVTS (width 4) and particle filtering (its defaults) run once per
N. Answers are grouped and graded by
their normalised string: a simulated path boxes the gold verbatim or one of its problem's
wrong answers, which never equal the gold.

"Greedy" is one sample with seed 0, what the simulated server returns at temperature 0;
"pass" is pass@N (some sample right).

    python benchmarks/calibrate_sim.py [--n 1 4 16 64] [--tree-n 4 16 64] [--tree-problems 500]
        [--tree beam_search dvts particle_filter]
        [--prm-discrimination D] [--prm-fooled-rate R] [--prm-persistence P]
        [--step-correlation S] [--crux C] [--prm-skill-spread S]

Prints a markdown table beside the published numbers, then accuracy by MATH level
(asynctts/testing/README.md holds the current fit).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence

from asynctts.answers import best_of, majority_vote, normalize, weighted_vote
from asynctts.errors import BranchLost
from asynctts.eval.data import load_dataset
from asynctts.protocols import STEP_DELIMITER, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.dvts import DVTS
from asynctts.search.particle_filter import ParticleFilter
from asynctts.search.strategy import Strategy
from asynctts.solution import answer_of
from asynctts.testing.cli import add_sim_arguments, sim_settings
from asynctts.testing.sim_model import (
    CRUX,
    PRM_SKILL_SPREAD,
    SimModel,
    SimProblem,
    math500_problem,
)
from asynctts.testing.sim_protocols import SimPolicy, SimPRM

# Published accuracies (%) on MATH-500, Llama-3.2-1B-Instruct with Qwen2.5-Math-PRM-7B.
PUBLISHED: dict[tuple[str, int], float] = {
    ("greedy", 1): 26.0,
    ("majority", 64): 39.0,
    ("best_of_n", 64): 46.6,
    ("weighted_best_of_n", 64): 47.8,
    ("dvts", 64): 52.8,
    ("particle_filter", 64): 59.6,
}


def value(path: Path) -> float:
    return path.scores[-1]  # "last", as search-and-learn aggregates


def finished(results: Sequence[Path | BranchLost]) -> list[Path]:
    return [r for r in results if isinstance(r, Path) and r.done]


def answers_of(paths: Sequence[Path]) -> list[int | None]:
    """Answer groups by normalised answer string, numbered in first-seen order."""
    ids: dict[str, int] = {}
    groups: list[int | None] = []
    for path in paths:
        answer = answer_of(path)
        groups.append(None if answer is None else ids.setdefault(answer, len(ids)))
    return groups


def pick(paths: Sequence[Path], selection: str) -> str | None:
    groups = answers_of(paths)
    if selection == "majority":
        index = majority_vote(groups)
    elif selection == "best":
        index = best_of([value(p) for p in paths])
    else:
        index = weighted_vote(groups, [value(p) for p in paths])
    return None if index is None else answer_of(paths[index])


async def family(sim: SimModel, problem: str, gold: str, sizes: Sequence[int]) -> dict[str, bool]:
    root = Path()
    results = await BestOfN().run(
        root, max(sizes), SimPolicy(sim, problem, 0), SimPRM(sim, problem)
    )
    paths = finished(results)
    greedy = sim.sample(sim.read(problem + STEP_DELIMITER), 0).text
    right = {"greedy@1": answer_of(Path(steps=(greedy,))) == gold}
    for n in sizes:
        first = paths[:n]
        right[f"pass@{n}"] = any(answer_of(path) == gold for path in first)
        for name, selection in (
            ("majority", "majority"),
            ("best_of_n", "best"),
            ("weighted_best_of_n", "weighted"),
        ):
            right[f"{name}@{n}"] = pick(first, selection) == gold
    return right


async def tree(sim: SimModel, problem: str, gold: str, strategy: Strategy, n: int) -> bool:
    results = await strategy.run(Path(), n, SimPolicy(sim, problem, 0), SimPRM(sim, problem))
    return pick(finished(results), "weighted") == gold


def percent(hits: int, total: int) -> str:
    return f"{100.0 * hits / total:.1f}" if total else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--tree-n", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument(
        "--tree",
        nargs="*",
        choices=("beam_search", "dvts", "particle_filter"),
        default=["beam_search", "dvts", "particle_filter"],
    )
    parser.add_argument(
        "--tree-problems", type=int, default=500, help="seeded subsample for the tree searches"
    )
    add_sim_arguments(parser)
    parser.add_argument("--crux", type=float, default=CRUX)
    parser.add_argument("--prm-skill-spread", type=float, default=PRM_SKILL_SPREAD)
    args = parser.parse_args()

    data = load_dataset().problems
    problems: dict[str, SimProblem] = {
        p.problem: math500_problem(
            p.problem, p.answer, p.level, crux=args.crux, prm_skill_spread=args.prm_skill_spread
        )
        for p in data
    }
    sim = SimModel(
        problems,
        **sim_settings(args),
    )
    gold = {p.problem: normalize(p.answer) for p in data}
    started = time.perf_counter()

    hits: dict[str, list[bool]] = {}
    by_level: dict[tuple[str, int], list[bool]] = {}
    for p in data:
        for key, ok in (await family(sim, p.problem, gold[p.problem], args.n)).items():
            hits.setdefault(key, []).append(ok)
            by_level.setdefault((key, p.level), []).append(ok)
    family_s = time.perf_counter() - started

    subset = random.Random(0).sample(data, min(args.tree_problems, len(data)))
    trees: dict[str, Strategy] = {
        "beam_search": BeamSearch(width=4),
        "dvts": DVTS(width=4),
        "particle_filter": ParticleFilter(),
    }
    for name in args.tree:
        strategy = trees[name]
        for n in args.tree_n:
            for p in subset:
                ok = await tree(sim, p.problem, gold[p.problem], strategy, n)
                hits.setdefault(f"{name}@{n}", []).append(ok)
                by_level.setdefault((f"{name}@{n}", p.level), []).append(ok)
    elapsed = time.perf_counter() - started

    print(
        f"MATH-500, {len(data)} problems ({len(subset)} for the tree searches); "
        f"prm_discrimination={args.prm_discrimination}, prm_fooled_rate={args.prm_fooled_rate}, "
        f"prm_persistence={args.prm_persistence}, step_correlation={args.step_correlation}, "
        f"crux={args.crux}, prm_skill_spread={args.prm_skill_spread}; "
        f"{family_s:.0f} s best-of-N family, {elapsed:.0f} s in all\n"
    )
    print("| strategy | N | simulated % | published % |")
    print("|---|---:|---:|---:|")
    for key, oks in hits.items():
        name, n = key.split("@")
        published = PUBLISHED.get((name, int(n)))
        note = "" if published is None else f"{published:.1f}"
        print(f"| {name} | {n} | {percent(sum(oks), len(oks))} | {note} |")
    print("\nBy level (%), levels 1-5:\n")
    print("| strategy | N | L1 | L2 | L3 | L4 | L5 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key in hits:
        name, n = key.split("@")
        cells = [
            percent(sum(by_level.get((key, lv), [])), len(by_level.get((key, lv), [])))
            for lv in range(1, 6)
        ]
        print(f"| {name} | {n} | {' | '.join(cells)} |")


if __name__ == "__main__":
    asyncio.run(main())
