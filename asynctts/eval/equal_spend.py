"""Lines compared at equal spend: what a fixed strategy scores at the spend another line had.

Rules:
- A fixed strategy is measured at a few budgets n, each with its mean spend per problem
  (tokens, or generations) and one value per problem (right or not, or the share of seeds
  that were right).
- Its reading at a spend between two measured spends is interpolated linearly in the log of
  the spend, per problem with one weight: accuracy grows about linearly in log compute over a
  doubling of the budget, and one weight for every problem keeps the comparison paired. At a
  measured spend the reading is that measurement. Outside the measured spends there is no
  reading: nothing is extrapolated.
- The difference (line minus fixed strategy) is the mean of the per-problem differences, with
  the percentile bootstrap interval over problems (asynctts/eval/bootstrap.py).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from asynctts.eval.bootstrap import Interval, mean_interval

__all__ = ["Measured", "Reading", "at_spend", "compare_at_spend"]


@dataclass(frozen=True, slots=True)
class Measured:
    """A fixed strategy at one budget: its mean spend per problem and per-problem values."""

    n: int
    spend: float
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Reading:
    """A fixed strategy read at a line's spend, beside the line."""

    label: str
    spend: float
    budgets: tuple[int, int]  # the measured budgets the reading lies between (equal: on one)
    accuracy: float
    difference: float  # the line's accuracy minus this reading
    interval: Interval  # of the difference


def at_spend(
    measured: Sequence[Measured], spend: float
) -> tuple[tuple[float, ...], tuple[int, int]] | None:
    """Per-problem values of a fixed strategy at `spend` and the budgets they lie between, or
    None outside its measured spends (see the rules).

    Raises:
        ValueError: no measurement, a spend <= 0, or measurements of different problem counts.
    """
    if not measured:
        raise ValueError("no measured budget")
    if len({len(m.values) for m in measured}) != 1:
        raise ValueError("the measured budgets hold different numbers of problems")
    if spend <= 0.0 or any(m.spend <= 0.0 for m in measured):
        raise ValueError(f"spends must be > 0 (got {spend} and {[m.spend for m in measured]})")
    ordered = sorted(measured, key=lambda m: m.spend)
    spends = [m.spend for m in ordered]
    if not spends[0] <= spend <= spends[-1]:
        return None
    above = bisect.bisect_left(spends, spend)
    upper = ordered[above]
    if upper.spend == spend:
        return upper.values, (upper.n, upper.n)
    lower = ordered[above - 1]
    weight = math.log(spend / lower.spend) / math.log(upper.spend / lower.spend)
    values = tuple(
        (1.0 - weight) * a + weight * b for a, b in zip(lower.values, upper.values, strict=True)
    )
    return values, (lower.n, upper.n)


def compare_at_spend(
    values: Sequence[float], spend: float, fixed: Mapping[str, Sequence[Measured]]
) -> list[Reading]:
    """Each fixed strategy read at the line's `spend`, best first; those not measured around
    that spend are left out.

    Args:
        values: the line's per-problem values, in the fixed strategies' problem order.
        spend: the line's mean spend per problem.
        fixed: label -> the strategy's measured budgets.
    """
    mean = math.fsum(values) / len(values)
    readings = []
    for label, measured in fixed.items():
        found = at_spend(measured, spend)
        if found is None:
            continue
        other, budgets = found
        differences = [a - b for a, b in zip(values, other, strict=True)]
        accuracy = math.fsum(other) / len(other)
        readings.append(
            Reading(label, spend, budgets, accuracy, mean - accuracy, mean_interval(differences))
        )
    return sorted(readings, key=lambda r: (-r.accuracy, r.label))
