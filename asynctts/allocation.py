"""How one token budget is spread over a batch of problems once their probes are in: which
option, at which calibrated budget, each open problem runs next. Pure: no I/O, no clock.

Rules:
- Predictions are the cells of the table's part for budget n (the part of the probe every
  problem ran, of k samples) in the problem's difficulty bin. At each calibrated budget
  k <= N' <= n two options are offered: the table's choice there, valued by its
  cross-validated accuracy (`ProbePart.validated`), and weighted best-of-N, one fixed option
  valued by its cell (when it is not the choice). Valuing a choice by its own cell would
  overrate it: the best of many options in a bin of a few dozen problems is partly the
  luckiest, and budget spent on luck is lost. An option's predicted gain is its accuracy
  minus the probe's (the "probe" cell: stop after the probe). Its predicted cost is what
  compute_optimal runs after the probe: the option with the rest r of N' (N' - k more
  samples; a tree search's largest budget <= N' - k), at its tokens per generation, r / N'
  of them, at least one token. An option with nothing left to run (r = 0) is not offered.
- Majority and best-of-N are never offered: after the probe compute_optimal draws more
  scored samples and answers by their weighted vote whichever member the table named, so
  weighted best-of-N is what runs (majority's cell counts no PRM tokens, and its accuracy is
  another rule's).
- Per bin, the options worth buying are the upper convex hull of (cost, gain) from (0, 0):
  moving from one hull point to the next is a step whose gain per token falls along the hull.
  Options that gain nothing are never on it, so the hopeless bin stops at the probe.
- Greedy over all open problems: the step with the most gain per token goes first; a step
  that does not fit what is left of the budget ends that problem's steps (its later ones
  gain less per token), while other problems go on. Ties: the earlier step on its hull, then
  the problem's place in the batch. The total predicted cost never exceeds the budget.
- A problem's allotment is the last hull point it reached (an option at a budget N'), or the
  probe alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from asynctts.calibration import PROBE, CalibrationTable, Cell, ProbePart
from asynctts.errors import ConfigError
from asynctts.search.compute_optimal import largest_budget

MIN_COST = 1.0  # tokens: a step is never free
# family members compute_optimal never runs as such (it runs weighted best-of-N's sampling)
_NOT_RUN = frozenset({PROBE, "majority", "best_of_n"})
_SAMPLES = "weighted_best_of_n"


@dataclass(frozen=True, slots=True)
class Allotment:
    """What one open problem runs after its probe: `option` (a table label, or "probe": no
    more) at budget `n` (the probe's size for "probe"), with its predicted accuracy gain over
    the probe and its predicted tokens beyond the probe."""

    option: str
    n: int
    gain: float = 0.0
    tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class _Point:
    cost: float
    gain: float
    option: str
    n: int


def probe_cell(part: ProbePart, level: int) -> Cell:
    """The "probe" cell of bin `level` (at the part's smallest budget: the probe is the same
    at every budget).

    Raises:
        ConfigError: the part has no "probe" option there.
    """
    budget = part.budgets[0]
    for cell in part.cells[(level, budget)]:
        if cell.option == PROBE:
            return cell
    raise ConfigError(
        f"the calibration table has no {PROBE!r} option in bin {level} at N={budget}: a batch "
        "budget needs the probe's spend and accuracy; make the table with `asynctts calibrate`"
    )


def expected_probe_tokens(table: CalibrationTable, n: int) -> float:
    """A probe's mean tokens per problem solved with budget n: its cells' tokens averaged
    over the bins."""
    part = table.part_for(n)
    return sum(probe_cell(part, level).tokens for level in range(1, part.bins + 1)) / part.bins


def hull(table: CalibrationTable, level: int, n: int) -> tuple[Allotment, ...]:
    """Bin `level`'s upper convex hull of (cost, gain) over the options at budgets <= n,
    from the probe alone (first) outwards."""
    part = table.part_for(n)
    base = probe_cell(part, level)
    points = []
    for budget in part.budgets:
        if budget > n:
            continue
        chosen = part.validated[(level, budget)]
        # weighted best-of-N's own cell is unbiased unless it is the choice
        samples = (
            []
            if chosen.option == _SAMPLES
            else [c for c in part.cells[(level, budget)] if c.option == _SAMPLES]
        )
        for cell in (chosen, *samples):
            if cell.option in _NOT_RUN:
                continue
            rest = _rest(table, cell.option, budget - part.probe)
            if rest > 0:
                cost = max(cell.tokens * rest / budget, MIN_COST)
                points.append(_Point(cost, cell.accuracy - base.accuracy, cell.option, budget))
    points.sort(key=lambda p: (p.cost, -p.gain, p.n, p.option))
    chain = [_Point(0.0, 0.0, PROBE, part.probe)]
    for point in points:
        if point.gain <= chain[-1].gain:
            continue  # costs at least as much as the last kept point and gains no more
        while len(chain) >= 2 and _under(chain[-2], chain[-1], point):
            chain.pop()
        chain.append(point)
    return tuple(Allotment(p.option, p.n, p.gain, p.cost) for p in chain)


def _rest(table: CalibrationTable, option: str, most: int) -> int:
    """The generations `option` runs within `most` generations after the probe (0: none)."""
    strategy = table.strategy_of(option)
    if strategy is None:
        return 0
    return largest_budget(strategy, most)


def _under(a: _Point, b: _Point, c: _Point) -> bool:
    """b lies on or below the segment from a to c (so the hull skips it)."""
    return (b.cost - a.cost) * (c.gain - a.gain) - (b.gain - a.gain) * (c.cost - a.cost) >= 0


def allocate(
    bins: Sequence[int], remaining: float, table: CalibrationTable, n: int
) -> list[Allotment]:
    """One allotment per open problem (`bins[i]` is problem i's difficulty bin), spending at
    most `remaining` predicted tokens beyond the probes (see the module rules)."""
    hulls = {level: hull(table, level, n) for level in sorted(set(bins))}
    reached = [0] * len(bins)
    spent = 0.0
    steps: list[tuple[float, int, int]] = []  # (-gain per token, step, problem)

    def push(problem: int) -> None:
        chain = hulls[bins[problem]]
        step = reached[problem] + 1
        if step < len(chain):
            cost = chain[step].tokens - chain[step - 1].tokens
            heapq.heappush(
                steps, (-(chain[step].gain - chain[step - 1].gain) / cost, step, problem)
            )

    for problem in range(len(bins)):
        push(problem)
    while steps:
        _, step, problem = heapq.heappop(steps)
        chain = hulls[bins[problem]]
        after = spent - chain[step - 1].tokens + chain[step].tokens
        if after > remaining:
            continue
        spent = after
        reached[problem] = step
        push(problem)
    return [hulls[level][step] for level, step in zip(bins, reached, strict=True)]


__all__ = ["Allotment", "allocate", "expected_probe_tokens", "hull", "probe_cell"]
