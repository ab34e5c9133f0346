"""A problem's difficulty read from a probe of full samples, and whether its answers settled.

Rules:
- Predicted difficulty is Snell et al.'s: the mean of the probe paths' PRM values (each path's
  step scores aggregated as its strategy aggregates them; paths without a score are skipped).
  Higher means easier. With no scored path it is 0.0, the hardest reading.
- Answers are grouped by their normalised `\\boxed{}` content (the grouping votes use); a path
  without one counts for no answer.
- Agreement: the share of the probe's answered paths on its most common answer.
- Settled (Adaptive-Consistency's stopping rule, Aggarwal et al. 2023): with `a` and `b` the
  two largest answer counts, the answers settled when P(p1 > p2) >= `confidence` under
  p1 / (p1 + p2) ~ Beta(a + 1, b + 1), i.e. when 1 - I_0.5(a + 1, b + 1) >= confidence. The
  "weighted" reading uses each answer's summed PRM value instead of its count (real-valued
  Beta parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import mpmath

from asynctts.answers import extract_boxed, normalize
from asynctts.protocols import Path
from asynctts.search.aggregate import AggregateName, value_of

SettleRule = Literal["count", "weighted"]
SETTLE_RULES: tuple[SettleRule, ...] = ("count", "weighted")


@dataclass(frozen=True, slots=True)
class ProbeReading:
    """What a probe says about its problem.

    `counts` and `weights` list the answers from the most to the least common (by count,
    then by summed value); `weights` sums each answer's PRM values."""

    predicted: float
    agreement: float
    answers: tuple[str, ...]
    counts: tuple[int, ...]
    weights: tuple[float, ...]

    def dominance(self, rule: SettleRule) -> float:
        """P(the leading answer is the more likely of the top two), under `rule`."""
        if rule == "count":
            tally: Sequence[float] = self.counts
        else:
            tally = sorted(self.weights, reverse=True)
        if not tally:
            return 0.0
        top = float(tally[0])
        second = float(tally[1]) if len(tally) > 1 else 0.0
        return beta_dominance(top, second)

    def settled(self, rule: SettleRule, confidence: float) -> bool:
        return self.dominance(rule) >= confidence


def beta_dominance(top: float, second: float) -> float:
    """P(X > 1/2) for X ~ Beta(top + 1, second + 1): how sure one can be that the answer seen
    `top` times is more likely than the one seen `second` times."""
    if top < 0 or second < 0:
        raise ValueError(f"answer counts {top}, {second}: need >= 0")
    return float(1 - mpmath.betainc(top + 1, second + 1, 0, 0.5, regularized=True))


def read_probe(paths: Sequence[Path], aggregate: AggregateName) -> ProbeReading:
    """The reading of the probe `paths` (finished samples of one problem)."""
    values = [v for p in paths if (v := value_of(p.scores, aggregate)) is not None]
    counts: dict[str, int] = {}
    weights: dict[str, float] = {}
    for path in paths:
        boxed = extract_boxed(path.text)
        if boxed is None:
            continue
        answer = normalize(boxed)
        counts[answer] = counts.get(answer, 0) + 1
        weights[answer] = weights.get(answer, 0.0) + (value_of(path.scores, aggregate) or 0.0)
    order = sorted(counts, key=lambda a: (-counts[a], -weights[a]))
    answered = sum(counts.values())
    return ProbeReading(
        predicted=sum(values) / len(values) if values else 0.0,
        agreement=counts[order[0]] / answered if answered else 0.0,
        answers=tuple(order),
        counts=tuple(counts[a] for a in order),
        weights=tuple(weights[a] for a in order),
    )


__all__ = ["SETTLE_RULES", "ProbeReading", "SettleRule", "beta_dominance", "read_probe"]
