"""Compute-optimal scaling on the calibrated simulator, held out: does choosing the strategy
per problem from its probe beat every fixed strategy, and what does early exit save?

In process (no HTTP; `SimPolicy` / `SimPRM` over one `SimModel` with the fitted defaults), all
500 MATH-500 problems, for each seed:
1. Records: per problem, the best-of-N family at max(N) (its first k samples are a probe of
   k; the probe option is their weighted vote), beam search and DVTS at every N with widths 4,
   8 and round(sqrt(N)), particle filtering, REBASE and PRM-guided revision at every N they
   accept, N over the fixed strategies' budgets (--fixed-n, a superset of --n); every search
   answers by the weighted vote over its finished paths, as compute_optimal answers; tokens
   are generated words plus PRM-read words, as the simulator counts.
2. Seeded 2-fold split: a table built on one half (`build_table`, quantile bins of the probe's
   mean PRM value) answers for the other half, where `ComputeOptimal` really runs (probe,
   early exit, the bin's choice with the rest of the budget). "Oracle" bins by the true pass@1
   (the share of the problem's max(N) samples that are right), Snell et al.'s upper bound.
3. Early exit alone: weighted best-of-N that stops once the answers settled (the probe, then
   doubling batches), under the count rule and the PRM-weighted rule, vs weighted best-of-N.
   compute_optimal itself stops by the table's rule (the defaults: weighted, 0.9).

Accuracy is averaged over seeds per problem; 95% intervals come from a bootstrap over
problems. Equal spend: each compute_optimal line beside every fixed strategy read at the same
mean tokens per problem (and the same mean generations), interpolated in log spend between
the fixed strategy's measured budgets (asynctts/eval/equal_spend.py), with the paired
interval of the difference.

    python benchmarks/compute_optimal_sim.py [--n 16 64] [--fixed-n 4 8 16 32 64]
        [--probe K [K ...]] [--bins 5] [--seeds 0 1 2] [--problems 500]

--probe: one size for every --n or one per --n (default: the table's, a quarter of N, 2-8).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import pathlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asynctts.answers import best_of, majority_vote, normalize, weighted_vote
from asynctts.calibration import (
    PROBE,
    STEPWISE,
    CalibrationTable,
    Option,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
)
from asynctts.cli.calibrate import probes_of_flags
from asynctts.errors import BranchLost
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.data import Problem, load_dataset
from asynctts.eval.equal_spend import Measured, compare_at_spend
from asynctts.protocols import Path
from asynctts.search.aggregate import AggregateName
from asynctts.search.best_of_n import BestOfN
from asynctts.search.compute_optimal import Chooser, ComputeOptimal, Decision
from asynctts.search.difficulty import SettleRule, read_probe
from asynctts.solution import answer_of
from asynctts.testing.sim_model import SimModel, count_tokens, math500_problem
from asynctts.testing.sim_protocols import SimPolicy, SimPRM

BOOTSTRAP = 2000


class Meter:
    """The two protocols of one problem, counting what they spend."""

    def __init__(self, sim: SimModel, problem: str, seed: int) -> None:
        self.policy = SimPolicy(sim, problem, seed)
        self.prm = SimPRM(sim, problem)
        self.tokens = 0

    async def generate(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        children = await self.policy(path, k, to_end=to_end)
        self.tokens += sum(count_tokens("".join(c.steps[len(path.steps) :])) for c in children)
        return children

    async def score(self, paths: Sequence[Path]) -> list[Path]:
        self.tokens += sum(count_tokens(p.text) for p in paths)
        return await self.prm(paths)


def finished(results: Sequence[Path | BranchLost]) -> list[Path]:
    return [r for r in results if isinstance(r, Path) and r.done]


def pick(paths: Sequence[Path], rule: str) -> str | None:
    answers = [answer_of(p) for p in paths]
    ids: dict[str | None, int] = {}
    groups: list[int | None] = [ids.setdefault(a, len(ids)) for a in answers]
    values = [p.scores[-1] if p.scores else 0.0 for p in paths]
    if rule == "majority":
        index = majority_vote(groups)
    elif rule == "best":
        index = best_of(values)
    else:
        index = weighted_vote(groups, values)
    return None if index is None else answers[index]


def search_options(n: int) -> list[Option]:
    # the calibration grid's widths (4 and round(sqrt(N))) and 8, so the fixed strategies'
    # curves have a wide tree at every N that allows it; the searches without a width
    widths = sorted({4, 8, round(math.sqrt(n))})
    trees = [Option(s, w) for s in ("beam_search", "dvts") for w in widths if n % w == 0]
    return [*trees, *(Option(name) for name in STEPWISE if accepts(Option(name), n))]


def accepts(option: Option, n: int) -> bool:
    strategy = option.build("last")
    assert strategy is not None
    try:
        strategy.check_budget(n)
    except ValueError:
        return False
    return True


@dataclass
class Truth:
    pass_at_1: float


async def record(
    sim: SimModel, problem: Problem, seed: int, budgets: Sequence[int], probes: Sequence[int]
) -> tuple[ProblemRecord, Truth]:
    gold = normalize(problem.answer)
    family = Meter(sim, problem.problem, seed)
    largest = max(budgets)
    samples = finished(await BestOfN().run(Path(), largest, family.generate, family.score))
    per_sample = family.tokens / largest
    outcomes: dict[tuple[str, int], Outcome] = {}
    for n in budgets:
        for label, rule in (
            ("majority", "majority"),
            ("best_of_n", "best"),
            ("weighted_best_of_n", "weighted"),
        ):
            spent = per_sample * n
            outcomes[(label, n)] = Outcome(pick(samples[:n], rule) == gold, spent, 0.0)
        for option in search_options(n):
            meter = Meter(sim, problem.problem, seed)
            strategy = option.build("last")
            assert strategy is not None
            results = await strategy.run(Path(), n, meter.generate, meter.score)
            outcomes[(option.label, n)] = Outcome(
                pick(finished(results), "weighted") == gold, meter.tokens, 0.0
            )
    right = sum(answer_of(p) == gold for p in samples) / len(samples)
    readings = {}
    for k in probes:
        reading = read_probe(samples[:k], "last")
        stop = Outcome(pick(samples[:k], "weighted") == gold, per_sample * k, 0.0)
        readings[k] = ProbeRecord(reading.predicted, reading.agreement, stop)
    return ProblemRecord(problem.id, readings, right, outcomes), Truth(right)


@dataclass(frozen=True)
class FixedChoice:
    """A chooser that always answers `option` (early exit alone) or looks a problem's bin up
    by a known value instead of its probe (the oracle)."""

    table: CalibrationTable
    settle: SettleRule
    option: Option | None = None
    known: float | None = None

    @property
    def aggregate(self) -> AggregateName:
        return "last"

    def probe_for(self, n: int) -> int:
        return self.table.probe_for(n)

    @property
    def settle_rule(self) -> SettleRule:
        return self.settle

    @property
    def confidence(self) -> float:
        return self.table.confidence

    def budget_for(self, n: int) -> int:
        return self.table.budget_for(n)

    def choose(self, predicted: float, budget: int) -> Decision:
        if self.option is not None:
            return Decision(0, self.option.label, self.option.build("last"))
        return self.table.choose(predicted if self.known is None else self.known, budget)


async def held_out(
    sim: SimModel, problem: Problem, seed: int, n: int, chooser: Chooser, early: bool
) -> tuple[bool, float, dict[str, Any]]:
    meter = Meter(sim, problem.problem, seed)
    strategy = ComputeOptimal(table=chooser, early_exit=early)
    decision, results = await strategy.run_deciding(Path(), n, meter.generate, meter.score)
    return (
        pick(finished(results), "weighted") == normalize(problem.answer),
        meter.tokens,
        dict(decision),
    )


def per_problem(columns: Sequence[Sequence[float]]) -> list[float]:
    """Each problem's value averaged over the seeds (columns: one per seed)."""
    return [sum(col) / len(col) for col in zip(*columns, strict=True)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64], help="compute_optimal's")
    parser.add_argument("--fixed-n", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--probe", type=int, nargs="+", default=None)
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation in a bin")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "compute_optimal_sim.json",
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
    fixed_budgets = sorted(set(args.fixed_n) | set(budgets))
    probes = probes_of_flags(args.probe, args.n)
    data = random.Random(0).sample(load_dataset().problems, args.problems)
    sim = SimModel({p.problem: math500_problem(p.problem, p.answer, p.level) for p in data})
    started = time.perf_counter()
    # line -> n -> seed -> per-problem values
    right: dict[tuple[str, int], list[list[float]]] = {}
    spent: dict[tuple[str, int], list[float]] = {}
    drawn: dict[tuple[str, int], list[float]] = {}  # generations per problem
    exits: dict[tuple[str, int], list[float]] = {}

    def add(
        line: str, n: int, values: list[float], tokens: float, generations: float, exit_share: float
    ) -> None:
        right.setdefault((line, n), []).append(values)
        spent.setdefault((line, n), []).append(tokens)
        drawn.setdefault((line, n), []).append(generations)
        exits.setdefault((line, n), []).append(exit_share)

    for seed in args.seeds:
        sizes = sorted(set(probes.values()))
        pairs = [await record(sim, p, seed, fixed_budgets, sizes) for p in data]
        records = [r for r, _ in pairs]
        order = list(range(len(data)))
        random.Random(f"fold:{seed}").shuffle(order)
        halves = [set(order[: len(order) // 2]), set(order[len(order) // 2 :])]
        for n in fixed_budgets:
            for label in sorted({lab for (lab, m) in records[0].outcomes if m == n}):
                outs = [r.outcomes[(label, n)] for r in records]
                add(
                    label,
                    n,
                    [float(o.correct) for o in outs],
                    sum(o.policy_tokens for o in outs) / len(outs),
                    float(n),
                    0.0,
                )

        def table_of(train: list[ProblemRecord], seed: int = seed) -> CalibrationTable:
            return build_table(
                train,
                identity={},
                probe=probes,
                budgets=budgets,
                bins=args.bins,
                folds=args.folds,
                seed=seed,
            )

        tables = {}
        for h, test in enumerate(halves):
            train = [r for i, r in enumerate(records) if i not in test]
            predicted = table_of(train)
            # the oracle bins problems by their true pass@1 in place of the probe's reading
            oracle = table_of(
                [
                    dataclasses.replace(
                        r,
                        probes={
                            k: dataclasses.replace(reading, predicted=r.pass_at_1 or 0.0)
                            for k, reading in r.probes.items()
                        },
                    )
                    for r in train
                ]
            )
            tables[h] = (predicted, oracle)
        for n in budgets:
            lines: dict[str, list[tuple[int, bool, float, int, bool]]] = {}
            for h, test in enumerate(halves):
                predicted, oracle = tables[h]
                rule = predicted.settle_rule  # the table's own (the default) stopping rule
                for i in sorted(test):
                    p, truth = data[i], pairs[i][1]
                    choosers = {
                        "compute_optimal": (FixedChoice(predicted, rule), True),
                        "compute_optimal/no_exit": (FixedChoice(predicted, rule), False),
                        "compute_optimal/oracle": (
                            FixedChoice(oracle, rule, known=truth.pass_at_1),
                            True,
                        ),
                        "weighted_best_of_n/exit_count": (
                            FixedChoice(predicted, "count", Option("weighted_best_of_n")),
                            True,
                        ),
                        "weighted_best_of_n/exit_weighted": (
                            FixedChoice(predicted, "weighted", Option("weighted_best_of_n")),
                            True,
                        ),
                    }
                    for line, (chooser, early) in choosers.items():
                        ok, tokens, decision = await held_out(sim, p, seed, n, chooser, early)
                        lines.setdefault(line, []).append(
                            (i, ok, tokens, decision["samples"], bool(decision["early_exit"]))
                        )
            for line, rows in lines.items():
                rows.sort()
                add(
                    line,
                    n,
                    [float(ok) for _, ok, _, _, _ in rows],
                    sum(t for _, _, t, _, _ in rows) / len(rows),
                    sum(g for _, _, _, g, _ in rows) / len(rows),
                    sum(e for _, _, _, _, e in rows) / len(rows),
                )
    elapsed = time.perf_counter() - started
    results = {
        "problems": len(data),
        "seeds": args.seeds,
        "probe": {str(n): k for n, k in probes.items()},
        "bins": args.bins,
        "budgets": budgets,
        "fixed_budgets": fixed_budgets,
        "elapsed_s": round(elapsed),
        "lines": [
            {
                "line": line,
                "n": n,
                "right": right[(line, n)],
                "tokens": spent[(line, n)],
                "generations": drawn[(line, n)],
                "exits": exits[(line, n)],
            }
            for line, n in right
        ],
    }
    args.results.write_text(json.dumps(results) + "\n")
    show(results)


def show(results: dict[str, Any]) -> None:
    """The tables of a run's results (see the module docstring)."""
    right = {(r["line"], r["n"]): r["right"] for r in results["lines"]}
    spent = {(r["line"], r["n"]): r["tokens"] for r in results["lines"]}
    drawn = {(r["line"], r["n"]): r["generations"] for r in results["lines"]}
    exits = {(r["line"], r["n"]): r["exits"] for r in results["lines"]}
    budgets, fixed_budgets = results["budgets"], results["fixed_budgets"]
    print(
        f"MATH-500 on the simulator, {results['problems']} problems, seeds {results['seeds']},"
        f" probe {results['probe']}, {results['bins']} bins, held-out 2-fold;"
        f" {results['elapsed_s']} s\n"
    )
    print("| N | strategy | accuracy % | 95% CI | tokens / problem | generations | early exits % |")
    print("|---:|---|---:|---|---:|---:|---:|")
    for n in fixed_budgets:
        keys = sorted((k for k in right if k[1] == n), key=lambda k: -sum(map(sum, right[k])))
        for key in keys:
            values = per_problem(right[key])
            ci = mean_interval(values)
            print(
                f"| {n} | {key[0]} | {100 * sum(values) / len(values):.1f} | "
                f"{100 * ci.low:.1f}-{100 * ci.high:.1f} | {mean(spent[key]):,.0f} | "
                f"{mean(drawn[key]):.1f} | {100 * mean(exits[key]):.0f} |"
            )
    # the fixed strategies' curves: every option the grid ran, at each budget it ran at
    fixed_labels = {k[0] for k in right if k[1] in fixed_budgets and "/" not in k[0]}
    fixed_labels -= {"compute_optimal", PROBE}
    for axis, spend in (("tokens", spent), ("generations", drawn)):
        print(f"\nAt equal {axis}: each line beside the best fixed strategy read at its spend")
        print(
            f"| N | line | accuracy % | {axis} | best fixed at that spend | its accuracy % "
            "| difference, 95% CI |"
        )
        print("|---:|---|---:|---:|---|---:|---|")
        curves = {
            label: [
                Measured(m, mean(spend[(label, m)]), tuple(per_problem(right[(label, m)])))
                for m in fixed_budgets
                if (label, m) in right
            ]
            for label in sorted(fixed_labels)
        }
        # a tree search at its best width at each N, chosen in hindsight: the strongest fixed
        # curve a user could draw (which favours the fixed strategies)
        for tree in ("beam_search", "dvts"):
            best = []
            for m in fixed_budgets:
                at_m = [c for label, c in curves.items() if label.startswith(f"{tree}(")]
                points = [p for c in at_m for p in c if p.n == m]
                if points:
                    best.append(max(points, key=lambda p: (sum(p.values), -p.spend)))
            curves[f"{tree}, best width per N"] = best
        for n in budgets:
            for line in (
                "compute_optimal",
                "compute_optimal/oracle",
                *sorted(
                    k[0] for k in right if k[1] == n and k[0].startswith("weighted_best_of_n/")
                ),
            ):
                values = per_problem(right[(line, n)])
                readings = compare_at_spend(values, mean(spend[(line, n)]), curves)
                row = f"| {n} | {line} | {100 * mean(values):.1f} | {mean(spend[(line, n)]):,.1f} |"
                if not readings:
                    print(f"{row} none measured at this spend | | |")
                    continue
                best = readings[0]
                low, high = best.budgets
                between = f"{low}" if low == high else f"{low}-{high}"
                print(
                    f"{row} {best.label} @ N={between} | {100 * best.accuracy:.1f} | "
                    f"{100 * best.difference:+.1f} "
                    f"[{100 * best.interval.low:+.1f}, {100 * best.interval.high:+.1f}] |"
                )


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    asyncio.run(main())
