"""Confidence intervals of an accuracy by the bootstrap over problems.

Rules:
- A resample draws `total` problems with replacement from the `total` that were graded; its
  accuracy is the share of them that are right. Only the number right matters, and in a
  resample it is Binomial(total, correct / total), so each resample draws that number
  directly, by inverting its distribution function: the same distribution as drawing the
  problems one by one, at a cost that does not grow with the number of problems.
- The interval is the percentile interval: the resampled accuracies at the (1 - confidence) / 2
  and (1 + confidence) / 2 order statistics (the nearest ones).
- Values that are not 0/1 (a problem's correctness averaged over seeds, or the paired
  difference of two lines on one problem) resample the problems themselves
  (`mean_interval`): the same percentile interval of the mean.
- Seeded: the same counts, resamples, confidence and seed always give the same interval.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CONFIDENCE", "RESAMPLES", "SEED", "Interval", "accuracy_interval", "mean_interval"]

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True, slots=True)
class Interval:
    """An accuracy's bootstrap interval, both ends shares in [0, 1]."""

    low: float
    high: float


def accuracy_interval(
    correct: int,
    total: int,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """The percentile bootstrap interval of the accuracy `correct / total` (see the rules).

    Args:
        correct: problems right.
        total: problems graded (>= 1).
        resamples: bootstrap resamples (>= 1).
        confidence: the interval's coverage, in (0, 1).
        seed: of the resampling.

    Raises:
        ValueError: `total` < 1, `correct` outside [0, total], `resamples` < 1, or
            `confidence` outside (0, 1).
    """
    if total < 1:
        raise ValueError(f"total={total}: need >= 1 graded problem")
    if not 0 <= correct <= total:
        raise ValueError(f"correct={correct}: need 0 <= correct <= total={total}")
    _check(resamples, confidence)
    cdf = _binomial_cdf(total, correct / total)
    rng = random.Random(seed)
    # u >= the last cumulative probability (a rounding short of 1) is the top count
    counts = sorted(min(bisect.bisect_right(cdf, rng.random()), total) for _ in range(resamples))
    low, high = _percentiles(counts, confidence)
    return Interval(low / total, high / total)


def mean_interval(
    values: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """The percentile bootstrap interval of the mean of per-problem `values`, resampling the
    problems (see the rules).

    Raises:
        ValueError: no value, `resamples` < 1, or `confidence` outside (0, 1).
    """
    if not values:
        raise ValueError("no values: need >= 1 problem")
    _check(resamples, confidence)
    rng = random.Random(seed)
    count = len(values)
    means = sorted(math.fsum(rng.choices(values, k=count)) / count for _ in range(resamples))
    return Interval(*_percentiles(means, confidence))


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: need >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: need 0 < confidence < 1")


def _percentiles(ordered: Sequence[float], confidence: float) -> tuple[float, float]:
    """The (1 -/+ confidence) / 2 order statistics of the sorted resamples."""
    # never past the middle, so low <= high even for a low confidence over few resamples
    tail = min(round(len(ordered) * (1.0 - confidence) / 2), (len(ordered) - 1) // 2)
    return ordered[tail], ordered[len(ordered) - 1 - tail]


def _binomial_cdf(trials: int, p: float) -> list[float]:
    """P(X <= k) for k = 0..trials, X ~ Binomial(trials, p) (log-space: no underflow)."""
    if p <= 0.0 or p >= 1.0:
        certain = 0 if p <= 0.0 else trials
        return [0.0 if k < certain else 1.0 for k in range(trials + 1)]
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(trials + 1)
    pmf = (
        math.exp(
            log_n
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * log_p
            + (trials - k) * log_q
        )
        for k in range(trials + 1)
    )
    return list(itertools.accumulate(pmf))
