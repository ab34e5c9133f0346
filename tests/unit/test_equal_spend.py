"""asynctts.eval.equal_spend: a fixed strategy read at another line's spend, interpolated in log
spend per problem, never extrapolated, with a paired interval of the difference."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asynctts.eval.equal_spend import Measured, at_spend, compare_at_spend, equal_spend_section

# a fixed strategy on four problems at n = 4, 8, 16: spends double, accuracy 1/4, 2/4, 3/4
CURVE = [
    Measured(16, 4000.0, (1.0, 1.0, 1.0, 0.0)),
    Measured(4, 1000.0, (1.0, 0.0, 0.0, 0.0)),  # order does not matter: read by spend
    Measured(8, 2000.0, (1.0, 1.0, 0.0, 0.0)),
]


def test_on_a_measured_spend_the_reading_is_that_measurement() -> None:
    assert at_spend(CURVE, 2000.0) == ((1.0, 1.0, 0.0, 0.0), (8, 8))
    assert at_spend(CURVE, 1000.0) == ((1.0, 0.0, 0.0, 0.0), (4, 4))
    assert at_spend(CURVE, 4000.0) == ((1.0, 1.0, 1.0, 0.0), (16, 16))


def test_between_two_spends_it_interpolates_in_log_spend() -> None:
    # sqrt(2000 * 4000) is halfway in log spend: problem 3 is half right
    found = at_spend(CURVE, math.sqrt(2000.0 * 4000.0))
    assert found is not None
    values, budgets = found
    assert budgets == (8, 16)
    assert values == pytest.approx((1.0, 1.0, 0.5, 0.0))
    # a quarter of the way from 1000 to 2000 in log spend
    found = at_spend(CURVE, 1000.0 * 2**0.25)
    assert found is not None and found[0] == pytest.approx((1.0, 0.25, 0.0, 0.0))


def test_outside_the_measured_spends_there_is_no_reading() -> None:
    assert at_spend(CURVE, 999.0) is None
    assert at_spend(CURVE, 4001.0) is None


def test_bad_measurements_are_named() -> None:
    with pytest.raises(ValueError, match=r"no measured budget"):
        at_spend([], 1.0)
    with pytest.raises(ValueError, match=r"different numbers of problems"):
        at_spend([Measured(4, 1.0, (1.0,)), Measured(8, 2.0, (1.0, 0.0))], 1.5)
    with pytest.raises(ValueError, match=r"spends must be > 0 \(got 0.0 and \[1.0\]\)"):
        at_spend([Measured(4, 1.0, (1.0,))], 0.0)


def test_a_line_is_compared_with_each_fixed_strategy_at_its_spend_best_first() -> None:
    cheap = [Measured(4, 1000.0, (0.0, 0.0, 0.0, 0.0)), Measured(8, 8000.0, (1.0,) * 4)]
    costly = [Measured(4, 3000.0, (1.0,) * 4), Measured(8, 6000.0, (1.0,) * 4)]
    line = (1.0, 1.0, 1.0, 0.0)  # 3/4 right at 2000 tokens
    readings = compare_at_spend(line, 2000.0, {"costly": costly, "cheap": cheap, "x": CURVE})
    # "costly" was not measured as low as 2000: left out
    assert [r.label for r in readings] == ["x", "cheap"]
    first, second = readings
    assert (first.budgets, first.accuracy, first.difference) == ((8, 8), 0.5, 0.25)
    # paired: problems 0, 1 and 3 tie, problem 2 gains 1; the interval holds the 0.25
    assert first.interval.low <= 0.25 <= first.interval.high
    assert second.budgets == (4, 8)
    assert second.accuracy == pytest.approx(1 / 3)  # a third of the way in log spend
    assert second.difference == pytest.approx(0.75 - 1 / 3)


@given(
    rows=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=30),
    position=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_reading_lies_between_its_two_measurements(
    rows: list[tuple[bool, bool]], position: float
) -> None:
    low = Measured(4, 100.0, tuple(float(a) for a, _ in rows))
    high = Measured(8, 400.0, tuple(float(b) for _, b in rows))
    found = at_spend([low, high], 100.0 * 4.0**position)
    assert found is not None
    values, _ = found
    for value, a, b in zip(values, low.values, high.values, strict=True):
        assert min(a, b) - 1e-12 <= value <= max(a, b) + 1e-12


def point(n: int, tokens: float, generations: float) -> dict[str, object]:
    return {"n": n, "spend": {"tokens": tokens, "generations": generations}}


def test_a_report_reads_every_fixed_line_at_compute_optimals_spend() -> None:
    lines = [
        {
            "label": "weighted_best_of_n",
            "strategy": "weighted_best_of_n",
            "primary": True,
            "points": [point(4, 1000.0, 4.0), point(8, 2000.0, 8.0)],
        },
        # not primary: never a fixed line
        {"label": "dvts/best", "strategy": "dvts", "primary": False, "points": [point(8, 1.0, 8)]},
        {
            "label": "compute_optimal",
            "strategy": "compute_optimal",
            "primary": True,
            "points": [point(8, 2000.0, 6.0)],
        },
    ]
    values = {
        ("weighted_best_of_n", 4): {"a": 0.0, "b": 0.0, "c": 1.0},
        ("weighted_best_of_n", 8): {"a": 1.0, "b": 0.0, "c": 1.0},
        ("dvts/best", 8): {"a": 1.0},
        # problem "d" is compute_optimal's alone (its fixed lines have not done it): left out
        ("compute_optimal", 8): {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0},
    }
    tokens, generations = equal_spend_section(lines, values)
    assert (tokens["axis"], tokens["spend"], tokens["problems"], tokens["accuracy"]) == (
        "tokens",
        2000.0,
        3,
        1.0,
    )
    [reading] = tokens["readings"]
    assert reading["label"] == "weighted_best_of_n" and reading["between"] == [8, 8]
    assert reading["accuracy"] == pytest.approx(2 / 3)
    assert reading["difference"] == pytest.approx(1 / 3)
    # 6 generations lie between 4 and 8: log(6/4)/log(2) of the way, problem "a" alone moves
    [reading] = generations["readings"]
    weight = math.log(1.5) / math.log(2.0)
    assert reading["between"] == [4, 8]
    assert reading["accuracy"] == pytest.approx((weight + 1.0) / 3)
    # no compute_optimal line: nothing to compare
    assert equal_spend_section(lines[:2], values) == []
