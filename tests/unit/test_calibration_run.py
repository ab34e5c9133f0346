"""asynctts.eval.calibration_run and `asynctts calibrate`'s checks: folds of the data (disjoint,
covering, stable, seeded), the grid of per-job widths beside eval's unchanged keys, the records
read from a hand-made journal, and bad input refused before any request
(a listening socket that must never see a connection proves it)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from asynctts.calibration import CalibrationTable, Outcome, ProbeRecord, ProblemRecord, build_table
from asynctts.cli import build_parser, main
from asynctts.cli.calibrate import prepare_calibration
from asynctts.errors import ConfigError
from asynctts.eval.calibration_run import (
    Refusal,
    RunSettings,
    plan_grid,
    records_of,
    tree_widths,
    write_calibration,
)
from asynctts.eval.data import Fold, fold_of, load_dataset, select
from asynctts.eval.plan import Line, StrategySettings, plan_jobs
from asynctts.eval.report import load_run

MATH500 = load_dataset().problems


def test_folds_are_disjoint_covering_stable_and_seeded() -> None:
    for count in (2, 3, 5):
        parts = [{p.id for p in select(MATH500, fold=Fold(i, count))} for i in range(1, count + 1)]
        assert sum(len(part) for part in parts) == len(MATH500) == 500
        assert set().union(*parts) == {p.id for p in MATH500}
        assert all(len(part) > 500 / count / 2 for part in parts)  # none starved
    # a function of the id and the seed alone: these values hold on every machine and run
    assert [fold_of(p.id, 2, 0) for p in MATH500[:10]] == [2, 2, 2, 2, 2, 1, 2, 2, 1, 1]
    assert [fold_of(p.id, 2, 1) for p in MATH500[:10]] == [2, 1, 2, 2, 1, 2, 1, 1, 1, 1]
    assert sum(fold_of(p.id, 2, 0) == 1 for p in MATH500) == 262
    # the same problem keeps its fold whatever else is selected
    level_2 = select(MATH500, levels=[2], fold=Fold(1, 2))
    assert {p.id for p in level_2} == {
        p.id for p in select(MATH500, fold=Fold(1, 2)) if p.level == 2
    }


def test_a_fold_applies_after_the_filters_and_before_shuffle_and_limit() -> None:
    first = select(MATH500, limit=5, fold=Fold(2, 2))
    assert [p.id for p in first] == [p.id for p in MATH500[:5]]  # the first five are in fold 2
    assert all(fold_of(p.id, 2, 0) == 2 for p in first)
    shuffled = select(MATH500, limit=20, fold=Fold(1, 3), shuffle=True, seed=4)
    assert len(shuffled) == 20 and all(fold_of(p.id, 3, 4) == 1 for p in shuffled)
    assert str(Fold.parse(" 2/5 ")) == "2/5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/2", r"fold 3/2: need I/K with K >= 2 and 1 <= I <= K"),
        ("0/2", r"fold 0/2: need I/K"),
        ("1/1", r"fold 1/1: need I/K with K >= 2"),
        ("1-2", r"fold '1-2': write I/K, e.g. 1/2"),
        ("a/2", r"fold 'a/2': write I/K"),
        ("-1/2", r"fold '-1/2': write I/K"),
    ],
)
def test_bad_folds_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Fold.parse(text)


def test_a_fold_holding_none_of_the_selection_is_named() -> None:
    one = [p for p in MATH500 if fold_of(p.id, 2, 0) == 1][:1]
    with pytest.raises(ConfigError, match=r"fold 2/2 \(seed 0\) holds none of the 1 problems"):
        select(one, fold=Fold(2, 2))


def test_the_grid_runs_each_tree_search_at_width_4_and_sqrt_n() -> None:
    assert [tree_widths(n) for n in (1, 4, 16, 64, 100)] == [(1, 4), (2, 4), (4,), (4, 8), (4, 10)]
    grid = plan_grid([64, 4, 16])
    assert [job.key for job in grid.jobs] == [
        "weighted_best_of_n@64",
        "beam_search[width=2]@4",
        "beam_search@4",
        "beam_search@16",
        "beam_search@64",
        "beam_search[width=8]@64",
        "dvts[width=2]@4",
        "dvts@4",
        "dvts@16",
        "dvts@64",
        "dvts[width=8]@64",
        # searches without a width, once per budget
        "particle_filter@4",
        "particle_filter@16",
        "particle_filter@64",
        "rebase@4",
        "rebase@16",
        "rebase@64",
        "revise@16",
        "revise@64",
    ]
    # revision needs 1 + 2 x 2 generations for one solution and its revisions
    assert grid.refused == (
        Refusal(
            "revise",
            4,
            "n=4: one solution and its revisions take up to 1 + continuations * rounds"
            " = 1 + 2 * 2 = 5 generations",
        ),
    )
    family = grid.jobs[0]
    assert family.points == (4, 16, 64) and family.grade_candidates
    assert family.identity()["grade_candidates"] is True
    filtering = grid.jobs[-6]
    assert filtering.identity()["settings"]["max_depth"] == 40
    assert [line.label for line in filtering.lines if line.primary] == ["particle_filter"]
    wide = grid.jobs[-9]
    assert wide.strategy.width == 8 and wide.n == 64  # type: ignore[attr-defined]
    assert wide.lines == (
        Line("dvts[width=8]/majority", "dvts", "majority", False),
        Line("dvts[width=8]/best", "dvts", "best", False),
        Line("dvts[width=8]", "dvts", "weighted", True),
    )
    assert wide.identity()["settings"] == {"width": 8, "max_depth": 40, "aggregate": "last"}
    assert "grade_candidates" not in wide.identity()


def test_the_grid_lists_what_a_strategy_refuses_and_runs_the_rest() -> None:
    grid = plan_grid([8, 2], StrategySettings(aggregate="min"))
    assert [job.key for job in grid.jobs] == [
        "weighted_best_of_n@8",
        "beam_search[width=1]@2",
        "beam_search@8",
        "dvts[width=1]@2",
        "dvts@8",
        "particle_filter@2",
        "particle_filter@8",
        "rebase@2",
        "rebase@8",
        "revise@8",
    ]
    assert grid.refused == (
        Refusal("beam_search(width=4)", 2, "n=2 is not a multiple of width=4"),
        Refusal("beam_search(width=3)", 8, "n=8 is not a multiple of width=3"),
        Refusal("dvts(width=4)", 2, "n=2 is not a multiple of width=4"),
        Refusal("dvts(width=3)", 8, "n=8 is not a multiple of width=3"),
        Refusal(
            "revise",
            2,
            "n=2: one solution and its revisions take up to 1 + continuations * rounds"
            " = 1 + 2 * 2 = 5 generations",
        ),
    )
    assert str(grid.refused[1]) == "beam_search(width=3) at N=8: n=8 is not a multiple of width=3"
    assert {job.strategy.aggregate for job in grid.jobs} == {"min"}
    with pytest.raises(ConfigError, match=r"no budget given"):
        plan_grid([])


def test_eval_keeps_its_keys_and_identities() -> None:
    dvts, family = plan_jobs(
        ["dvts", "weighted_best_of_n"], [8], settings=StrategySettings(width=8)
    )[::-1]
    assert (family.key, dvts.key) == ("weighted_best_of_n@8", "dvts@8")
    assert dvts.identity() == {
        "key": "dvts@8",
        "strategy": "dvts",
        "n": 8,
        "settings": {"width": 8, "max_depth": 40, "aggregate": "last"},
        "points": [8],
        "lines": [
            {"label": "dvts/majority", "selection": "majority", "primary": False},
            {"label": "dvts/best", "selection": "best", "primary": False},
            {"label": "dvts", "selection": "weighted", "primary": True},
        ],
        "all_candidates": True,
    }
    assert "grade_candidates" not in family.identity()


def grades(*correct: bool, points: tuple[int, ...]) -> list[dict[str, Any]]:
    return [
        {"n": n, "answer": "2" if ok else "3", "correct": ok, "reason": None}
        for n, ok in zip(points, correct, strict=True)
    ]


def failed(points: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"n": n, "answer": None, "correct": False, "reason": "error"} for n in points]


def result(job: str, pid: str, **fields: Any) -> dict[str, Any]:
    return {"type": "result", "job": job, "problem_id": pid, "error": None, **fields}


def write_journal(run_dir: Path, jobs: list[dict[str, Any]], events: list[dict[str, Any]]) -> Path:
    run_dir.mkdir()
    lines = [{"type": "config", "identity": {"jobs": jobs}, "info": {}}, *events]
    (run_dir / "journal.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    return run_dir


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A calibration of two problems at N in {1, 2}: the family and beam search of width 1 at
    N=1 with a depth cap of 6. Problem "a" was solved, "b" failed as a whole."""
    grid = plan_grid([1, 2], StrategySettings(max_depth=6))
    family, beam = grid.jobs[0], grid.jobs[1]
    assert (family.key, beam.key) == ("weighted_best_of_n@2", "beam_search[width=1]@1")
    candidates = [
        {
            "index": 0,
            "steps": ["Add.\n\n", "So \\boxed{2}."],
            "scores": [0.5, 0.75],
            "finish": "eos",
            "group": 0,
            "value": 0.75,
            "answer": "2",
        },
        {
            "index": 1,
            "steps": ["\\boxed{3}"],
            "scores": [0.25],
            "finish": "eos",
            "group": 1,
            "value": 0.25,
            "answer": "3",
        },
    ]
    events = [
        result(
            family.key,
            "a",
            grades={
                "majority": grades(True, False, points=(1, 2)),
                "best": grades(False, True, points=(1, 2)),
                "weighted": grades(True, True, points=(1, 2)),
            },
            usage={"completion_tokens": 100.0, "prm_tokens": 40.0, "requests": 3},
            candidate_correct=0.5,
            answer_verdicts={"2": True, "3": False},
            solution={"candidates": candidates},
        ),
        result(
            family.key,
            "b",
            error="SolveFailed: every branch was lost",
            grades={s: failed((1, 2)) for s in ("majority", "best", "weighted")},
            usage={"completion_tokens": 10.0, "prm_tokens": 0.0},
            candidate_correct=0.0,
            answer_verdicts={},
            solution={"candidates": []},
        ),
        result(
            beam.key,
            "a",
            grades={s: grades(False, points=(1,)) for s in ("majority", "best", "weighted")},
            usage={"completion_tokens": 99.0, "prm_tokens": 99.0},
        ),
        # redone: the newer record replaces the older
        result(
            beam.key,
            "a",
            grades={
                "majority": grades(False, points=(1,)),
                "best": grades(False, points=(1,)),
                "weighted": grades(True, points=(1,)),
            },
            usage={"completion_tokens": 30.0, "prm_tokens": 12.0},
        ),
        result(
            beam.key,
            "b",
            error="SolveFailed: every branch was lost",
            grades={s: failed((1,)) for s in ("majority", "best", "weighted")},
            usage={"completion_tokens": 0.0, "prm_tokens": 0.0},
        ),
    ]
    return write_journal(tmp_path / "run", [family.identity(), beam.identity()], events)


