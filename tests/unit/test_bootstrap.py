"""asynctts.eval.bootstrap: the seeded percentile bootstrap of an accuracy over problems, exact
on a tiny case, the same distribution as resampling problems one by one, and intervals that
hold the accuracy they are about."""

from __future__ import annotations

import bisect
import random
from fractions import Fraction
from math import comb
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asynctts.eval.bootstrap import Interval, accuracy_interval, mean_interval


def exact_cdf(correct: int, total: int) -> list[Fraction]:
    """P(X <= k) for X ~ Binomial(total, correct / total), in exact fractions."""
    p = Fraction(correct, total)
    pmf = [comb(total, k) * p**k * (1 - p) ** (total - k) for k in range(total + 1)]
    return [sum(pmf[: k + 1], Fraction(0)) for k in range(total + 1)]


def test_a_seeded_tiny_case_exactly() -> None:
    # 3 of 4 right: a resample's count right is Binomial(4, 3/4), whose cumulative
    # probabilities are 1/256, 13/256, 67/256, 175/256, 1. Ten resamples, 95%: the interval
    # is the smallest and the largest of the ten (round(10 * 0.05 / 2) = 0 from each end).
    cdf = exact_cdf(3, 4)
    assert cdf == [Fraction(c, 256) for c in (1, 13, 67, 175, 256)]
    rng = random.Random(0)
    counts = sorted(bisect.bisect_right(cdf, Fraction(rng.random())) for _ in range(10))
    assert (counts[0], counts[-1]) == (2, 4)
    assert accuracy_interval(3, 4, resamples=10, seed=0) == Interval(0.5, 1.0)
    assert accuracy_interval(3, 4, resamples=10, seed=1) == Interval(0.25, 1.0)


def test_the_same_seed_gives_the_same_interval_and_others_may_not() -> None:
    assert accuracy_interval(37, 90, seed=7) == accuracy_interval(37, 90, seed=7)
    ends = {accuracy_interval(37, 90, resamples=50, seed=seed) for seed in range(10)}
    assert len(ends) > 1


def test_it_matches_resampling_the_problems_one_by_one() -> None:
    correct, total, resamples = 13, 40, 20_000
    outcomes = [1] * correct + [0] * (total - correct)
    rng = random.Random(1)
    naive = sorted(sum(rng.choices(outcomes, k=total)) for _ in range(resamples))
    tail = round(resamples * 0.05 / 2)
    interval = accuracy_interval(correct, total, resamples=resamples, seed=2)
    # two independent estimates of the same order statistics: within one problem
    assert abs(interval.low * total - naive[tail]) <= 1
    assert abs(interval.high * total - naive[resamples - 1 - tail]) <= 1


def test_it_converges_to_the_binomial_quantiles() -> None:
    correct, total = 30, 100
    cdf = exact_cdf(correct, total)
    low = next(k for k, c in enumerate(cdf) if c >= Fraction(25, 1000))
    high = next(k for k, c in enumerate(cdf) if c >= Fraction(975, 1000))
    interval = accuracy_interval(correct, total, resamples=20_000)
    assert abs(interval.low * total - low) <= 1
    assert abs(interval.high * total - high) <= 1


def test_few_resamples_at_a_low_confidence_meet_in_the_middle() -> None:
    for seed in range(20):
        two = accuracy_interval(5, 9, resamples=2, confidence=0.01, seed=seed)
        assert two.low <= two.high  # the two resamples, in order
        three = accuracy_interval(5, 9, resamples=3, confidence=0.01, seed=seed)
        assert three.low == three.high  # their median


def test_certain_outcomes_have_no_width() -> None:
    assert accuracy_interval(0, 5) == Interval(0.0, 0.0)
    assert accuracy_interval(5, 5) == Interval(1.0, 1.0)
    assert accuracy_interval(1, 1) == Interval(1.0, 1.0)


def test_a_higher_confidence_widens_the_interval() -> None:
    narrow = accuracy_interval(55, 120, confidence=0.8, seed=3)
    wide = accuracy_interval(55, 120, confidence=0.99, seed=3)
    assert wide.low < narrow.low <= narrow.high < wide.high


@given(
    total=st.integers(min_value=1, max_value=600),
    share=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_interval_holds_the_accuracy(total: int, share: float, seed: int) -> None:
    correct = round(share * total)
    interval = accuracy_interval(correct, total, seed=seed)
    assert 0.0 <= interval.low <= correct / total <= interval.high <= 1.0
    # every end is an accuracy some resample had: a count of problems over the total
    assert round(interval.low * total) / total == interval.low
    assert round(interval.high * total) / total == interval.high


@pytest.mark.parametrize(
    ("correct", "total", "options", "message"),
    [
        (0, 0, {}, r"total=0: need >= 1 graded problem"),
        (5, 4, {}, r"correct=5: need 0 <= correct <= total=4"),
        (-1, 4, {}, r"correct=-1: need 0 <= correct <= total=4"),
        (1, 4, {"resamples": 0}, r"resamples=0: need >= 1"),
        (1, 4, {"confidence": 1.0}, r"confidence=1.0: need 0 < confidence < 1"),
        (1, 4, {"confidence": 0.0}, r"confidence=0.0: need 0 < confidence < 1"),
    ],
)
def test_bad_arguments_are_named(
    correct: int, total: int, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        accuracy_interval(correct, total, **options)


def test_the_mean_of_values_resamples_the_problems_exactly() -> None:
    values = [0.0, 1 / 3, 1.0]
    rng = random.Random(4)
    means = sorted(sum(rng.choices(values, k=3)) / 3 for _ in range(10))
    assert mean_interval(values, resamples=10, seed=4) == Interval(means[0], means[-1])
    # on 0/1 values it is the same distribution as accuracy_interval's
    outcomes = [1.0] * 13 + [0.0] * 27
    by_values = mean_interval(outcomes, resamples=20_000, seed=5)
    by_counts = accuracy_interval(13, 40, resamples=20_000, seed=6)
    assert abs(by_values.low - by_counts.low) <= 1 / 40
    assert abs(by_values.high - by_counts.high) <= 1 / 40


@given(
    values=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_mean_interval_lies_within_the_values(values: list[float], seed: int) -> None:
    interval = mean_interval(values, resamples=200, seed=seed)
    rounding = 1e-12  # a mean of equal floats may differ from them in the last place
    assert min(values) - rounding <= interval.low <= interval.high <= max(values) + rounding
    if len(set(values)) == 1:  # nothing to resample: no width
        assert interval.high - interval.low <= rounding


def test_the_mean_interval_refuses_no_values() -> None:
    with pytest.raises(ValueError, match=r"no values: need >= 1 problem"):
        mean_interval([])
    with pytest.raises(ValueError, match=r"resamples=0: need >= 1"):
        mean_interval([1.0], resamples=0)
