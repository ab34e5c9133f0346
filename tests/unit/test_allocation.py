"""Spreading a batch token budget over the problems a probe left open: exact allocations on a
small table (the hull per bin, the greedy across problems, the hopeless bin, budgets above n
left out), and properties over random tables (never above the budget, more budget never
predicts less gain, every allotment on its bin's hull)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.allocation import Allotment, allocate, expected_probe_tokens, hull
from asynctts.calibration import PROBE, CalibrationTable, Cell
from asynctts.errors import ConfigError

BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


def table_of(
    cells: dict[tuple[int, int], list[tuple[str, float, float]]], probe: int = 4
) -> CalibrationTable:
    """A table from (bin, N) -> [(option, accuracy, tokens)] (tokens all policy tokens)."""
    bins = max(level for level, _ in cells)
    return CalibrationTable(
        identity={},
        aggregate="last",
        probe=probe,
        settle_rule="count",
        confidence=0.95,
        edges=tuple(i / bins for i in range(1, bins)),
        budgets=tuple(sorted({n for _, n in cells})),
        cells={
            key: tuple(Cell(option, acc, tokens, 0.0, 10) for option, acc, tokens in options)
            for key, options in cells.items()
        },
    )


# bin 1: easy, little to gain; bin 2: two hull steps; bin 3: hopeless (nothing gains)
TABLE = table_of(
    {
        (1, 16): [(PROBE, 0.90, 100), (BON, 0.92, 400), (BEAM, 0.91, 500)],
        (2, 16): [(PROBE, 0.40, 100), (BON, 0.55, 400), (BEAM, 0.65, 700)],
        (3, 16): [(PROBE, 0.05, 100), (BON, 0.05, 400), (BEAM, 0.04, 700)],
    }
)


def test_each_bin_keeps_the_upper_convex_hull_of_its_options() -> None:
    assert [(a.option, a.n) for a in hull(TABLE, 1, 16)] == [(PROBE, 4), (BON, 16)]
    two = hull(TABLE, 2, 16)
    assert [(a.option, a.n) for a in two] == [(PROBE, 4), (BON, 16), (BEAM, 16)]
    # what runs after the probe of 4: 12 of the 16 generations, 3/4 of the cell's tokens
    assert two[1].tokens == 300 and two[2].tokens == 525
    assert two[2].gain == pytest.approx(0.25)
    assert hull(TABLE, 3, 16) == (Allotment(PROBE, 4),)  # the hopeless bin: the probe alone


def test_the_most_gain_per_token_goes_first_and_the_hopeless_bin_stops_at_its_probe() -> None:
    bins = [2, 1, 3, 2]
    # 300 to problem 0, 300 to problem 3 (same gain per token: the batch order), then 225
    # for problem 0's beam search; 175 left fits neither problem 3's next step nor bin 1's
    got = allocate(bins, 1000, TABLE, 16)
    assert [(a.option, a.n) for a in got] == [(BEAM, 16), (PROBE, 4), (PROBE, 4), (BON, 16)]
    assert sum(a.tokens for a in got) == 825
    more = allocate(bins, 1500, TABLE, 16)
    assert [(a.option, a.n) for a in more] == [(BEAM, 16), (BON, 16), (PROBE, 4), (BEAM, 16)]
    assert [a.option for a in allocate(bins, 299, TABLE, 16)] == [PROBE] * 4
    assert allocate([], 1000, TABLE, 16) == []


def test_only_budgets_up_to_n_with_something_left_after_the_probe_are_bought() -> None:
    table = table_of(
        {
            (1, 4): [(PROBE, 0.4, 100), (BON, 0.9, 400), (BEAM, 0.9, 400)],
            (1, 8): [(PROBE, 0.4, 100), (BON, 0.5, 200)],
            (1, 32): [(PROBE, 0.4, 100), (BON, 0.7, 800), (BEAM, 0.8, 900)],
        }
    )
    # at N'=4 the probe of 4 leaves nothing to run: only the probe is offered
    assert allocate([1], 10_000, table, 4) == [Allotment(PROBE, 4)]
    assert [(a.option, a.n) for a in allocate([1], 10_000, table, 16)] == [(BON, 8)]
    assert [(a.option, a.n) for a in allocate([1], 10_000, table, 32)] == [(BEAM, 32)]
    # best-of-N at 8: 4 more samples, half its cell; beam search at 32: 28 of 32 (best-of-N
    # at 32 lies under the segment to it)
    assert [a.tokens for a in hull(table, 1, 32)] == [0.0, 100.0, 787.5]


def test_only_weighted_best_of_n_stands_for_the_family() -> None:
    # after the probe compute_optimal samples with scores and votes by weight whichever member
    # the table named: majority's cheap cell (no PRM tokens) is not what would run
    table = table_of(
        {
            (1, 16): [
                (PROBE, 0.4, 100),
                ("majority", 0.9, 150),
                ("best_of_n", 0.9, 400),
                (BON, 0.5, 400),
            ]
        }
    )
    assert [(a.option, a.n) for a in hull(table, 1, 16)] == [(PROBE, 4), (BON, 16)]


def test_a_table_without_the_probe_option_is_refused() -> None:
    table = table_of({(1, 16): [(BON, 0.5, 400)]})
    with pytest.raises(ConfigError, match=r"no 'probe' option in bin 1 at N=16"):
        allocate([1], 1000, table, 16)
    with pytest.raises(ConfigError, match=r"no 'probe' option"):
        expected_probe_tokens(table)
    assert expected_probe_tokens(TABLE) == 100


OPTIONS = [BON, BEAM, "dvts(width=4)", "best_of_n"]


@st.composite
def tables(draw: st.DrawFn) -> CalibrationTable:
    bins = draw(st.integers(1, 3))
    budgets = draw(st.lists(st.sampled_from([4, 8, 16]), min_size=1, max_size=3, unique=True))
    accuracy = st.floats(0, 1)
    tokens = st.floats(1, 5000)
    cells: dict[tuple[int, int], list[tuple[str, float, float]]] = {}
    for level in range(1, bins + 1):
        base = (draw(accuracy), draw(tokens))
        for n in budgets:
            chosen = draw(st.lists(st.sampled_from(OPTIONS), min_size=1, unique=True))
            cells[(level, n)] = [(PROBE, *base)] + [
                (o, draw(accuracy), draw(tokens)) for o in chosen
            ]
    return table_of(cells, probe=4)


@settings(max_examples=200, deadline=None)
@given(tables(), st.data(), st.floats(0, 50_000), st.floats(0, 50_000))
def test_allocation_properties(
    table: CalibrationTable, data: st.DataObject, budget: float, extra: float
) -> None:
    bins = data.draw(st.lists(st.integers(1, table.bins), max_size=12))
    n = max(table.budgets)
    got = allocate(bins, budget, table, n)
    assert len(got) == len(bins)
    # never above the budget (up to float rounding of the running sum)
    assert math.fsum(a.tokens for a in got) <= budget * (1 + 1e-9) + 1e-9
    for level, allotment in zip(bins, got, strict=True):
        assert allotment in hull(table, level, n)  # a point of its bin's hull
        assert allotment.n >= table.probe and allotment.tokens >= 0  # never below the probe
        assert allotment.option == PROBE or allotment.gain > 0
    # more budget never predicts less gain, and the same inputs give the same answer
    richer = allocate(bins, budget + extra, table, n)
    gain = math.fsum(a.gain for a in got)
    assert math.fsum(a.gain for a in richer) >= gain - 1e-9
    assert allocate(bins, budget, table, n) == got
