"""asynctts.eval.report: exact aggregation of a journal (per line and n, per level and
subject, costs, wall time over killed sessions, bootstrap intervals, spend per line and n,
compute_optimal's decisions per difficulty bin), the text tables, comparison and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from asynctts.calibration import (
    CalibrationTable,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
)
from asynctts.errors import ConfigError
from asynctts.eval.bootstrap import accuracy_interval
from asynctts.eval.journal import Journal
from asynctts.eval.plan import plan_jobs, table_sha256
from asynctts.eval.report import (
    format_comparison,
    format_report,
    load_run,
    plot_accuracy,
    summarize,
    write_report,
)

T, F = True, False


def grades(points: list[int], verdicts: list[bool], reasons: list[str | None] | None = None):
    reasons = reasons or [None] * len(points)
    return [
        {"n": n, "answer": None if r in ("no_answer", "error") else "x", "correct": c, "reason": r}
        for n, c, r in zip(points, verdicts, reasons, strict=True)
    ]


def family_result(pid: str, level: int, subject: str, t: float, **by_rule: Any) -> dict[str, Any]:
    index = int(pid[1:])
    return {
        "type": "result",
        "job": "weighted_best_of_n@4",
        "problem_id": pid,
        "level": level,
        "subject": subject,
        "error": by_rule.pop("error", None),
        "grades": {rule: grades([1, 2, 4], *spec) for rule, spec in by_rule.items()},
        "usage": {
            "completion_tokens": 100.0 * index,
            "prompt_tokens": 10.0,
            "prm_tokens": 50.0,
            "requests": 2,
            "retries": index % 2,
            "wall_s": 0.5 * index,
        },
        "lost": index - 1,
        "t": t,
    }


def dvts_result(pid: str, correct: bool, t: float) -> dict[str, Any]:
    return {
        "type": "result",
        "job": "dvts@4",
        "problem_id": pid,
        "level": 1,
        "subject": "Algebra",
        "error": None,
        "grades": {rule: grades([4], [correct]) for rule in ("majority", "best", "weighted")},
        "usage": {"completion_tokens": 40.0, "requests": 5, "retries": 0, "wall_s": 1.0},
        "lost": 0,
        "t": t,
    }


def write_run(run_dir: Path) -> None:
    jobs = plan_jobs(["weighted_best_of_n", "dvts@4"], [1, 2, 4])
    assert [j.key for j in jobs] == ["weighted_best_of_n@4", "dvts@4"]
    config = {
        "identity": {
            "jobs": [j.identity() for j in jobs],
            "selection": {"problems": 4},
            "data": {"sha256": "ff" * 32},
            "seed": 0,
            "endpoints": {"policy": {"model": "pol"}, "prm": {"model": "prm"}},
        },
        "info": {"data_source": "math500.jsonl"},
    }
    every = ([T, T, T],)
    events: list[dict[str, Any]] = [
        {"type": "session_start", "job": "weighted_best_of_n@4", "t": 100.0},
        family_result("p1", 1, "Algebra", 101.0, majority=every, best=every, weighted=every),
        # p2 is journaled twice (a retried error): the later record counts
        family_result("p2", 1, "Algebra", 102.0, error="SolveFailed", majority=([F, F, F],)),
        family_result(
            "p2",
            1,
            "Algebra",
            103.0,
            majority=([F, F, T],),
            best=([F, T, T],),
            weighted=([F, T, T],),
        ),
        family_result(
            "p3",
            2,
            "Geometry",
            104.0,
            majority=([F, F, F], ["no_answer", None, None]),
            best=([F, F, T],),
            weighted=([F, F, F], [None, None, "timeout"]),
        ),
        family_result(
            "p4",
            3,
            "Geometry",
            105.0,
            error="SolveFailed: lost",
            **{r: ([F, F, F], ["error"] * 3) for r in ("majority", "best", "weighted")},
        ),
        {"type": "session_end", "job": "weighted_best_of_n@4", "t": 110.0, "wall_s": 10.0},
        {"type": "session_start", "job": "dvts@4", "t": 200.0},
        dvts_result("p1", True, 201.0),
        dvts_result("p2", False, 205.0),
        # killed here (no session_end), then resumed
        {"type": "session_start", "job": "dvts@4", "t": 300.0},
        {"type": "session_end", "job": "dvts@4", "t": 302.0, "wall_s": 2.0},
    ]
    with Journal.open(run_dir / "journal.jsonl", config, resume=False) as journal:
        for event in events:
            journal.append(event)


@pytest.fixture
def summary(tmp_path: Path) -> dict[str, Any]:
    write_run(tmp_path / "run")
    return summarize(load_run(tmp_path / "run"))


def points_of(summary: dict[str, Any], label: str) -> list[tuple[int, int, int, float | None]]:
    line = next(line for line in summary["lines"] if line["label"] == label)
    return [(p["n"], p["correct"], p["done"], p["accuracy"]) for p in line["points"]]


def test_accuracy_per_line_and_n(summary: dict[str, Any]) -> None:
    assert points_of(summary, "majority") == [(1, 1, 4, 0.25), (2, 1, 4, 0.25), (4, 2, 4, 0.5)]
    assert points_of(summary, "best_of_n") == [(1, 1, 4, 0.25), (2, 2, 4, 0.5), (4, 3, 4, 0.75)]
    assert points_of(summary, "weighted_best_of_n") == [
        (1, 1, 4, 0.25),
        (2, 2, 4, 0.5),
        (4, 2, 4, 0.5),
    ]
    assert points_of(summary, "dvts") == [(4, 1, 2, 0.5)]  # 2 of 4 planned problems done
    assert [line["label"] for line in summary["lines"] if not line["primary"]] == [
        "dvts/majority",
        "dvts/best",
    ]


def test_reasons_are_counted(summary: dict[str, Any]) -> None:
    majority = next(line for line in summary["lines"] if line["label"] == "majority")
    weighted = next(line for line in summary["lines"] if line["label"] == "weighted_best_of_n")
    first, last = majority["points"][0], weighted["points"][-1]
    assert (first["no_answer"], first["timeout"], first["error"]) == (1, 0, 1)
    assert (last["no_answer"], last["timeout"], last["error"]) == (0, 1, 1)


def test_accuracy_per_level_and_subject_at_the_largest_n(summary: dict[str, Any]) -> None:
    weighted = next(line for line in summary["lines"] if line["label"] == "weighted_best_of_n")
    assert weighted["largest_n"] == 4
    assert weighted["by_level"] == {
        "1": {"correct": 2, "done": 2, "accuracy": 1.0},
        "2": {"correct": 0, "done": 1, "accuracy": 0.0},
        "3": {"correct": 0, "done": 1, "accuracy": 0.0},
    }
    assert weighted["by_subject"] == {
        "Algebra": {"correct": 2, "done": 2, "accuracy": 1.0},
        "Geometry": {"correct": 0, "done": 2, "accuracy": 0.0},
    }


def test_costs_and_wall_time(summary: dict[str, Any]) -> None:
    family, dvts = summary["jobs"]
    assert (family["key"], family["done"], family["planned"], family["errors"]) == (
        "weighted_best_of_n@4",
        4,
        4,
        1,
    )
    assert family["lost_branches"] == 0 + 1 + 2 + 3
    assert family["total"]["completion_tokens"] == 100 + 200 + 300 + 400
    assert family["per_problem"]["completion_tokens"] == 250.0
    assert family["per_problem"]["requests"] == 2.0
    assert family["total"]["retries"] == 2  # p1 and p3
    assert family["per_problem"]["wall_s"] == 1.25
    assert family["wall_s"] == 10.0
    assert dvts["wall_s"] == 5.0 + 2.0  # the killed session counts until its last result
    assert summary["wall_s"] == 17.0
    assert summary["planned_problems"] == 4
    assert summary["data"] == {"source": "math500.jsonl", "sha256": "ff" * 32}


def rows(text: str, first_cell: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(first_cell + " ")]


def test_text_report(summary: dict[str, Any]) -> None:
    text = format_report(summary)
    assert rows(text, "majority")[0] == ["majority", "majority", "25.0", "25.0", "50.0"]
    assert rows(text, "best_of_n")[0] == ["best_of_n", "best", "25.0", "50.0", "75.0"]
    assert rows(text, "dvts")[0] == ["dvts", "weighted", "50.0"]
    assert rows(text, "weighted_best_of_n")[1] == ["weighted_best_of_n", "4", "100.0", "0.0", "0.0"]
    assert rows(text, "Geometry") == [["Geometry", "0.0", "50.0", "0.0", "-"]]
    assert rows(text, "weighted_best_of_n@4") == [
        ["weighted_best_of_n@4", "4/4", "1", "250", "10", "50", "2.0", "2", "1.25", "10.0"]
    ]
    assert rows(text, "dvts@4")[0][:3] == ["dvts@4", "2/4", "0"]
    assert "Total wall time: 17.0 s" in text
    assert "dvts/majority" not in text  # secondary lines are in the JSON only


def test_write_report_and_compare(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_run(tmp_path / name)
    summary, text = write_report(tmp_path / "a")
    assert (tmp_path / "a" / "report.txt").read_text() == text
    assert orjson.loads((tmp_path / "a" / "report.json").read_bytes()) == orjson.loads(
        orjson.dumps(summary)
    )
    png = (tmp_path / "a" / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    other = summarize(load_run(tmp_path / "b"))
    comparison = format_comparison([summary, other])
    assert rows(comparison, "best_of_n") == [
        ["best_of_n", "1", "25.0", "25.0"],
        ["best_of_n", "2", "50.0", "50.0"],
        ["best_of_n", "4", "75.0", "75.0"],
    ]
    target = plot_accuracy([summary, other], tmp_path / "plots" / "both.png")
    assert target.read_bytes().startswith(b"\x89PNG")


def test_a_directory_without_a_journal_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no journal there"):
        load_run(tmp_path)


def test_spend_and_intervals_per_line_and_n(summary: dict[str, Any]) -> None:
    def spend_of(label: str) -> list[tuple[int, float, float, float, float]]:
        line = next(line for line in summary["lines"] if line["label"] == label)
        return [
            (
                p["n"],
                p["spend"]["policy_tokens"],
                p["spend"]["prm_tokens"],
                p["spend"]["tokens"],
                p["spend"]["generations"],
            )
            for p in line["points"]
        ]

    # the family ran once at n=4 (means: 250 generated, 50 PRM tokens): scaled by n / 4,
    # and majority needs no PRM
    assert spend_of("majority") == [
        (1, 62.5, 0.0, 62.5, 1),
        (2, 125.0, 0.0, 125.0, 2),
        (4, 250.0, 0.0, 250.0, 4),
    ]
    assert spend_of("weighted_best_of_n") == [
        (1, 62.5, 12.5, 75.0, 1),
        (2, 125.0, 25.0, 150.0, 2),
        (4, 250.0, 50.0, 300.0, 4),
    ]
    # every line of a tree search spent what its run spent
    assert spend_of("dvts") == spend_of("dvts/majority") == [(4, 40.0, 0.0, 40.0, 4)]
    for line in summary["lines"]:
        for point in line["points"]:
            bounds = accuracy_interval(point["correct"], point["done"])
            assert point["interval"] == [bounds.low, bounds.high]
            assert bounds.low <= point["accuracy"] <= bounds.high
    assert summary["bootstrap"] == {"resamples": 2000, "confidence": 0.95, "seed": 0}
    assert summary["calibration_table"] is None
    assert all("decisions" not in job for job in summary["jobs"])


def optimal_table() -> CalibrationTable:
    records = [
        ProblemRecord(
            problem_id=f"c{i}",
            # stopping after the probe is wrong everywhere: never the choice
            probes={4: ProbeRecord(value, 0.5, Outcome(False, 1.0, 1.0))},
            pass_at_1=None,
            outcomes={
                (option, 8): Outcome(
                    option == ("weighted_best_of_n" if value > 0.5 else "dvts(width=4)"), 1.0, 1.0
                )
                for option in ("weighted_best_of_n", "dvts(width=4)")
            },
        )
        for i, value in enumerate([0.2, 0.3, 0.6, 0.7])
    ]
    return build_table(records, identity={}, probe=4, budgets=[8], bins=2, folds=2)


def optimal_result(
    pid: str, correct: bool, tokens: tuple[float, float], decision: dict[str, Any] | None
) -> dict[str, Any]:
    reason = None if decision is not None else "error"
    return {
        "type": "result",
        "job": "compute_optimal@8",
        "problem_id": pid,
        "level": 1,
        "subject": "Algebra",
        "error": None if decision is not None else "SolveFailed: every branch was lost",
        "grades": {
            rule: [{"n": 8, "answer": "x", "correct": correct, "reason": reason}]
            for rule in ("majority", "best", "weighted")
        },
        "usage": {"completion_tokens": tokens[0], "prm_tokens": tokens[1], "requests": 3},
        "lost": 0,
        "solution": {"decision": decision},
        "t": 1.0,
    }


def decision(level: int, early_exit: bool, samples: int, choice: str) -> dict[str, Any]:
    return {
        "bin": level,
        "predicted": 0.7,
        "agreement": 1.0,
        "probe": 4,
        "choice": choice,
        "early_exit": early_exit,
        "samples": samples,
    }


def write_optimal_run(run_dir: Path, table: CalibrationTable) -> None:
    jobs = plan_jobs(["weighted_best_of_n", "compute_optimal"], [8], calibration=table)
    config = {
        "identity": {"jobs": [j.identity() for j in jobs], "selection": {"problems": 4}},
        "info": {"calibration_table": "/tables/calibration.json"},
    }
    family = {
        "type": "result",
        "job": "weighted_best_of_n@8",
        "level": 1,
        "subject": "Algebra",
        "error": None,
        "usage": {"completion_tokens": 800.0, "prm_tokens": 400.0, "requests": 1},
        "lost": 0,
        "t": 1.0,
    }
    events = [
        {
            **family,
            "problem_id": pid,
            "grades": {rule: grades([8], [right]) for rule in ("majority", "best", "weighted")},
        }
        for pid, right in (("p1", T), ("p2", T), ("p3", F), ("p4", F))
    ]
    events += [
        optimal_result("p1", T, (400.0, 200.0), decision(1, True, 4, "weighted_best_of_n")),
        optimal_result("p2", T, (800.0, 400.0), decision(1, False, 8, "weighted_best_of_n")),
        optimal_result("p3", T, (1000.0, 600.0), decision(2, False, 8, "dvts(width=4)")),
        optimal_result("p4", F, (100.0, 0.0), None),  # failed as a whole: no decision
    ]
    with Journal.open(run_dir / "journal.jsonl", config, resume=False) as journal:
        for event in events:
            journal.append(event)


def test_the_report_of_a_compute_optimal_job(tmp_path: Path) -> None:
    table = optimal_table()
    write_optimal_run(tmp_path, table)
    summary, text = write_report(tmp_path)
    spend_table = text.split("Accuracy with bootstrap intervals over problems (2000 resamples)")[1]
    assert spend_table.splitlines()[1:7] == [
        "line                n  acc %         95% CI  gen tokens  PRM tokens  tokens  generations",
        "------------------  -  -----  -------------  ----------  ----------  ------  -----------",
        "majority            8   50.0   [0.0, 100.0]         800           0     800          8.0",
        "best_of_n           8   50.0   [0.0, 100.0]         800         400   1,200          8.0",
        "weighted_best_of_n  8   50.0   [0.0, 100.0]         800         400   1,200          8.0",
        # (400 + 800 + 1000 + 100) / 4 generated, (200 + 400 + 600) / 4 PRM tokens; the failed
        # problem counts its budget of 8 generations: (4 + 8 + 8 + 8) / 4
        "compute_optimal     8   75.0  [25.0, 100.0]         575         300     875          7.0",
    ]
    digest = table_sha256(table)[:12]
    decisions = text.split("\ncompute_optimal@8 (")[1].splitlines()
    assert decisions[:6] == [
        f"table sha256 {digest}, /tables/calibration.json): 3 problems decided, early exit"
        " on 1 (33.3%), 6.7 of n=8 generations drawn on average; 1 failed as a whole (no"
        " decision)",
        "bin  choices               problems  acc %  tokens  generations  early exits",
        "---  --------------------  --------  -----  ------  -----------  -----------",
        "1    weighted_best_of_n 2         2  100.0     900          6.0            1",
        "2    dvts(width=4) 1              1  100.0   1,600          8.0            0",
        "(bin 1: the easiest predicted difficulty)",
    ]
    family, optimal = summary["jobs"]
    assert "decisions" not in family
    assert optimal["settings"]["table_sha256"] == table_sha256(table)
    assert optimal["decisions"] == {
        "problems": 3,
        "n": 8,
        "failed": 1,
        "mean_samples": 20 / 3,
        "early_exits": 1,
        "early_exit_share": 1 / 3,
        "choices": {"weighted_best_of_n": 2, "dvts(width=4)": 1},
        "by_bin": {
            "1": {
                "problems": 2,
                "correct": 2,
                "accuracy": 1.0,
                "policy_tokens": 600.0,
                "prm_tokens": 300.0,
                "tokens": 900.0,
                "mean_samples": 6.0,
                "early_exits": 1,
                "early_exit_share": 0.5,
                "choices": {"weighted_best_of_n": 2},
            },
            "2": {
                "problems": 1,
                "correct": 1,
                "accuracy": 1.0,
                "policy_tokens": 1000.0,
                "prm_tokens": 600.0,
                "tokens": 1600.0,
                "mean_samples": 8.0,
                "early_exits": 0,
                "early_exit_share": 0.0,
                "choices": {"dvts(width=4)": 1},
            },
        },
    }
    assert summary["calibration_table"] == "/tables/calibration.json"
    assert orjson.loads((tmp_path / "report.json").read_bytes())["jobs"][1]["decisions"] == (
        orjson.loads(orjson.dumps(optimal["decisions"]))
    )
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_revise_counts_the_generations_it_drew(tmp_path: Path) -> None:
    # revise@9 (2 continuations x 2 rounds: 9 // 5 = 1 original, up to 5 generations): its
    # candidates and lost branches are what it drew, not the nominal n
    (job,) = plan_jobs(["revise@9"], None)
    config = {
        "identity": {
            "jobs": [job.identity()],
            "selection": {"problems": 3},
            "data": {"sha256": "ff" * 32},
            "seed": 0,
            "endpoints": {"policy": {"model": "pol"}, "prm": {"model": "prm"}},
        },
        "info": {"data_source": "math500.jsonl"},
    }
    usage = {"completion_tokens": 40.0, "prm_tokens": 10.0, "requests": 3, "wall_s": 1.0}
    with Journal.open(tmp_path / "journal.jsonl", config, resume=False) as journal:
        journal.append({"type": "session_start", "job": job.key, "t": 1.0})
        for pid, candidates, lost, error in (
            ("p1", 1, 0, None),
            ("p2", 4, 1, None),
            ("p3", 0, 0, "EndpointError: down"),
        ):
            journal.append(
                {
                    "type": "result",
                    "job": job.key,
                    "problem_id": pid,
                    "level": 1,
                    "subject": "Algebra",
                    "error": error,
                    "grades": {r: grades([9], [True]) for r in ("majority", "best", "weighted")},
                    "usage": usage,
                    "candidates": candidates,
                    "lost": lost,
                    "t": 2.0,
                }
            )
    summary = summarize(load_run(tmp_path))
    line = next(line for line in summary["lines"] if line["label"] == "revise")
    # p1's solution needed no revision (1 generation), p2 drew 5, p3 failed as a whole with
    # nothing recorded and counts its budget: (1 + 5 + 9) / 3
    assert [p["spend"]["generations"] for p in line["points"]] == [5.0]
