"""Spreading a batch token budget over the problems a probe left open: exact allocations on a
small table (the hull per bin, the greedy across problems, the hopeless bin, budgets above n
left out, the part of the budget's probe read), and properties over random tables with a
probe per budget (never above the budget, more budget never predicts less gain, every
allotment on its bin's hull)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.allocation import Allotment, allocate, expected_probe_tokens, hull
from asynctts.calibration import PROBE, CalibrationTable, Cell, ProbePart
from asynctts.errors import ConfigError

BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


Cells = dict[tuple[int, int], list[tuple[str, float, float]]]


def part_of(
    probe: int, cells: Cells, validated: dict[tuple[int, int], float] | None = None
) -> ProbePart:
    """A part from (bin, N) -> [(option, accuracy, tokens)] (tokens all policy tokens); each
    cell's choice is its most accurate option (ties: fewer tokens), valued at its own accuracy
    or at `validated[(bin, N)]`."""
    bins = max(level for level, _ in cells)
    ranked = {
        key: tuple(
            sorted(
                (Cell(option, acc, tokens, 0.0, 10) for option, acc, tokens in options),
                key=lambda c: (-c.accuracy, c.tokens),
            )
        )
        for key, options in cells.items()
    }
    return ProbePart(
        probe=probe,
        edges=tuple(i / bins for i in range(1, bins)),
        cells=ranked,
        validated={
            key: dataclasses.replace(
                options[0], accuracy=(validated or {}).get(key, options[0].accuracy)
            )
            for key, options in ranked.items()
        },
    )


def table_of(cells: Cells, probe: int = 4) -> CalibrationTable:
    """A table probing with `probe` at every budget."""
    budgets = sorted({n for _, n in cells})
    return table_of_parts({probe: cells}, dict.fromkeys(budgets, probe))


def table_of_parts(parts: dict[int, Cells], probes: dict[int, int]) -> CalibrationTable:
    """A table of one part per probe size; `probes`: budget -> probe size."""
    return CalibrationTable(
        identity={},
        aggregate="last",
        settle_rule="count",
        confidence=0.95,
        budgets=tuple(sorted(probes)),
        probes=probes,
        parts={k: part_of(k, cells) for k, cells in parts.items()},
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


def test_the_choice_is_priced_at_its_cross_validated_accuracy_and_others_are_not_offered() -> None:
    dvts = "dvts(width=4)"
    cells: Cells = {
        (1, 16): [(PROBE, 0.40, 100), (BON, 0.55, 400), (BEAM, 0.65, 700), (dvts, 0.60, 500)]
    }
    honest = table_of_parts({4: cells}, {16: 4})
    assert [(a.option, a.gain) for a in hull(honest, 1, 16)] == [
        (PROBE, 0.0),
        (BON, pytest.approx(0.15)),
        (BEAM, pytest.approx(0.25)),
    ]  # dvts, neither the choice nor weighted best-of-N, is never offered
    # beam search won the bin by luck: on problems it was not chosen on it scores 0.50
    lucky = dataclasses.replace(honest, parts={4: part_of(4, cells, validated={(1, 16): 0.50})})
    assert [a.option for a in hull(lucky, 1, 16)] == [PROBE, BON]


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
        expected_probe_tokens(table, 16)
    assert expected_probe_tokens(TABLE, 16) == 100


def test_a_budget_reads_the_part_of_its_own_probe() -> None:
    # N=8 probes with 2 samples, N=16 with 4: each part prices the rest after its own probe
    table = table_of_parts(
        {
            2: {
                (1, 8): [(PROBE, 0.3, 50), (BON, 0.6, 400)],
                (1, 16): [(PROBE, 0.3, 50), (BON, 0.7, 800)],
            },
            4: {
                (1, 8): [(PROBE, 0.4, 100), (BON, 0.5, 400)],
                (1, 16): [(PROBE, 0.4, 100), (BON, 0.8, 800)],
            },
        },
        probes={8: 2, 16: 4},
    )
    assert [expected_probe_tokens(table, n) for n in (8, 12, 16, 64)] == [50, 50, 100, 100]
    # n=8: after a probe of 2, best-of-N at 8 draws 6 more: 6/8 of its cell, 0.3 over the probe
    [probe, more] = hull(table, 1, 8)
    assert probe == Allotment(PROBE, 2)
    assert (more.option, more.n, more.tokens) == (BON, 8, 300)
    assert more.gain == pytest.approx(0.3)
    # n=16: after a probe of 4, best-of-N at 8 draws 4 more (0.1 for 200 tokens) and lies
    # under the segment to best-of-N at 16 (12 more: 0.4 for 600)
    assert [(a.option, a.n, a.tokens) for a in hull(table, 1, 16)] == [
        (PROBE, 4, 0.0),
        (BON, 16, 600.0),
    ]
    assert allocate([1, 1], 300, table, 8) == [more, probe]
    assert [a.n for a in allocate([1], 10_000, table, 16)] == [16]
    assert allocate([1], 599, table, 16) == [Allotment(PROBE, 4)]


OPTIONS = [BON, BEAM, "dvts(width=4)", "best_of_n"]


@st.composite
def tables(draw: st.DrawFn) -> CalibrationTable:
    bins = draw(st.integers(1, 3))
    budgets = draw(st.lists(st.sampled_from([4, 8, 16]), min_size=1, max_size=3, unique=True))
    probes = {n: draw(st.sampled_from([k for k in (1, 2, 4, 8) if k <= n])) for n in budgets}
    accuracy = st.floats(0, 1)
    tokens = st.floats(1, 5000)
    parts: dict[int, Cells] = {}
    for k in set(probes.values()):
        cells = parts.setdefault(k, {})
        for level in range(1, bins + 1):
            base = (draw(accuracy), draw(tokens))
            for n in (n for n in budgets if n >= k):
                chosen = draw(st.lists(st.sampled_from(OPTIONS), min_size=1, unique=True))
                cells[(level, n)] = [(PROBE, *base)] + [
                    (o, draw(accuracy), draw(tokens)) for o in chosen
                ]
    return table_of_parts(parts, probes)


@settings(max_examples=200, deadline=None)
@given(tables(), st.data(), st.floats(0, 50_000), st.floats(0, 50_000))
def test_allocation_properties(
    table: CalibrationTable, data: st.DataObject, budget: float, extra: float
) -> None:
    n = data.draw(st.integers(min(table.budgets), 20))
    bins = data.draw(st.lists(st.integers(1, table.part_for(n).bins), max_size=12))
    got = allocate(bins, budget, table, n)
    assert len(got) == len(bins)
    # never above the budget (up to float rounding of the running sum)
    assert math.fsum(a.tokens for a in got) <= budget * (1 + 1e-9) + 1e-9
    for level, allotment in zip(bins, got, strict=True):
        assert allotment in hull(table, level, n)  # a point of its bin's hull
        assert table.probe_for(n) <= allotment.n <= n  # never below the probe, nor above n
        assert allotment.tokens >= 0
        assert allotment.option == PROBE or allotment.gain > 0
    # more budget never predicts less gain, and the same inputs give the same answer
    richer = allocate(bins, budget + extra, table, n)
    gain = math.fsum(a.gain for a in got)
    assert math.fsum(a.gain for a in richer) >= gain - 1e-9
    assert allocate(bins, budget, table, n) == got
