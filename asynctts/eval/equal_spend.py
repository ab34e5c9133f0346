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
- In an eval report, each compute_optimal point is read against every other primary line, in
  tokens (policy generated + PRM prompt) and in generations per problem (`equal_spend_section`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asynctts.eval.bootstrap import Interval, mean_interval

__all__ = [
    "AXES",
    "Measured",
    "Reading",
    "at_spend",
    "compare_at_spend",
    "equal_spend_section",
]


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


AXES = ("tokens", "generations")  # the spends lines are compared at
COMPARED = "compute_optimal"  # the strategy whose lines are read against the fixed ones


def equal_spend_section(
    lines: Sequence[Mapping[str, Any]], values: Mapping[tuple[str, int], Mapping[str, float]]
) -> list[dict[str, Any]]:
    """A report's comparison at equal spend: each compute_optimal point beside every other
    primary line, at its mean tokens and at its mean generations per problem.

    Args:
        lines: the report's lines (label, strategy, primary, points with n and spend).
        values: (label, n) -> problem id -> value (right or not, or the share of seeds right).

    Only problems every compared point holds count (an unfinished run compares what all its
    lines have done); a point without spend or problems is left out.
    """
    primary = [line for line in lines if line["primary"]]
    compared = [line for line in primary if line["strategy"] == COMPARED]
    fixed = [line for line in primary if line["strategy"] != COMPARED]
    section = []
    for line in compared:
        for point in line["points"]:
            own = values.get((line["label"], point["n"]), {})
            shared = set(own)
            for other in fixed:
                for p in other["points"]:
                    shared &= set(values.get((other["label"], p["n"]), {}))
            problems = sorted(shared)
            if not problems:
                continue
            mine = [own[pid] for pid in problems]
            for axis in AXES:
                spend = point["spend"].get(axis)
                if not spend:
                    continue
                curves = {
                    other["label"]: [
                        Measured(
                            p["n"],
                            p["spend"][axis],
                            tuple(values[(other["label"], p["n"])][pid] for pid in problems),
                        )
                        for p in other["points"]
                        if p["spend"].get(axis)
                    ]
                    for other in fixed
                }
                readings = compare_at_spend(
                    mine, spend, {label: c for label, c in curves.items() if c}
                )
                section.append(
                    {
                        "line": line["label"],
                        "n": point["n"],
                        "axis": axis,
                        "spend": spend,
                        "problems": len(problems),
                        "accuracy": math.fsum(mine) / len(mine),
                        "readings": [
                            {
                                "label": r.label,
                                "between": list(r.budgets),
                                "accuracy": r.accuracy,
                                "difference": r.difference,
                                "interval": [r.interval.low, r.interval.high],
                            }
                            for r in readings
                        ],
                    }
                )
    return section
