"""The calibration table: quantile bins of predicted difficulty, the best option per (bin, N),
cross-validated choice (no problem picks its own strategy), oracle bins, saving and loading,
and the errors that keep a table from answering for the wrong pair or budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from asynctts.calibration import (
    CalibrationTable,
    Option,
    OracleChoice,
    Outcome,
    ProblemRecord,
    build_table,
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


def record(i: int, predicted: float, right: set[str], n: int = 16) -> ProblemRecord:
    return ProblemRecord(
        problem_id=f"p{i}",
        predicted=predicted,
        agreement=0.5,
        pass_at_1=predicted,
        outcomes={
            (BON, n): Outcome(BON in right, policy_tokens=100, prm_tokens=50),
            (BEAM, n): Outcome(BEAM in right, policy_tokens=300, prm_tokens=400),
        },
    )


def two_kinds(count: int = 20) -> list[ProblemRecord]:
    """Easy problems (high predicted value) that best-of-N solves and beam search does not,
    hard ones the other way round."""
    easy = [record(i, 0.8 + i / 1000, {BON}) for i in range(count)]
    hard = [record(count + i, 0.2 + i / 1000, {BEAM}) for i in range(count)]
    return easy + hard


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
    assert table.bins == 2
    assert table.bin_of(0.9) == 1 and table.bin_of(0.1) == 2  # bin 1: easiest
    assert table.cells[(1, 16)][0].option == BON
    assert table.cells[(2, 16)][0].option == BEAM
    assert table.cells[(1, 16)][0].accuracy == 1.0
    assert table.cells[(1, 16)][1].accuracy == 0.0  # the loser is kept, ranked second
    assert table.cells[(2, 16)][0].tokens == 700
    decision = table.choose(0.85, 64)  # a larger budget uses the largest calibrated one
    assert (decision.bin, decision.label) == (1, BON)
    assert isinstance(decision.strategy, WeightedBestOfN)
    [check] = table.validation
    # choosing per bin is right everywhere; either option alone only on its half
    assert check.predicted == 1.0 and check.oracle == 1.0
    assert check.fixed == {BEAM: 0.5, BON: 0.5}


def test_cross_validation_never_lets_a_problem_pick_its_own_strategy() -> None:
    # one bin; each option wins on exactly one problem, different ones: whichever problem is
    # held out, the others tie and the tie goes to fewer tokens (best-of-N), so the problem
    # only beam search solves is lost under cross-validation though the in-sample pick is 2/3
    records = [
        record(0, 0.5, {BON}),
        record(1, 0.5, {BEAM}),
        record(2, 0.5, {BON, BEAM}),
    ]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=1, folds=3)
    [check] = table.validation
    assert table.cells[(1, 16)][0].option == BON  # tie on accuracy 2/3: fewer tokens
    assert check.predicted == pytest.approx(1 / 3)
    assert check.fixed == {BEAM: pytest.approx(2 / 3), BON: pytest.approx(2 / 3)}


def test_a_table_survives_saving_and_loading(tmp_path: Path) -> None:
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2, max_depth=7)
    path = tmp_path / "calibration.json"
    table.save(path)
    assert CalibrationTable.load(path) == table
    # its tree searches run with the depth cap they were calibrated with
    chosen = table.choose(0.1, 16).strategy
    assert isinstance(chosen, BeamSearch) and chosen.max_depth == 7
    text = table.summary()
    assert "bin 1 easiest" in text
    assert f"    1    16  {BON:<24}   100.0       150        20" in text
    assert "predicted bins 100.0, oracle bins 100.0" in text


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
    document["cells"] = document["cells"][:1]
    path.write_text(json.dumps(document))
    missing = r"t.json: not a table .*ValueError: no cell for \(bin, N\) \[\(2, 16\)\]"
    with pytest.raises(ConfigError, match=missing):
        CalibrationTable.load(path)


def test_a_table_answers_only_for_its_pair_and_budgets() -> None:
    table = build_table(two_kinds(), identity=IDENTITY, probe=8, budgets=[16], bins=2)
    with pytest.raises(ConfigError, match=r"prm.model: table 'r', this run 'other'"):
        table.check_identity({"policy.model": "p", "prm.model": "other"})
    table.check_identity(dict(IDENTITY))
    with pytest.raises(ConfigError, match=r"budget n=8 is below the calibration table's"):
        table.choose(0.5, 8)


def test_settings_that_cannot_make_a_table() -> None:
    records = two_kinds(3)
    with pytest.raises(ConfigError, match=r"6 calibration problems cannot fill 7 bins"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=7)
    with pytest.raises(ConfigError, match=r"each must be >= the probe of 32 samples"):
        build_table(records, identity=IDENTITY, probe=32, budgets=[16])
    with pytest.raises(ConfigError, match=r"folds=1: need >= 2"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], folds=1)
    with pytest.raises(ConfigError, match=r"settle rule 'vote'"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16], settle_rule="vote")
    with pytest.raises(ConfigError, match=r"budget N=64: no option has an outcome"):
        build_table(records, identity=IDENTITY, probe=8, budgets=[16, 64], bins=2)


def test_ties_merge_bins_instead_of_leaving_one_empty() -> None:
    values = [0.5] * 6 + [0.9, 0.95]  # quantiles of 4 bins: 0.5, 0.5, 0.9
    records = [record(i, v, {BON}) for i, v in enumerate(values)]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=4, folds=2)
    assert table.edges == (0.9,) and table.bins == 2
    assert {level for level, _ in table.cells} == {1, 2}
    assert "2 difficulty bins, not 4" in table.summary()
    assert table.bin_of(0.5) == 2 and table.bin_of(0.9) == 1


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
    assert table.bins == 1 and table.cells[(1, 16)][0].option == BON  # 2 of 6 each: tokens
    assert table.oracle is not None
    assert table.oracle.edges == (0.4, 0.8) and table.oracle.bins == 3
    ranked = {
        key: [(c.option, c.accuracy, c.problems) for c in cells]
        for key, cells in table.oracle.cells.items()
    }
    assert ranked == {
        (1, 16): [(BON, 1.0, 2), (BEAM, 0.0, 2)],
        (2, 16): [(BEAM, 1.0, 2), (BON, 0.0, 2)],
        (3, 16): [(BON, 0.0, 2), (BEAM, 0.0, 2)],  # a tie on accuracy: fewer tokens first
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
    # the oracle's chooser answers by the known pass@1 whatever the probe read
    chooser = OracleChoice(table, 0.45)
    assert chooser.choose(0.99, 16) == decision
    assert (chooser.probe, chooser.aggregate, chooser.budget_for(20)) == (8, "last", 16)
    with pytest.raises(ConfigError, match=r"pass@1 1.5 is outside \[0, 1\]"):
        OracleChoice(table, 1.5)

    path = tmp_path / "calibration.json"
    table.save(path)
    assert CalibrationTable.load(path) == table
    assert json.loads(path.read_text())["oracle"]["edges"] == [0.4, 0.8]
    assert (
        "oracle: 3 bins of the true pass@1 (bin 1 highest), edges [0.4, 0.8]; choices:\n"
        f"  N=16: 1 {BON}, 2 {BEAM}, 3 {BON}\n"
    ) in table.summary()
    document = table.to_dict()
    document["oracle"]["cells"] = document["oracle"]["cells"][:2]
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"no oracle cell for \(bin, N\) \[\(3, 16\)\]"):
        CalibrationTable.load(path)


def test_a_table_without_pass_at_1_has_no_oracle(tmp_path: Path) -> None:
    records = [dataclasses.replace(r, pass_at_1=None) for r in oracle_records()]
    table = build_table(records, identity=IDENTITY, probe=8, budgets=[16], bins=3)
    assert table.oracle is None and table.validation[0].oracle is None
    assert "oracle" not in table.to_dict() and "oracle:" not in table.summary()
    # a table saved without the part (as before it existed) loads and has no oracle
    with_oracle = build_table(oracle_records(), identity=IDENTITY, probe=8, budgets=[16], bins=3)
    document = with_oracle.to_dict()
    del document["oracle"]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(document))
    loaded = CalibrationTable.load(path)
    assert loaded == dataclasses.replace(with_oracle, oracle=None)
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
