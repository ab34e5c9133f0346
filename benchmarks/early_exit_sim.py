"""Early exit for weighted best-of-N on the calibrated simulator: how many tokens the stopping
rule saves, and at what accuracy, for each rule, confidence and probe size.

In process, all 500 MATH-500 problems, seeds 0-2: each problem's 64 samples are drawn once
(`BestOfN`), and the early exit is replayed on them as `compute_optimal` runs it for a choice
of more samples: check after the probe, then after doubling (k, 2k, 4k, ... up to N), stop at
the first check where the answers settled (asynctts/search/difficulty.py), answer with the
weighted vote of the samples drawn so far. Tokens: every sample's words, generated and read
once by the PRM (the simulator's units). Baseline: weighted best-of-N at N on the same samples.

    python benchmarks/early_exit_sim.py [--n 16 64] [--probe 4 8] [--seeds 0 1 2]
        [--confidence 0.8 0.9 0.95 0.99]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from asynctts.answers import normalize, weighted_vote
from asynctts.eval.data import load_dataset
from asynctts.protocols import Path
from asynctts.search.best_of_n import BestOfN
from asynctts.search.difficulty import SETTLE_RULES, SettleRule, read_probe
from asynctts.solution import answer_of
from asynctts.testing.sim_model import SimModel, count_tokens, math500_problem
from asynctts.testing.sim_protocols import SimPolicy, SimPRM


def weighted_answer(paths: Sequence[Path]) -> str | None:
    answers = [answer_of(p) for p in paths]
    ids: dict[str | None, int] = {}
    groups: list[int | None] = [ids.setdefault(a, len(ids)) for a in answers]
    index = weighted_vote(groups, [p.scores[-1] for p in paths])
    return None if index is None else answers[index]


def stop_at(paths: Sequence[Path], probe: int, n: int, rule: SettleRule, confidence: float) -> int:
    """How many of `paths` the early exit draws before it stops (at most n)."""
    drawn = probe
    while drawn < n and not read_probe(paths[:drawn], "last").settled(rule, confidence):
        drawn = min(2 * drawn, n)
    return drawn


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--probe", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.99])
    args = parser.parse_args()
    data = load_dataset().problems
    sim = SimModel({p.problem: math500_problem(p.problem, p.answer, p.level) for p in data})
    started = time.perf_counter()
    runs: list[tuple[str, list[Path], list[int]]] = []
    for seed in args.seeds:
        for p in data:
            results = await BestOfN().run(
                Path(), max(args.n), SimPolicy(sim, p.problem, seed), SimPRM(sim, p.problem)
            )
            paths = [r for r in results if isinstance(r, Path)]
            runs.append((normalize(p.answer), paths, [2 * count_tokens(q.text) for q in paths]))
    print(
        f"MATH-500 on the simulator, {len(data)} problems x seeds {args.seeds}; "
        f"{time.perf_counter() - started:.0f} s to sample\n"
    )
    print("| N | rule | confidence | probe | accuracy % | vs weighted BoN | tokens saved |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.n:
        base = sum(weighted_answer(ps[:n]) == gold for gold, ps, _ in runs) / len(runs)
        base_tokens = sum(sum(t[:n]) for _, _, t in runs)
        print(f"| {n} | (weighted best-of-N) | | | {100 * base:.1f} | | |")
        for rule in SETTLE_RULES:
            for confidence in args.confidence:
                for probe in args.probe:
                    right = 0
                    tokens = 0
                    for gold, paths, costs in runs:
                        drawn = stop_at(paths, probe, n, rule, confidence)
                        right += weighted_answer(paths[:drawn]) == gold
                        tokens += sum(costs[:drawn])
                    accuracy = right / len(runs)
                    saved = 1 - tokens / base_tokens
                    print(
                        f"| {n} | {rule} | {confidence} | {probe} | {100 * accuracy:.1f} | "
                        f"{100 * (accuracy - base):+.1f} | {100 * saved:.0f}% |"
                    )


if __name__ == "__main__":
    asyncio.run(main())
