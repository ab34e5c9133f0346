"""The calibration table: quantile bins of predicted difficulty, the best option per (bin, N),
cross-validated choice (no problem picks its own strategy), oracle bins, saving and loading,
and the errors that keep a table from answering for the wrong pair or budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asynctts.calibration import (
    CalibrationTable,
    Option,
    Outcome,
    ProblemRecord,
    build_table,
    table_identity,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.search.beam_search import BeamSearch
from asynctts.search.dvts import DVTS
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


def test_identity_names_models_and_prompts_never_urls_or_keys() -> None:
    policy = Endpoint(base_url="http://user:secret@host:1/v1", model="m", api_key_env="KEY")
    prm = Endpoint(base_url="http://host:2/v1", model="r")
    identity = table_identity(policy, prm, "Solve it.")
    assert identity["policy.model"] == "m" and identity["prm.model"] == "r"
    assert identity["system_prompt"] == "Solve it."
    assert not any("host" in v or "secret" in v or "KEY" in v for v in identity.values())
    assert "prm.model" not in table_identity(policy, None, None)
