"""asynctts.eval.report: exact aggregation of a journal (per line and n, per level and
subject, costs, wall time over killed sessions), the text tables, comparison and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from asynctts.errors import ConfigError
from asynctts.eval.journal import Journal
from asynctts.eval.plan import plan_jobs
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