def test_records_from_a_journal(journal: Path) -> None:
    (a, b), settings = records_of(load_run(journal), ["a", "b"], probes={1, 2})
    assert settings == RunSettings(aggregate="last", max_depth=6)
    assert (a.problem_id, a.pass_at_1) == ("a", 0.5)
    assert a.probes == {
        # a probe of 1 is the first sample alone (not the second, answering 3): its last
        # step's score, it agrees with itself, and stopping there answers 2 (right) at half
        # the family's spend (it ran at N=2)
        1: ProbeRecord(predicted=0.75, agreement=1.0, outcome=Outcome(True, 50.0, 20.0)),
        # a probe of 2 reads both: the mean value, a split, and the weighted vote picks 2
        2: ProbeRecord(predicted=0.5, agreement=0.5, outcome=Outcome(True, 100.0, 40.0)),
    }
    assert a.outcomes == {
        # the family ran at N=2: at N=1 half its tokens; majority spends no PRM tokens
        ("majority", 1): Outcome(True, 50.0, 0.0),
        ("majority", 2): Outcome(False, 100.0, 0.0),
        ("best_of_n", 1): Outcome(False, 50.0, 20.0),
        ("best_of_n", 2): Outcome(True, 100.0, 40.0),
        ("weighted_best_of_n", 1): Outcome(True, 50.0, 20.0),
        ("weighted_best_of_n", 2): Outcome(True, 100.0, 40.0),
        # beam search's own rule (weighted), its own tokens, from the newer record
        ("beam_search(width=1)", 1): Outcome(True, 30.0, 12.0),
    }
    assert b.pass_at_1 == 0.0
    assert b.probes == {  # failed: the hardest reading, and no answer to stop with
        1: ProbeRecord(predicted=0.0, agreement=0.0, outcome=Outcome(False, 5.0, 0.0)),
        2: ProbeRecord(predicted=0.0, agreement=0.0, outcome=Outcome(False, 10.0, 0.0)),
    }
    assert b.outcomes[("weighted_best_of_n", 2)] == Outcome(False, 10.0, 0.0)
    assert b.outcomes[("majority", 1)] == Outcome(False, 5.0, 0.0)
    assert b.outcomes[("beam_search(width=1)", 1)] == Outcome(False, 0.0, 0.0)
    # only the probe sizes asked are read
    (only,), _ = records_of(load_run(journal), ["a"], probes=[2])
    assert set(only.probes) == {2} and only.outcomes == a.outcomes


