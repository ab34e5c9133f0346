"""Compute-optimal scaling on the calibrated simulator, held out: does choosing the strategy
per problem from its probe beat every fixed strategy, and what does early exit save?

In process (no HTTP; `SimPolicy` / `SimPRM` over one `SimModel` with the fitted defaults), all
500 MATH-500 problems, for each seed:
1. Records: per problem, the best-of-N family at max(N) (its first k samples are the probe;
   the probe option is their weighted vote), beam search and DVTS at every N with width 4 and
   round(sqrt(N)); tokens are generated words plus PRM-read words, as the simulator counts.
2. Seeded 2-fold split: a table built on one half (`build_table`, quantile bins of the probe's
   mean PRM value) answers for the other half, where `ComputeOptimal` really runs (probe,
   early exit, the bin's choice with the rest of the budget). "Oracle" bins by the true pass@1
   (the share of the problem's max(N) samples that are right), Snell et al.'s upper bound.
3. Early exit alone: weighted best-of-N that stops once the answers settled (the probe, then
   doubling batches), under the count rule and the PRM-weighted rule, vs weighted best-of-N.
   compute_optimal itself stops by the table's rule (the defaults: weighted, 0.9).

Accuracy is averaged over seeds per problem; 95% intervals come from a bootstrap over
problems (paired: the same resampled problems for every line).

    python benchmarks/compute_optimal_sim.py [--n 16 64] [--probe 8] [--bins 5] [--seeds 0 1 2]
        [--problems 500]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from asynctts.answers import best_of, majority_vote, normalize, weighted_vote
from asynctts.calibration import (
    PROBE,
    CalibrationTable,
    Option,
    Outcome,
    ProblemRecord,
    build_table,
)
from asynctts.errors import BranchLost
from asynctts.eval.data import Problem, load_dataset
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


def tree_options(n: int) -> list[Option]:
    widths = sorted({4, round(math.sqrt(n))})
    return [Option(s, w) for s in ("beam_search", "dvts") for w in widths if n % w == 0]


@dataclass
class Truth:
    pass_at_1: float
    probe: list[Path]


async def record(
    sim: SimModel, problem: Problem, seed: int, budgets: Sequence[int], probe: int
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
        outcomes[(PROBE, n)] = Outcome(
            pick(samples[:probe], "weighted") == gold, per_sample * probe, 0.0
        )
        for option in tree_options(n):
            meter = Meter(sim, problem.problem, seed)
            strategy = option.build("last")
            assert strategy is not None
            results = await strategy.run(Path(), n, meter.generate, meter.score)
            outcomes[(option.label, n)] = Outcome(
                pick(finished(results), "weighted") == gold, meter.tokens, 0.0
            )
    right = sum(answer_of(p) == gold for p in samples) / len(samples)
    reading = read_probe(samples[:probe], "last")
    return (
        ProblemRecord(problem.id, reading.predicted, reading.agreement, right, outcomes),
        Truth(right, samples[:probe]),
    )


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

    @property
    def probe(self) -> int:
        return self.table.probe

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
) -> tuple[bool, float, dict[str, object]]:
    meter = Meter(sim, problem.problem, seed)
    strategy = ComputeOptimal(table=chooser, early_exit=early)
    decision, results = await strategy.run_deciding(Path(), n, meter.generate, meter.score)
    return (
        pick(finished(results), "weighted") == normalize(problem.answer),
        meter.tokens,
        dict(decision),
    )


def interval(columns: Sequence[Sequence[float]], rng: random.Random) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-problem values (seed-averaged)."""
    per_problem = [sum(col) / len(col) for col in zip(*columns, strict=True)]
    count = len(per_problem)
    means = sorted(
        sum(per_problem[rng.randrange(count)] for _ in range(count)) / count
        for _ in range(BOOTSTRAP)
    )
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--probe", type=int, default=8)
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation in a bin")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--problems", type=int, default=500)
    args = parser.parse_args()
    budgets = sorted(args.n)
    data = random.Random(0).sample(load_dataset().problems, args.problems)
    sim = SimModel({p.problem: math500_problem(p.problem, p.answer, p.level) for p in data})
    started = time.perf_counter()
    # line -> n -> seed -> per-problem values
    right: dict[tuple[str, int], list[list[float]]] = {}
    spent: dict[tuple[str, int], list[float]] = {}
    exits: dict[tuple[str, int], list[float]] = {}

    def add(line: str, n: int, values: list[float], tokens: float, exit_share: float) -> None:
        right.setdefault((line, n), []).append(values)
        spent.setdefault((line, n), []).append(tokens)
        exits.setdefault((line, n), []).append(exit_share)

    for seed in args.seeds:
        pairs = [await record(sim, p, seed, budgets, args.probe) for p in data]
        records = [r for r, _ in pairs]
        order = list(range(len(data)))
        random.Random(f"fold:{seed}").shuffle(order)
        halves = [set(order[: len(order) // 2]), set(order[len(order) // 2 :])]
        for n in budgets:
            for label in sorted({lab for (lab, m) in records[0].outcomes if m == n}):
                outs = [r.outcomes[(label, n)] for r in records]
                add(
                    label,
                    n,
                    [float(o.correct) for o in outs],
                    sum(o.policy_tokens for o in outs) / len(outs),
                    0.0,
                )

        def table_of(train: list[ProblemRecord], seed: int = seed) -> CalibrationTable:
            return build_table(
                train,
                identity={},
                probe=args.probe,
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
                    ProblemRecord(
                        r.problem_id, r.pass_at_1 or 0.0, r.agreement, r.pass_at_1, r.outcomes
                    )
                    for r in train
                ]
            )
            tables[h] = (predicted, oracle)
        for n in budgets:
            lines: dict[str, list[tuple[int, bool, float, bool]]] = {}
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
                            (i, ok, tokens, bool(decision["early_exit"]))
                        )
            for line, rows in lines.items():
                rows.sort()
                add(
                    line,
                    n,
                    [float(ok) for _, ok, _, _ in rows],
                    sum(t for _, _, t, _ in rows) / len(rows),
                    sum(e for _, _, _, e in rows) / len(rows),
                )
    elapsed = time.perf_counter() - started
    rng = random.Random(0)
    print(
        f"MATH-500 on the simulator, {len(data)} problems, seeds {args.seeds}, probe "
        f"{args.probe}, {args.bins} bins, held-out 2-fold; {elapsed:.0f} s\n"
    )
    print("| N | strategy | accuracy % | 95% CI | tokens / problem | early exits % |")
    print("|---:|---|---:|---|---:|---:|")
    for n in budgets:
        keys = sorted((k for k in right if k[1] == n), key=lambda k: -sum(map(sum, right[k])))
        for key in keys:
            columns = right[key]
            accuracy = 100 * sum(map(sum, columns)) / (len(columns) * len(columns[0]))
            low, high = interval(columns, rng)
            tokens = sum(spent[key]) / len(spent[key])
            exit_share = 100 * sum(exits[key]) / len(exits[key])
            print(
                f"| {n} | {key[0]} | {accuracy:.1f} | {100 * low:.1f}-{100 * high:.1f} | "
                f"{tokens:,.0f} | {exit_share:.0f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
