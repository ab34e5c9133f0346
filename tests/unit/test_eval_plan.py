"""asynctts.eval.plan: which runs an evaluation makes, its checks before any request (the
calibration table of compute_optimal included), and a run identity without URLs or secrets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson
import pytest

from asynctts.backends.context import Sampling
from asynctts.calibration import (
    CalibrationTable,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
    table_identity,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.eval.data import DataSet, Problem
from asynctts.eval.plan import (
    ORACLE_SKIPPED,
    EvalPlan,
    Line,
    StrategySettings,
    calibration_tables,
    oracle_skipped,
    parse_strategy,
    plan_jobs,
    table_sha256,
)
from asynctts.search.compute_optimal import ComputeOptimal


def test_parse_strategy() -> None:
    assert parse_strategy("majority") == ("majority", None)
    assert parse_strategy(" dvts@16,4,8 ") == ("dvts", (16, 4, 8))
    for bad, message in [
        ("dvts@", r"write NAME or NAME@N1,N2"),
        ("dvts@4,,8", r"write NAME or NAME@N1,N2"),
        ("dvts@4 8", r"write NAME or NAME@N1,N2"),
        ("Majority", r"write NAME or NAME@N1,N2"),
        ("beam@4", r"unknown strategy 'beam'; choose one of \['beam_search', "),
        ("dvts@0,4", r"'dvts@0,4': budgets must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_strategy(bad)


def test_the_best_of_n_family_runs_once_at_the_largest_budget() -> None:
    jobs = plan_jobs(["majority", "weighted_best_of_n@2,32"], [1, 4, 16])
    assert len(jobs) == 1
    (job,) = jobs
    assert job.key == "weighted_best_of_n@32"
    assert job.points == (1, 2, 4, 16, 32)
    assert not job.all_candidates
    assert job.lines == (
        Line("majority", "majority", "majority", True),
        Line("best_of_n", "best_of_n", "best", True),
        Line("weighted_best_of_n", "weighted_best_of_n", "weighted", True),
    )
    assert job.headline.label == "weighted_best_of_n"


def test_a_family_without_a_prm_member_runs_and_reports_majority_only() -> None:
    (job,) = plan_jobs(["majority"], [1, 2, 8])
    assert job.key == "majority@8"
    assert job.lines == (Line("majority", "majority", "majority", True),)
    assert not job.strategy.needs_prm
    (job,) = plan_jobs(["best_of_n", "majority"], [4])
    assert job.key == "best_of_n@4" and job.headline.label == "best_of_n"


def test_tree_searches_run_once_per_budget() -> None:
    jobs = plan_jobs(["dvts@8,4", "beam_search", "majority"], [4, 16])
    assert [j.key for j in jobs] == [
        "majority@16",
        "dvts@4",
        "dvts@8",
        "beam_search@4",
        "beam_search@16",
    ]
    dvts = jobs[1]
    assert dvts.points == (4,) and dvts.all_candidates
    assert [(line.label, line.primary) for line in dvts.lines] == [
        ("dvts/majority", False),
        ("dvts/best", False),
        ("dvts", True),
    ]


def test_strategy_settings_reach_the_strategies_that_have_them() -> None:
    settings = StrategySettings(width=2, max_depth=7, aggregate="min")
    dvts, family = plan_jobs(["dvts@2", "best_of_n@4"], None, settings=settings)[::-1]
    assert family.identity()["settings"] == {"aggregate": "min", "per_request": 16}
    assert dvts.identity()["settings"] == {"width": 2, "max_depth": 7, "aggregate": "min"}
    with pytest.raises(ConfigError, match=r"strategy 'dvts' with \{'width': 0\}: width=0"):
        plan_jobs(["dvts@4"], None, settings=StrategySettings(width=0))


@pytest.mark.parametrize(
    ("specs", "budgets", "message"),
    [
        ([], [4], r"no strategy given"),
        (
            ["dvts"],
            [1, 2, 4],
            r"strategy 'dvts' cannot use budget n=1: n=1 is not a multiple of"
            r" width=4; drop it from --n or give dvts@N1,N2,\.\.\.",
        ),
        (["beam_search@6"], None, r"'beam_search' cannot use budget n=6"),
        (["majority"], None, r"strategy 'majority' has no budget: pass --n or majority@N1,N2"),
        (["majority", "majority@4"], [2], r"'majority' is given twice"),
        (["majority"], [0], r"budgets \[0\] must be >= 1"),
        (["nope"], [4], r"unknown strategy 'nope'"),
    ],
)
def test_bad_plans_are_named(specs: list[str], budgets: list[int] | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_jobs(specs, budgets)


def make_plan(jobs: list[str], problems: list[Problem]) -> EvalPlan:
    data = DataSet(tuple(problems), "data.jsonl", "ab" * 32)
    return EvalPlan(
        data=data,
        problems=tuple(problems),
        selection={"limit": None, "levels": None, "subjects": None, "shuffle": False},
        jobs=tuple(plan_jobs(jobs, [4])),
        sampling=Sampling(),
        seed=3,
        system_prompt="Be brief.",
    )


PROBLEMS = [Problem(id="a", problem="What is 1+1?", answer="2", level=1)]


def test_every_problem_is_checked_against_every_job() -> None:
    make_plan(["majority"], PROBLEMS).check(has_prm=False)
    with pytest.raises(
        ConfigError, match=r"weighted_best_of_n@4: strategy 'weighted_best_of_n' needs a PRM"
    ):
        make_plan(["weighted_best_of_n"], PROBLEMS).check(has_prm=False)
    empty = [*PROBLEMS, Problem(id="b", problem="   ", answer="1")]
    with pytest.raises(ConfigError, match=r"problem 'b', majority@4: problem is empty"):
        make_plan(["majority"], empty).check(has_prm=False)
    with pytest.raises(ConfigError, match="no problems selected"):
        make_plan(["majority"], []).check(has_prm=False)


def test_the_identity_holds_what_decides_results_and_no_url_or_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-very-secret")
    policy = Endpoint(
        base_url="http://alice:hunter2@10.0.0.1:8000/v1?qsecret=zzz9",
        model="m",
        api_key_env="MY_KEY",
        prompt_format="{system} {problem}",
        max_in_flight=7,
    )
    config = make_plan(["majority"], PROBLEMS).config(policy=policy, prm=None, info={"x": 1})
    dumped = orjson.dumps(config).decode()
    for secret in ("sk-very-secret", "alice", "hunter2", "qsecret", "zzz9"):
        assert secret not in dumped
    identity = config["identity"]
    assert identity["endpoints"] == {
        "policy": {
            "model": "m",
            "mode": "completions",
            "scoring": "pooling",
            "tokenizer": "m",
            "prompt_format": "{system} {problem}",
            "step_tag": "<extra_0>",
            "prompt_logprobs": 20,
            "max_n_per_request": 64,
        },
        "prm": None,
    }
    assert identity["seed"] == 3
    assert identity["data"] == {"sha256": "ab" * 32}
    assert identity["selection"]["problems"] == 1
    assert identity["sampling"] == {"temperature": 0.8, "top_p": 1.0, "max_tokens": 2048}
    assert identity["jobs"][0]["key"] == "majority@4"
    info = config["info"]
    assert info["endpoints"]["policy"]["base_url"] == "http://10.0.0.1:8000/v1"
    assert info["endpoints"]["policy"]["api_key_env"] == "MY_KEY"
    assert info["endpoints"]["policy"]["max_in_flight"] == 7
    assert info["x"] == 1 and info["data_source"] == "data.jsonl"


POLICY = Endpoint(base_url="http://127.0.0.1:8000/v1", model="pol", prompt_format="{problem}")
PRM = Endpoint(base_url="http://127.0.0.1:8001/v1", model="prm", prompt_format="{solution}")


def calibration(
    *,
    probe: int = 4,
    budgets: tuple[int, ...] = (8, 16),
    system_prompt: str = "Be brief.",
    oracle: bool = False,
) -> CalibrationTable:
    """Two bins: weighted best-of-N right on the easy problems, DVTS on the hard ones (with
    `oracle`, each problem's pass@1 is its predicted value: oracle bins alike)."""
    records = [
        ProblemRecord(
            problem_id=f"p{i}",
            # stopping after the probe is wrong everywhere: never the choice
            probes={probe: ProbeRecord(value, 0.5, Outcome(False, 1.0, 1.0))},
            pass_at_1=value if oracle else None,
            outcomes={
                (option, n): Outcome(
                    option == ("weighted_best_of_n" if value > 0.5 else "dvts(width=4)"), 1.0, 1.0
                )
                for option in ("weighted_best_of_n", "dvts(width=4)")
                for n in budgets
            },
        )
        for i, value in enumerate([0.2, 0.3, 0.6, 0.7])
    ]
    return build_table(
        records,
        identity=table_identity(POLICY, PRM, system_prompt),
        probe=probe,
        budgets=budgets,
        bins=2,
        folds=2,
    )


def test_compute_optimal_runs_once_per_budget_beside_the_others() -> None:
    table = calibration()
    assert parse_strategy("compute_optimal@8,16") == ("compute_optimal", (8, 16))
    jobs = plan_jobs(["weighted_best_of_n", "compute_optimal"], [8, 16], calibration=table)
    assert [j.key for j in jobs] == [
        "weighted_best_of_n@16",
        "compute_optimal@8",
        "compute_optimal@16",
    ]
    job = jobs[1]
    assert isinstance(job.strategy, ComputeOptimal) and job.strategy.table is table
    assert job.points == (8,) and job.all_candidates  # the vote over probe and choice alike
    assert [(line.label, line.primary) for line in job.lines] == [
        ("compute_optimal/majority", False),
        ("compute_optimal/best", False),
        ("compute_optimal", True),
    ]
    assert job.headline.selection == "weighted"
    identity = job.identity()
    assert identity["settings"] == {
        "early_exit": True,
        "per_request": 16,
        "table_sha256": table_sha256(table),
    }
    assert orjson.loads(orjson.dumps(identity)) == identity
    assert calibration_tables(jobs) == {"compute_optimal@8": table, "compute_optimal@16": table}
    # per_request reaches it; the other knobs are its table's business
    (tuned,) = plan_jobs(
        ["compute_optimal@8"],
        None,
        settings=StrategySettings(per_request=4, width=2, aggregate="min"),
        calibration=table,
    )
    assert tuned.identity()["settings"]["per_request"] == 4
    assert tuned.strategy.aggregate == table.aggregate == "last"


def test_the_oracle_line_follows_the_family_when_the_table_has_oracle_bins() -> None:
    table = calibration(oracle=True)
    jobs = plan_jobs(["weighted_best_of_n", "compute_optimal"], [8, 16], calibration=table)
    assert [j.key for j in jobs] == [
        "weighted_best_of_n@16",
        "compute_optimal@8",
        "compute_optimal@16",
        "compute_optimal/oracle@8",
        "compute_optimal/oracle@16",
    ]
    family, predicted, oracle = jobs[0], jobs[1], jobs[3]
    assert family.grade_candidates and family.identity()["grade_candidates"] is True
    assert oracle.strategy is predicted.strategy  # per problem its chooser is the runner's
    assert (oracle.n, oracle.points, oracle.oracle_from) == (8, (8,), "weighted_best_of_n@16")
    assert [(line.label, line.strategy, line.primary) for line in oracle.lines] == [
        ("compute_optimal/oracle/majority", "compute_optimal", False),
        ("compute_optimal/oracle/best", "compute_optimal", False),
        ("compute_optimal/oracle", "compute_optimal", True),
    ]
    identity = oracle.identity()
    assert identity["oracle_from"] == "weighted_best_of_n@16"
    assert identity["settings"] == predicted.identity()["settings"]
    assert "oracle_from" not in predicted.identity()
    assert set(calibration_tables(jobs)) == {j.key for j in jobs[1:]}  # all checked alike
    assert oracle_skipped(jobs) is None


@pytest.mark.parametrize(
    ("specs", "table", "budget_tokens", "reason"),
    [
        (
            ["dvts", "compute_optimal"],
            calibration(oracle=True),
            None,
            "oracle bins need the best-of-N family in the run: add weighted_best_of_n",
        ),
        (
            ["majority", "compute_optimal"],
            calibration(oracle=True),
            1000.0,
            "the oracle line is not run with a batch token budget (--budget-tokens)",
        ),
        (
            ["majority", "compute_optimal"],
            calibration(),
            None,
            "the calibration table has no oracle bins (its calibration graded no pass@1, or an"
            " older asynctts wrote it): run `asynctts calibrate` again for the oracle line",
        ),
    ],
)
def test_without_an_oracle_line_the_plan_says_why(
    specs: list[str], table: CalibrationTable, budget_tokens: float | None, reason: str
) -> None:
    jobs = plan_jobs(specs, [8], calibration=table, budget_tokens=budget_tokens)
    assert [j.key for j in jobs if j.oracle_from is not None] == []
    # the family's identity is that of a run without compute_optimal
    assert all("grade_candidates" not in j.identity() for j in jobs)
    assert oracle_skipped(jobs) == reason
    plan = dataclasses.replace(make_plan(["majority"], PROBLEMS), jobs=tuple(jobs))
    assert plan.config(policy=POLICY, prm=PRM)["info"][ORACLE_SKIPPED] == reason
    # nothing to say without compute_optimal
    plain = make_plan(["majority", "dvts"], PROBLEMS)
    assert oracle_skipped(plain.jobs) is None
    assert ORACLE_SKIPPED not in plain.config(policy=POLICY, prm=PRM)["info"]


def test_a_table_is_read_from_its_path_and_known_by_its_content(tmp_path: Path) -> None:
    table = calibration()
    table.save(tmp_path / "calibration.json")
    (job,) = plan_jobs(["compute_optimal"], [8], calibration=tmp_path / "calibration.json")
    assert isinstance(job.strategy, ComputeOptimal)
    assert job.strategy.table == table
    digest = table_sha256(table)
    assert len(digest) == 64 and table_sha256(job.strategy.table) == digest
    reindented = json.dumps(json.loads((tmp_path / "calibration.json").read_text()), indent=4)
    (tmp_path / "same.json").write_text(reindented, encoding="utf-8")
    assert table_sha256(CalibrationTable.load(tmp_path / "same.json")) == digest
    assert table_sha256(dataclasses.replace(table, confidence=0.99)) != digest
    assert table_sha256(calibration(budgets=(8,))) != digest


@pytest.mark.parametrize(
    ("specs", "budgets", "table", "message"),
    [
        (
            ["compute_optimal"],
            [8],
            None,
            r"strategy 'compute_optimal' needs a calibration table: pass --calibration TABLE",
        ),
        (
            ["dvts", "majority"],
            [8],
            "table",
            r"a calibration table is only for strategy 'compute_optimal', which is not among"
            r" the strategies \['dvts', 'majority'\]",
        ),
        (
            ["compute_optimal"],
            [2, 8],
            "table",
            r"strategy 'compute_optimal' cannot use budget n=2: budget n=2 is below the"
            r" calibration table's smallest budget 8; calibrate with a smaller --n or raise n;"
            r" drop it from --n",
        ),
        (
            ["compute_optimal@16,6"],
            None,
            "table",
            r"strategy 'compute_optimal' cannot use budget n=6: budget n=6 is below the"
            r" calibration table's smallest budget 8",
        ),
        (["compute_optimal"], [8], "missing", r"calibration table \S+missing.json: cannot read"),
        (["compute_optimal"], [8], "bad", r"calibration table \S+bad.json: not JSON"),
    ],
)
def test_compute_optimal_and_its_table_go_together(
    tmp_path: Path, specs: list[str], budgets: list[int] | None, table: str | None, message: str
) -> None:
    (tmp_path / "bad.json").write_text("{oops", encoding="utf-8")
    given: CalibrationTable | Path | None = {
        None: None,
        "table": calibration(),
        "missing": tmp_path / "missing.json",
        "bad": tmp_path / "bad.json",
    }[table]
    with pytest.raises(ConfigError, match=message):
        plan_jobs(specs, budgets, calibration=given)


def test_prompted_revision_is_refused_a_prompt_format_policy_before_the_run() -> None:
    data = DataSet(tuple(PROBLEMS), "data.jsonl", "ab" * 32)
    settings = StrategySettings(revision="prompted", critique="Check it.")
    plan = EvalPlan(
        data=data,
        problems=tuple(PROBLEMS),
        selection={},
        jobs=tuple(plan_jobs(["majority", "revise"], [5], settings=settings)),
        sampling=Sampling(),
        seed=3,
        system_prompt="Be brief.",
    )
    revise = plan.jobs[1].strategy
    assert (getattr(revise, "revision", None), getattr(revise, "critique", None)) == (
        "prompted",
        "Check it.",
    )
    with pytest.raises(
        ConfigError,
        match=r"^revise@5: strategy 'revise' with revision='prompted' sends earlier turns to"
        r" policy endpoint http://127.0.0.1:8000/v1, but the policy's prompt_format '\{problem\}'",
    ):
        plan.check_endpoints(POLICY, PRM)
    plan.check_endpoints(dataclasses.replace(POLICY, mode="chat"), PRM)


def test_tables_are_checked_against_the_endpoints_and_system_prompt() -> None:
    def plan_with(table: CalibrationTable) -> EvalPlan:
        data = DataSet(tuple(PROBLEMS), "data.jsonl", "ab" * 32)
        return EvalPlan(
            data=data,
            problems=tuple(PROBLEMS),
            selection={},
            jobs=tuple(plan_jobs(["majority", "compute_optimal"], [8], calibration=table)),
            sampling=Sampling(),
            seed=3,
            system_prompt="Be brief.",
        )

    fitting = plan_with(calibration())
    fitting.check(has_prm=True)
    fitting.check_endpoints(POLICY, PRM)
    with pytest.raises(ConfigError, match=r"compute_optimal@8: strategy 'compute_optimal' needs"):
        fitting.check(has_prm=False)
    other_prompt = plan_with(calibration(system_prompt="Think hard."))
    other_prompt.check(has_prm=True)  # nothing there knows the endpoints
    with pytest.raises(
        ConfigError,
        match=r"^compute_optimal@8: the calibration table was made for another policy, PRM or"
        r" prompt format \(system_prompt: table 'Think hard.', this run 'Be brief.'\); run"
        r" `asynctts calibrate` for this one$",
    ):
        other_prompt.check_endpoints(POLICY, PRM)
    with pytest.raises(ConfigError, match=r"prm.model: table 'prm', this run 'other-prm'"):
        fitting.check_endpoints(POLICY, dataclasses.replace(PRM, model="other-prm"))