def test_records_of_an_unfinished_or_foreign_run_are_refused(journal: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"2 results missing from .* \(e\.g\. \['weighted_best_of_n@2/c',"
    ):
        records_of(load_run(journal), ["a", "c"], probes={1})
    with pytest.raises(
        ConfigError, match=r"^a probe of 3 samples is above the largest budget N=2$"
    ):
        records_of(load_run(journal), ["a"], probes={1, 3})
    (eval_job,) = plan_jobs(["weighted_best_of_n"], [2])
    foreign = write_journal(tmp_path / "eval", [eval_job.identity()], [])
    with pytest.raises(ConfigError, match=r"is not a calibration run"):
        records_of(load_run(foreign), ["a"], probes={1})


def test_the_table_is_written_with_one_plot_row_per_probe_size(tmp_path: Path) -> None:
    records = [
        ProblemRecord(
            problem_id=f"p{i}",
            probes={k: ProbeRecord(i / 10, 0.5, Outcome(False, k, 0.0)) for k in (2, 8)},
            pass_at_1=i / 10,
            outcomes={
                (option, n): Outcome((option == "best_of_n") == (i >= 3), 10.0, 5.0)
                for option in ("best_of_n", "dvts(width=4)")
                for n in (4, 16)
            },
        )
        for i in range(6)
    ]
    table = build_table(records, identity={}, probe={4: 2, 16: 8}, budgets=[4, 16], bins=3)
    text = write_calibration(tmp_path, table, notes=["problems: 6"])
    assert text == table.summary() + "problems: 6\n"
    assert (tmp_path / "calibration.txt").read_text(encoding="utf-8") == text
    assert CalibrationTable.load(tmp_path / "calibration.json") == table
    png = (tmp_path / "calibration.png").read_bytes()
    # 150 dpi: 3.2 inches a bin and 2.5 for the legend across, 4.2 inches a probe size down
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png.startswith(b"\x89PNG") and (width, height) == (1815, 1260)


