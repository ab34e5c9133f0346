"""compute_optimal end to end on real vLLM servers on the CPU, from the command line as a user
runs it: `asynctts calibrate` journals its grid and writes a table, `asynctts eval --strategy
compute_optimal --calibration` chooses by it, and both leave journals and reports."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from asynctts.calibration import CalibrationTable
from asynctts.cli import main

from helpers_vllm import Fleet

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

# sums the tiny policy was trained on (tests/vllm/build_models.py)
PROBLEMS = [(f"What is {a} + {b}?", str(a + b)) for a, b in ((3, 4), (12, 7), (5, 9), (20, 6))]


def journal(run: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in (run / "journal.jsonl").read_bytes().splitlines()]


def test_calibrate_then_eval_compute_optimal(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "sums.jsonl"
    data.write_bytes(
        b"".join(orjson.dumps({"problem": p, "answer": a}) + b"\n" for p, a in PROBLEMS)
    )
    common = [
        "--endpoints",
        str(fleet.endpoints_file),
        "--data",
        str(data),
        "--max-tokens",
        "96",
        "--no-progress",
    ]
    calibration = tmp_path / "cal"
    calibrate = ["calibrate", *common, "--n", "2", "--probe", "1", "--bins", "2", "--folds", "2"]
    assert main([*calibrate, "--max-depth", "3", "--out", str(calibration)]) == 0, (
        capsys.readouterr().err
    )
    table = CalibrationTable.load(calibration / "calibration.json")
    assert (table.budgets, table.probes, table.max_depth, table.problems) == ((2,), {2: 1}, 3, 4)
    # the grid at N=2: the best-of-N family, beam search and DVTS of width 1 (4 cannot split
    # 2), particle filtering and REBASE (revision needs 5 generations: refused)
    results = [e for e in journal(calibration) if e["type"] == "result"]
    assert sorted({str(r["job"]) for r in results}) == [
        "beam_search[width=1]@2",
        "dvts[width=1]@2",
        "particle_filter@2",
        "rebase@2",
        "weighted_best_of_n@2",
    ]
    assert len(results) == 5 * len(PROBLEMS)
    for name in ("calibration.txt", "calibration.png", "report.txt"):
        assert (calibration / name).is_file()

    evaluated = tmp_path / "co"
    argv = [
        "eval",
        *common,
        "--strategy",
        "weighted_best_of_n",
        "compute_optimal",
        "--calibration",
        str(calibration / "calibration.json"),
        "--n",
        "2",
        "--out",
        str(evaluated),
    ]
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    report = orjson.loads((evaluated / "report.json").read_bytes())
    (job,) = (j for j in report["jobs"] if j["key"] == "compute_optimal@2")
    assert (job["done"], job["errors"]) == (len(PROBLEMS), 0)
    decisions = [
        r["solution"]["decision"]
        for r in journal(evaluated)
        if r["type"] == "result" and r["job"] == job["key"]
    ]
    assert len(decisions) == len(PROBLEMS)
    for decision in decisions:
        # the table's choice for the probe's reading, at most n generations drawn
        assert decision["choice"] == table.choose(decision["predicted"], 2).label
        assert 1 <= decision["samples"] <= 2
    text = (evaluated / "report.txt").read_text(encoding="utf-8")
    assert "At equal spend" in text and f"{job['key']} (table sha256" in text
    assert (evaluated / "accuracy.png").read_bytes().startswith(b"\x89PNG")
