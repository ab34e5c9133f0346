"""The probe's reading: Snell's predicted difficulty, answer agreement, and Adaptive-Consistency's
Beta stopping rule on counts and on PRM-weighted counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asynctts.protocols import Finish, Path
from asynctts.search.difficulty import beta_dominance, read_probe


def solution(answer: str | None, *scores: float) -> Path:
    end = "done." if answer is None else f"So $\\boxed{{{answer}}}$."
    steps = (*(f"step {i}\n\n" for i in range(len(scores) - 1)), end)
    return Path(steps=steps, scores=scores, finish=Finish.EOS)


def test_the_published_stopping_points() -> None:
    assert beta_dominance(8, 0) == pytest.approx(1 - 0.5**9)  # 8 of 8 agree: 0.998
    assert beta_dominance(7, 1) == pytest.approx(1 - 10 / 512)  # 7 of 8: 0.980
    assert beta_dominance(4, 4) == pytest.approx(0.5)
    assert beta_dominance(5, 3) < 0.95 < beta_dominance(7, 1)


@given(
    top=st.floats(0, 40, allow_nan=False),
    second=st.floats(0, 40, allow_nan=False),
    more=st.floats(0.1, 5, allow_nan=False),
)
def test_dominance_grows_with_the_leader_and_shrinks_with_the_runner_up(
    top: float, second: float, more: float
) -> None:
    base = beta_dominance(top, second)
    assert 0.0 <= base <= 1.0
    assert beta_dominance(top + more, second) >= base - 1e-12
    assert beta_dominance(top, second + more) <= base + 1e-12
    assert beta_dominance(top, second) + beta_dominance(second, top) == pytest.approx(1.0)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"answer counts -1, 0: need >= 0"):
        beta_dominance(-1, 0)


def test_a_reading_of_hand_made_samples() -> None:
    probe = [
        solution("4", 0.9, 0.8),
        solution("4.0", 0.5, 0.6),  # the same answer once normalised
        solution("5", 0.9, 0.9),
        solution(None, 0.2),  # no answer: counts for difficulty, not for agreement
    ]
    reading = read_probe(probe, "last")
    assert reading.predicted == pytest.approx((0.8 + 0.6 + 0.9 + 0.2) / 4)
    assert reading.answers == ("4", "5")
    assert reading.counts == (2, 1)
    assert reading.weights == pytest.approx((1.4, 0.9))
    assert reading.agreement == pytest.approx(2 / 3)
    assert reading.dominance("count") == pytest.approx(beta_dominance(2, 1))
    assert reading.dominance("weighted") == pytest.approx(beta_dominance(1.4, 0.9))
    assert read_probe(probe, "min").predicted == pytest.approx((0.8 + 0.5 + 0.9 + 0.2) / 4)


def test_unanimous_and_empty_probes() -> None:
    unanimous = read_probe([solution("7", 0.9)] * 8, "last")
    assert unanimous.settled("count", 0.95)
    assert unanimous.settled("weighted", 0.95)  # 8 x 0.9 = 7.2 against nothing
    split = read_probe([solution("7", 0.9)] * 5 + [solution("8", 0.9)] * 3, "last")
    assert not split.settled("count", 0.95)
    empty = read_probe([], "last")
    assert (empty.predicted, empty.agreement, empty.counts) == (0.0, 0.0, ())
    assert not empty.settled("count", 0.5)