def calibrate_args(sock: socket.socket, out: Path, *extra: str) -> list[str]:
    port = sock.getsockname()[1]
    return [
        "calibrate",
        "--policy-url",
        f"http://127.0.0.1:{port}/v1",
        "--policy-model",
        "m",
        "--prm-model",
        "p",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--n", "4", "16", "--probe", "8"],
            "probe of 8 samples at budget N=4: need 1 <= probe <= N (the probe's samples are"
            " the first of the budget)",
        ),
        (["--n", "4", "16", "--probe", "5", "2"], "probe of 5 samples at budget N=4: need"),
        (
            ["--n", "4", "16", "64", "--probe", "2", "4"],
            "--probe [2, 4]: give one size for every budget, or one per --n [4, 16, 64]",
        ),
        (["--n", "4", "4", "--probe", "2", "3"], "--n [4, 4] repeats a budget: give one --probe"),
        (["--folds", "1"], "--folds 1: need >= 2 (cross-validation within each bin)"),
        (["--fold", "3/2"], "fold 3/2: need I/K with K >= 2 and 1 <= I <= K"),
        (["--confidence", "0.4"], "--confidence 0.4: need 0.5 < confidence < 1"),
        (["--limit", "3"], "3 problems cannot fill --bins 5: select more problems"),
        (["--levels", "9"], "no problem matches levels=[9]"),
        (["--retry-errors"], "--retry-errors only applies with --resume"),
    ],
)
def test_bad_input_fails_before_any_request(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(calibrate_args(listener, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("asynctts calibrate: error: ")
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing written either


@pytest.mark.parametrize(
    ("extra", "probes"),
    [
        ([], {4: 2, 16: 4, 64: 8}),  # a quarter of each budget, 2 to 8
        (["--probe", "3"], {4: 3, 16: 3, 64: 3}),
        (["--n", "16", "4", "--probe", "4", "1"], {16: 4, 4: 1}),  # in the order of --n
        (["--n", "4", "4", "--probe", "4"], {4: 4}),
    ],
)
def test_the_probe_is_one_size_or_one_per_budget(
    listener: socket.socket, tmp_path: Path, extra: list[str], probes: dict[int, int]
) -> None:
    args = build_parser().parse_args(calibrate_args(listener, tmp_path / "run", *extra))
    assert prepare_calibration(args).probes == probes
    assert not (tmp_path / "run").exists()


def test_calibrate_needs_a_prm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["calibrate", "--policy-url", "http://127.0.0.1:9/v1", "--policy-model", "m"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "calibrate needs a PRM: give --prm-model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bins", "0"], "asynctts calibrate: error: argument --bins: 0 is not >= 1"),
        (
            ["--settle", "vote"],
            "asynctts calibrate: error: argument --settle: invalid choice: 'vote'",
        ),
        (["--probe", "0"], "asynctts calibrate: error: argument --probe: 0 is not >= 1"),
        (["--max-depth", "0"], "asynctts calibrate: error: argument --max-depth: 0 is not >= 1"),
        # a table names a tree search by its width: the grid sets it, so it is no flag
        (["--width", "8"], "asynctts: error: unrecognized arguments: --width 8"),
    ],
)
def test_malformed_flags_exit_2(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(calibrate_args(listener, tmp_path / "run", *extra))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err


def test_eval_takes_a_fold_too(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asynctts.cli import build_parser, prepare_eval

    port = listener.getsockname()[1]
    argv = ["eval", "--policy-url", f"http://127.0.0.1:{port}/v1", "--policy-model", "m"]
    argv += ["--out", str(tmp_path / "run"), "--strategy", "majority", "--n", "4"]
    half = prepare_eval(build_parser().parse_args([*argv, "--fold", "2/2", "--seed", "1"]))
    assert len(half.plan.problems) == 500 - sum(fold_of(p.id, 2, 1) == 1 for p in MATH500)
    assert all(fold_of(p.id, 2, 1) == 2 for p in half.plan.problems)
    assert half.plan.selection["fold"] == "2/2" and half.plan.selection["fold_seed"] == 1
    whole = prepare_eval(build_parser().parse_args(argv))
    assert "fold" not in whole.plan.selection  # earlier journals keep their identity
    assert main([*argv, "--fold", "3/2"]) == 2
    assert "asynctts eval: error: fold 3/2: need I/K" in capsys.readouterr().err


def test_the_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["calibrate", "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in text and "default: False" not in text
    for words in (
        "budgets (generations per problem) the table covers (default: [4, 16, 64])",
        "one K for every budget, or one per --n in its order, each at most its budget"
        " (default: a quarter of each budget, 2 to 8)",
        "over the problems (default: 5)",
        "within each bin (>= 2) (default: 5)",
        "summed PRM values (default: weighted)",
        "reaches this (default: 0.9)",
        "with the same --seed share no problem (default: every problem)",
    ):
        assert words in text
