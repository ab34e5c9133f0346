"""The calibration table: quantile bins of predicted difficulty, the best option per (bin, N),
cross-validated choice (no problem picks its own strategy), oracle bins, one part per probe
size (the probe follows the budget), saving and loading, and the errors that keep a table
from answering for the wrong pair or budget."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.calibration import (
    FORMAT,
    PROBE,
    CalibrationTable,
    Option,
    OracleChoice,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
    default_probe,
    probe_sizes,
    table_identity,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.search.beam_search import BeamSearch
from asynctts.search.dvts import DVTS
from asynctts.search.particle_filter import ParticleFilter
from asynctts.search.weighted_best_of_n import WeightedBestOfN

IDENTITY = {"policy.model": "p", "prm.model": "r"}
BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


def stopping_after(k: int) -> Outcome:
    """Stopping after a probe of k samples: wrong here, and cheaper than any option."""
    return Outcome(False, policy_tokens=10.0 * k, prm_tokens=5.0 * k)


def record(
    i: int,
    predicted: float | Mapping[int, float],
    right: set[str],
    budgets: Sequence[int] = (16,),
) -> ProblemRecord:
    """A problem whose probe of 8 (or of each size in `predicted`) reads `predicted`; the
    options in `right` solve it at every budget."""
    readings = {8: predicted} if isinstance(predicted, float) else predicted
    return ProblemRecord(
        problem_id=f"p{i}",
        probes={k: ProbeRecord(value, 0.5, stopping_after(k)) for k, value in readings.items()},
        pass_at_1=readings[max(readings)],
        outcomes={
            key: outcome
            for n in budgets
            for key, outcome in (
                ((BON, n), Outcome(BON in right, policy_tokens=100, prm_tokens=50)),
                ((BEAM, n), Outcome(BEAM in right, policy_tokens=300, prm_tokens=400)),
            )
        },
    )


def two_kinds(count: int = 20) -> list[ProblemRecord]:
    """Easy problems (high predicted value) that best-of-N solves and beam search does not,
    hard ones the other way round."""
    easy = [record(i, 0.8 + i / 1000, {BON}) for i in range(count)]
    hard = [record(count + i, 0.2 + i / 1000, {BEAM}) for i in range(count)]
    return easy + hard


def ranked(table: CalibrationTable, probe: int, level: int, n: int) -> list[tuple[str, float]]:
    return [(c.option, c.accuracy) for c in table.parts[probe].cells[(level, n)]]


def test_options_name_themselves_and_build_their_strategy() -> None:
    assert Option.parse(BEAM) == Option("beam_search", 4)
    assert Option("dvts", 8).label == "dvts(width=8)"
    assert Option.parse("probe").build("last") is None  # stop at the probe
    assert isinstance(Option.parse(BON).build("last"), WeightedBestOfN)
    beam = Option.parse(BEAM).build("min")
    assert isinstance(beam, BeamSearch) and (beam.width, beam.aggregate) == (4, "min")
    assert beam.max_depth == 40
    shallow = Option.parse("dvts(width=2)").build("last", max_depth=5)
    assert isinstance(shallow, DVTS) and (shallow.width, shallow.max_depth) == (2, 5)
    # a search without a width: the aggregate and the depth cap alone
    filtering = Option.parse("particle_filter").build("min", max_depth=5)
    assert isinstance(filtering, ParticleFilter)
    assert (filtering.aggregate, filtering.max_depth) == ("min", 5)
    with pytest.raises(ConfigError, match=r"option 'particle_filter' width=4"):
        Option("particle_filter", 4)
    with pytest.raises(ConfigError, match=r"option 'beam_search' width=None"):
        Option("beam_search")
    with pytest.raises(ConfigError, match=r"write NAME or NAME\(width=W\)"):
        Option.parse("dvts(width=x)")


def test_each_bin_gets_the_option_that_wins_there() -> None:
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2, folds=5)
    assert table.probes == {16: 8} and set(table.parts) == {8}
    part = table.part_for(16)
    assert part.probe == 8 and part.bins == 2 and part.budgets == (16,)
    assert part.bin_of(0.9) == 1 and part.bin_of(0.1) == 2  # bin 1: easiest
    # the loser is kept, ranked by accuracy then tokens; "probe" (stop there) always competes
    assert ranked(table, 8, 1, 16) == [(BON, 1.0), (PROBE, 0.0), (BEAM, 0.0)]
    assert ranked(table, 8, 2, 16) == [(BEAM, 1.0), (PROBE, 0.0), (BON, 0.0)]
    assert part.cells[(2, 16)][0].tokens == 700
    assert part.cells[(1, 16)][1].tokens == 120  # the probe of 8's own outcome
    decision = table.choose(0.85, 64)  # a larger budget uses the largest calibrated one
    assert (decision.bin, decision.label) == (1, BON)
    assert isinstance(decision.strategy, WeightedBestOfN)
    [check] = table.validation
    # choosing per bin is right everywhere; either option alone only on its half
    assert check.predicted == 1.0 and check.oracle == 1.0
    assert check.fixed == {BEAM: 0.5, BON: 0.5, PROBE: 0.0}


def test_cross_validation_never_lets_a_problem_pick_its_own_strategy() -> None:
    # one bin, three problems, one a fold: held out, the problem best-of-N alone solves
    # leaves beam search ahead (2 of 2) and the one beam search alone solves leaves best-of-N
    # ahead, so both are lost; the one both solve leaves a tie that fewer tokens settle.
    # In-sample either option would score 2/3.
    records = [
        record(0, 0.5, {BON}),
        record(1, 0.5, {BEAM}),
        record(2, 0.5, {BON, BEAM}),
    ]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=1, folds=3)
    [check] = table.validation
    assert table.parts[8].cells[(1, 16)][0].option == BON  # tie on accuracy 2/3: fewer tokens
    assert check.predicted == pytest.approx(1 / 3)
    assert check.fixed == {BEAM: pytest.approx(2 / 3), BON: pytest.approx(2 / 3), PROBE: 0.0}
    # the choice keeps its in-sample cell (tokens) but is valued as choosing is worth
    [validated] = table.parts[8].validated.values()
    assert validated == dataclasses.replace(
        table.parts[8].cells[(1, 16)][0], accuracy=pytest.approx(1 / 3)
    )


@settings(max_examples=40, deadline=None)
@given(
    rights=st.lists(st.sets(st.sampled_from([BON, BEAM])), min_size=6, max_size=30),
    values=st.lists(st.floats(0.0, 1.0), min_size=30, max_size=30),
    bins=st.integers(1, 3),
    folds=st.integers(2, 5),
    seed=st.integers(0, 100),
)
def test_the_choices_valued_per_bin_add_up_to_the_cross_validated_accuracy(
    rights: list[set[str]], values: list[float], bins: int, folds: int, seed: int
) -> None:
    records = [record(i, values[i], right) for i, right in enumerate(rights)]
    try:
        table = build_table(
            records, identity=IDENTITY, probe=8, budgets=[16], bins=bins, folds=folds, seed=seed
        )
    except ConfigError:
        return  # too few problems for the bins
    part = table.parts[8]
    total = sum(c.accuracy * c.problems for c in part.validated.values())
    assert total / len(records) == pytest.approx(table.validation[0].predicted)
    for key, chosen in part.validated.items():
        assert (chosen.option, chosen.tokens) == (
            part.cells[key][0].option,
            part.cells[key][0].tokens,
        )


def test_a_table_survives_saving_and_loading(tmp_path: Path) -> None:
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2, max_depth=7)
    path = tmp_path / "calibration.json"
    table.save(path)
    assert CalibrationTable.load(path) == table
    assert json.loads(path.read_text())["format"] == FORMAT == 2
    # its tree searches run with the depth cap they were calibrated with
    chosen = table.choose(0.1, 16).strategy
    assert isinstance(chosen, BeamSearch) and chosen.max_depth == 7
    text = table.summary()
    assert "budgets [16], probe sizes N=16: 8 (bin 1 easiest)" in text
    assert f"      8    1    16  {BON:<24}   100.0       150        20" in text
    assert "N=16 (probe 8): predicted bins 100.0, oracle bins 100.0" in text


def test_bad_tables_are_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    with pytest.raises(ConfigError, match=r"t.json: cannot read it"):
        CalibrationTable.load(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"t.json: not JSON"):
        CalibrationTable.load(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match=r"t.json: not a table .*TypeError: a JSON list"):
        CalibrationTable.load(path)
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2)
    document = table.to_dict()
    document["parts"][0]["cells"] = document["parts"][0]["cells"][:1]
    path.write_text(json.dumps(document))
    missing = r"t.json: not a table .*ValueError: probe 8: no cell for \(bin, N\) \[\(2, 16\)\]"
    with pytest.raises(ConfigError, match=missing):
        CalibrationTable.load(path)
    document = table.to_dict()
    document["probes"] = [{"n": 16, "probe": 4}]  # a probe size without its part
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"ValueError: no probe part for budget N=16 \(probe 4\)"):
        CalibrationTable.load(path)


def test_a_table_of_the_earlier_layout_is_refused_with_the_command_that_rebuilds_it(
    tmp_path: Path,
) -> None:
    # format 1 kept one probe for every budget, and its cells at the top level
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2)
    document = {**table.to_dict(), "format": 1, "probe": 8, "edges": [0.8]}
    del document["parts"], document["probes"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as refused:
        CalibrationTable.load(path)
    assert str(refused.value) == (
        f"calibration table {path}: written by an earlier asynctts (one probe size for every"
        " budget); rebuild it with `asynctts calibrate --resume --out RUN_DIR` on its run"
        " directory (no request is repeated)"
    )
    path.write_text(json.dumps({**table.to_dict(), "format": 3}))
    with pytest.raises(ConfigError, match=r"ValueError: format 3, expected 2"):
        CalibrationTable.load(path)


def test_a_table_answers_only_for_its_pair_and_budgets() -> None:
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2)
    with pytest.raises(ConfigError, match=r"prm.model: table 'r', this run 'other'"):
        table.check_identity({"policy.model": "p", "prm.model": "other"})
    table.check_identity(dict(IDENTITY))
    below = r"budget n=8 is below the calibration table's smallest budget 16"
    with pytest.raises(ConfigError, match=below):
        table.choose(0.5, 8)
    with pytest.raises(ConfigError, match=below):
        table.probe_for(8)


def test_settings_that_cannot_make_a_table() -> None:
    records = two_kinds(3)
    with pytest.raises(ConfigError, match=r"6 calibration problems cannot fill 7 bins"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=7)
    with pytest.raises(ConfigError, match=r"probe of 32 samples at budget N=16: need 1 <= probe"):
        build_table(records, identity=IDENTITY, probe=32, budgets=[16])
    with pytest.raises(ConfigError, match=r"records without a reading of a probe of \[4\] sam"):
        build_table(records, identity=IDENTITY, probe=4, budgets=[16])
    with pytest.raises(ConfigError, match=r"folds=1: need >= 2"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], folds=1)
    with pytest.raises(ConfigError, match=r"settle rule 'vote'"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], settle_rule="vote")
    with pytest.raises(ConfigError, match=r"no budget to calibrate"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[])
    # "probe" competes everywhere, but a budget where nothing else ran is no choice at all
    with pytest.raises(ConfigError, match=r"budget N=64: no option has an outcome"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16, 64], bins=2)


def test_ties_merge_bins_instead_of_leaving_one_empty() -> None:
    values = [0.5] * 6 + [0.9, 0.95]  # quantiles of 4 bins: 0.5, 0.5, 0.9
    records = [record(i, v, {BON}) for i, v in enumerate(values)]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=4, folds=2)
    part = table.parts[8]
    assert part.edges == (0.9,) and part.bins == 2
    assert {level for level, _ in part.cells} == {1, 2}
    assert "note: probe 8: 2 difficulty bins, not 4" in table.summary()
    assert part.bin_of(0.5) == 2 and part.bin_of(0.9) == 1


def per_budget_records() -> list[ProblemRecord]:
    """Best-of-N solves the 20 easy problems, beam search the 20 hard ones, at N = 4, 8, 16.
    A probe of 8 reads them apart (easy 0.8.., hard 0.2..); a probe of 2 reads in another
    range (easy 0.6.., hard 0.4..) and misreads 5 of each kind as the other."""
    budgets = (4, 8, 16)
    easy = [
        record(i, {2: (0.3 if i >= 15 else 0.6) + i / 1000, 8: 0.8 + i / 1000}, {BON}, budgets)
        for i in range(20)
    ]
    hard = [
        record(
            20 + i, {2: (0.7 if i >= 15 else 0.4) + i / 1000, 8: 0.2 + i / 1000}, {BEAM}, budgets
        )
        for i in range(20)
    ]
    return [
        dataclasses.replace(r, pass_at_1=0.9 if i < len(easy) else 0.1)
        for i, r in enumerate([*easy, *hard])
    ]


def test_the_probe_follows_the_budget() -> None:
    table = build_table(
        per_budget_records(),
        identity=IDENTITY,
        probe={4: 2, 8: 2, 16: 8},
        budgets=[16, 4, 8],
        bins=2,
    )
    assert table.budgets == (4, 8, 16) and table.probes == {4: 2, 8: 2, 16: 8}
    assert set(table.parts) == {2, 8} and table.has_oracle
    # a solve's budget picks the calibrated budget at or below it, and that budget's probe
    assert [table.probe_for(n) for n in (4, 7, 8, 15, 16, 100)] == [2, 2, 2, 2, 8, 8]
    assert table.part_for(12) is table.parts[2] and table.part_for(64) is table.parts[8]
    # each part bins its own probe's reading, and holds cells at every budget >= its probe
    two, eight = table.parts[2], table.parts[8]
    assert (two.probe, two.edges, two.budgets) == (2, (0.6,), (4, 8, 16))
    assert (eight.probe, eight.edges, eight.budgets) == (8, (0.8,), (8, 16))
    assert {key for key in eight.cells} == {(1, 8), (2, 8), (1, 16), (2, 16)}
    # the probe of 2 mixes the kinds (15 + 5 a bin); its "probe" cell is a probe of 2's
    assert ranked(table, 2, 1, 4) == [(BON, 0.75), (BEAM, 0.25), (PROBE, 0.0)]
    assert [c.tokens for c in two.cells[(1, 4)] if c.option == PROBE] == [30.0]
    assert [c.tokens for c in eight.cells[(1, 16)] if c.option == PROBE] == [120.0]
    assert ranked(table, 8, 2, 8) == [(BEAM, 1.0), (PROBE, 0.0), (BON, 0.0)]
    # the same reading, another budget: another part, another bin, another choice
    assert (table.choose(0.65, 4).bin, table.choose(0.65, 4).label) == (1, BON)
    assert (table.choose(0.65, 12).bin, table.choose(0.65, 12).label) == (1, BON)
    assert (table.choose(0.65, 16).bin, table.choose(0.65, 16).label) == (2, BEAM)
    assert isinstance(table.choose(0.65, 16).strategy, BeamSearch)
    # each budget is validated with the part its solves use
    assert [(v.budget, v.predicted, v.oracle) for v in table.validation] == [
        (4, 0.75, 1.0),
        (8, 0.75, 1.0),
        (16, 1.0, 1.0),
    ]
    assert all(v.fixed == {BEAM: 0.5, BON: 0.5, PROBE: 0.0} for v in table.validation)
    text = table.summary()
    assert "probe sizes N=4: 2, N=8: 2, N=16: 8 (bin 1 easiest)" in text
    assert f"      2    1     4  {BON:<24}    75.0       150        20" in text
    assert f"      8    2     8  {BEAM:<24}   100.0       700        20" in text
    assert "N=8 (probe 2): predicted bins 75.0, oracle bins 100.0" in text
    assert "N=16 (probe 8): predicted bins 100.0, oracle bins 100.0" in text
    assert "oracle (probe 8): 2 bins of the true pass@1 (bin 1 highest), edges [0.9]" in text
    # the oracle's chooser follows the budget's part too
    chooser = OracleChoice(table, 0.1)
    assert [chooser.probe_for(n) for n in (4, 16)] == [2, 8]
    assert chooser.choose(0.99, 4).label == chooser.choose(0.99, 16).label == BEAM


def test_a_table_of_per_budget_probes_survives_saving_and_loading(tmp_path: Path) -> None:
    records = per_budget_records()
    table = build_table(
        records, identity=IDENTITY, probe={4: 2, 8: 2, 16: 8}, budgets=[4, 8, 16], bins=2
    )
    path = tmp_path / "calibration.json"
    table.save(path)
    loaded = CalibrationTable.load(path)
    assert loaded == table
    assert loaded.choose(0.65, 8).label == BON and loaded.choose(0.65, 16).label == BEAM
    document = json.loads(path.read_text())
    assert document["probes"] == [{"n": 4, "probe": 2}, {"n": 8, "probe": 2}, {"n": 16, "probe": 8}]
    assert [(p["probe"], p["edges"]) for p in document["parts"]] == [(2, [0.6]), (8, [0.8])]
    # the part of a probe must hold cells at every budget >= its probe
    eight = document["parts"][1]
    eight["cells"] = [row for row in eight["cells"] if row["n"] != 8]
    path.write_text(json.dumps(document))
    with pytest.raises(
        ConfigError, match=r"probe 8: no cell for \(bin, N\) \[\(1, 8\), \(2, 8\)\]"
    ):
        CalibrationTable.load(path)
    # the default probe: a quarter of each budget, within 2 to 8
    default = build_table(records, identity=IDENTITY, budgets=[8], bins=2)
    assert default.probes == {8: 2} and set(default.parts) == {2}


def test_the_default_probe_is_a_quarter_of_the_budget_from_2_to_8() -> None:
    sizes = {n: default_probe(n) for n in (1, 2, 3, 4, 8, 16, 20, 32, 64, 256)}
    assert sizes == {1: 1, 2: 2, 3: 2, 4: 2, 8: 2, 16: 4, 20: 5, 32: 8, 64: 8, 256: 8}


def test_probe_sizes_per_budget_and_their_errors() -> None:
    assert probe_sizes(None, [4, 16, 64]) == {4: 2, 16: 4, 64: 8}
    assert probe_sizes(3, [4, 16]) == {4: 3, 16: 3}
    assert probe_sizes({4: 4, 16: 2, 99: 1}, [4, 16]) == {4: 4, 16: 2}  # others unused
    with pytest.raises(ConfigError, match=r"no probe size for budgets \[16, 64\]"):
        probe_sizes({4: 2}, [4, 16, 64])
    with pytest.raises(ConfigError) as above:
        probe_sizes({4: 8, 16: 8}, [4, 16])
    assert str(above.value) == (
        "probe of 8 samples at budget N=4: need 1 <= probe <= N (the probe's samples are the"
        " first of the budget)"
    )
    with pytest.raises(ConfigError, match=r"probe of 0 samples at budget N=4"):
        probe_sizes(0, [4])


def oracle_records() -> list[ProblemRecord]:
    """One predicted difficulty for all (one predicted bin), three kinds by the true pass@1:
    best-of-N alone right on the highest two, beam search alone on the middle two, neither
    on the lowest two."""
    kinds = [(0.9, {BON}), (0.8, {BON}), (0.5, {BEAM}), (0.4, {BEAM}), (0.1, set()), (0.0, set())]
    return [
        dataclasses.replace(record(i, 0.5, right), pass_at_1=pass_at_1)
        for i, (pass_at_1, right) in enumerate(kinds)
    ]


def test_oracle_bins_are_quantiles_of_pass_at_1_with_their_own_cells(tmp_path: Path) -> None:
    table = build_table(oracle_records(), identity=IDENTITY, probe=8, budgets=[16], bins=3)
    part = table.parts[8]
    assert part.bins == 1 and part.cells[(1, 16)][0].option == BON  # 2 of 6 each: tokens
    assert part.oracle is not None and table.has_oracle
    assert part.oracle.edges == (0.4, 0.8) and part.oracle.bins == 3
    ranks = {
        key: [(c.option, c.accuracy, c.problems) for c in cells]
        for key, cells in part.oracle.cells.items()
    }
    assert ranks == {
        (1, 16): [(BON, 1.0, 2), (PROBE, 0.0, 2), (BEAM, 0.0, 2)],
        (2, 16): [(BEAM, 1.0, 2), (PROBE, 0.0, 2), (BON, 0.0, 2)],
        # a tie on accuracy: fewer tokens first (the hopeless bin stops at the probe)
        (3, 16): [(PROBE, 0.0, 2), (BON, 0.0, 2), (BEAM, 0.0, 2)],
    }
    # bin 1 holds the highest pass@1; a value on an edge goes to the easier bin
    assert [table.choose_oracle(p, 16).bin for p in (1.0, 0.8, 0.79, 0.4, 0.39, 0.0)] == [
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    decision = table.choose_oracle(0.45, 64)  # a larger budget: the largest calibrated cell
    assert (decision.bin, decision.label) == (2, BEAM)
    assert isinstance(decision.strategy, BeamSearch) and decision.strategy.width == 4
    assert table.choose_oracle(0.0, 16).strategy is None  # "probe": stop there
    # the oracle's chooser answers by the known pass@1 whatever the probe read
    chooser = OracleChoice(table, 0.45)
    assert chooser.choose(0.99, 16) == decision
    assert (chooser.probe_for(20), chooser.aggregate, chooser.budget_for(20)) == (8, "last", 16)
    with pytest.raises(ConfigError, match=r"pass@1 1.5 is outside \[0, 1\]"):
        OracleChoice(table, 1.5)

    path = tmp_path / "calibration.json"
    table.save(path)
    assert CalibrationTable.load(path) == table
    assert json.loads(path.read_text())["parts"][0]["oracle"]["edges"] == [0.4, 0.8]
    assert (
        "oracle (probe 8): 3 bins of the true pass@1 (bin 1 highest), edges [0.4, 0.8];"
        f" choices:\n  N=16: 1 {BON}, 2 {BEAM}, 3 {PROBE}\n"
    ) in table.summary()
    document = table.to_dict()
    document["parts"][0]["oracle"]["cells"] = document["parts"][0]["oracle"]["cells"][:2]
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"probe 8: no oracle cell for \(bin, N\) \[\(3, 16\)\]"):
        CalibrationTable.load(path)


def test_a_table_without_pass_at_1_has_no_oracle(tmp_path: Path) -> None:
    records = [dataclasses.replace(r, pass_at_1=None) for r in oracle_records()]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=3)
    assert table.parts[8].oracle is None and not table.has_oracle
    assert table.validation[0].oracle is None
    assert "oracle" not in table.to_dict()["parts"][0] and "oracle (" not in table.summary()
    # a table saved without the oracle bins loads and has no oracle
    with_oracle = build_table(oracle_records(), identity=IDENTITY, probe=8, budgets=[16], bins=3)
    document = with_oracle.to_dict()
    del document["parts"][0]["oracle"]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(document))
    loaded = CalibrationTable.load(path)
    assert loaded == dataclasses.replace(
        with_oracle, parts={8: dataclasses.replace(with_oracle.parts[8], oracle=None)}
    )
    missing = r"this calibration table has no oracle bins .*run `asynctts calibrate` again"
    with pytest.raises(ConfigError, match=missing):
        loaded.choose_oracle(0.5, 16)
    with pytest.raises(ConfigError, match=missing):
        OracleChoice(loaded, 0.5)


def test_identity_names_models_and_prompts_never_urls_or_keys() -> None:
    policy = Endpoint(base_url="http://user:secret@host:1/v1", model="m", api_key_env="KEY")
    prm = Endpoint(base_url="http://host:2/v1", model="r")
    identity = table_identity(policy, prm, "Solve it.")
    assert identity["policy.model"] == "m" and identity["prm.model"] == "r"
    assert identity["system_prompt"] == "Solve it."
    assert not any("host" in v or "secret" in v or "KEY" in v for v in identity.values())
    assert "prm.model" not in table_identity(policy, None, None)
