"""`asynctts eval --strategy compute_optimal --calibration TABLE` end to end as subprocesses over
real HTTP against the simulated server: `asynctts calibrate` writes the table, eval runs
compute_optimal beside weighted best-of-N and reports its accuracy with a bootstrap interval,
its spend and its decisions per difficulty bin (each figure recomputed here from the journal);
its oracle line chooses by the oracle bin of each problem's pass@1 from the family run (the
predicted bins where that run failed); a table of another setup and a resume with another
table are refused before any request."""

from __future__ import annotations

import dataclasses
import math
import shutil
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_cli import run, sim_argv, write_data

from asynctts.calibration import CalibrationTable
from asynctts.cli import main
from asynctts.eval.bootstrap import accuracy_interval
from asynctts.eval.plan import table_sha256
from asynctts.testing import SimulatedServer, math500_problem

JOB = "compute_optimal@8"
ORACLE_JOB = "compute_optimal/oracle@8"
FAMILY_JOB = "weighted_best_of_n@8"


@pytest.fixture
def records(math500: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # integer answers only, so each wrong answer is plainly wrong; every level
    chosen = [r for r in math500 if r["answer"].isdigit()]
    return [r for level in range(1, 6) for r in chosen if r["level"] == level][::8][:12]


def requests(server: SimulatedServer) -> int:
    """Generation and scoring requests: all but the model check each run makes at open."""
    return sum(n for route, n in server.stats.routes.items() if not route.endswith("/models"))


def results_of(journal: Path, job: str) -> list[dict[str, Any]]:
    events = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    return [e for e in events if e.get("type") == "result" and e["job"] == job]


def cells(text: str, first: str) -> list[list[str]]:
    """The rows of `text` whose first cell is `first`, split at runs of two spaces or more."""
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()]
        for line in text.splitlines()
        if line.startswith(first + " ")
    ]


def number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


async def test_compute_optimal_beside_weighted_best_of_n(
    tmp_path: Path, records: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_data(tmp_path / "data.jsonl", records)
    problems = {
        r["problem"]: math500_problem(r["problem"], r["answer"], r["level"]) for r in records
    }
    calibrated, evaluated = tmp_path / "calibration", tmp_path / "eval"
    table_path = calibrated / "calibration.json"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        calibrate = sim_argv("calibrate", server, data, calibrated)
        code, _, stderr = await run(
            [*calibrate, "--n", "4", "8", "--probe", "2", "4", "--bins", "2", "--folds", "2"]
        )
        assert code == 0, stderr
        table = CalibrationTable.load(table_path)
        assert (table.budgets, table.probes, set(table.parts)) == ((4, 8), {4: 2, 8: 4}, {2, 4})
        assert table.part_for(8).bins == 2 and table.part_for(8).budgets == (4, 8)
        assert table.has_oracle  # the calibration graded every candidate
        eval_args = [
            "--strategy",
            "weighted_best_of_n",
            "compute_optimal",
            "--calibration",
            str(table_path),
            "--n",
            "8",
        ]
        evaluate = [*sim_argv("eval", server, data, evaluated), *eval_args]
        code, stdout, stderr = await run(evaluate)
        assert code == 0, stderr
        sent = requests(server)

        # a table made for another system prompt: refused before any request, nothing written
        other_setup = sim_argv("eval", server, data, tmp_path / "other")
        code, _, stderr = await run(
            [
                *other_setup,
                "--strategy",
                "compute_optimal@8",
                "--calibration",
                str(table_path),
                "--system-prompt",
                "Be brief.",
            ]
        )
        assert code == 2
        assert stderr.startswith(
            f"asynctts eval: error: --calibration {table_path}: {JOB}: the calibration table"
            " was made for another policy, PRM or prompt format (system_prompt: table 'Solve"
        )
        assert "this run 'Be brief.'); run `asynctts calibrate` for this one" in stderr
        assert not (tmp_path / "other").exists()

        # resumed with another table: refused naming both; with its own: nothing to do
        other_table = tmp_path / "other.json"
        dataclasses.replace(table, confidence=0.99).save(other_table)
        swapped = [*evaluate, "--resume"]
        swapped[swapped.index(str(table_path))] = str(other_table)
        code, _, stderr = await run(swapped)
        assert code == 2
        old, new = table_sha256(table)[:12], table_sha256(CalibrationTable.load(other_table))[:12]
        assert stderr == (
            f"asynctts eval: error: cannot resume {evaluated}: its {JOB} results were chosen by"
            f" the calibration table {table_path} (sha256 {old}), not by {other_table} (sha256"
            f" {new}); resume with the table it started with, or choose another output"
            " directory\n"
        )
        code, resumed, stderr = await run([*evaluate, "--resume"])
        assert code == 0, stderr
        assert f"{JOB}: 0 solved now, 12 from the journal" in resumed
        assert f"{ORACLE_JOB}: 0 solved now, 12 from the journal" in resumed
        assert requests(server) == sent

        # a copy of the run whose family run failed on one problem, its oracle result not yet
        # there: resumed, that problem is solved with the predicted bins
        fallback = tmp_path / "fallback"
        shutil.copytree(evaluated, fallback)
        events = [
            orjson.loads(line) for line in (fallback / "journal.jsonl").read_bytes().splitlines()
        ]
        failed_id = next(
            e["problem_id"] for e in events if e.get("type") == "result" and e["job"] == ORACLE_JOB
        )
        kept = []
        for event in events:
            if event.get("type") == "result" and event["problem_id"] == failed_id:
                if event["job"] == ORACLE_JOB:
                    continue
                if event["job"] == FAMILY_JOB:  # as the runner records a failed problem
                    event = {**event, "error": "SolveFailed: every branch was lost"}
            kept.append(orjson.dumps(event) + b"\n")
        (fallback / "journal.jsonl").write_bytes(b"".join(kept))
        code, refilled, stderr = await run(
            [*sim_argv("eval", server, data, fallback), *eval_args, "--resume"]
        )
        assert code == 0, stderr
        assert f"{ORACLE_JOB}: 1 solved now, 11 from the journal" in refilled

    text = (evaluated / "report.txt").read_text(encoding="utf-8")
    assert stdout.startswith(text)
    journal = evaluated / "journal.jsonl"
    config = orjson.loads(journal.read_bytes().splitlines()[0])
    (job,) = (j for j in config["identity"]["jobs"] if j["key"] == JOB)
    assert job["settings"]["table_sha256"] == table_sha256(table)
    assert config["info"]["calibration_table"] == str(table_path)
    results = results_of(journal, JOB)
    assert len(results) == 12 and all(r["error"] is None for r in results)
    decisions = [r["solution"]["decision"] for r in results]
    for decision in decisions:
        assert decision["bin"] in (1, 2) and decision["probe"] == 4  # the size for n=8
        assert 4 <= decision["samples"] <= 8
        assert decision["choice"] == table.choose(decision["predicted"], 8).label

    # the spend table's row, every figure from the journal
    correct = sum(r["grades"]["weighted"][0]["correct"] for r in results)
    interval = accuracy_interval(correct, 12)
    policy = math.fsum(r["usage"]["completion_tokens"] for r in results) / 12
    prm = math.fsum(r["usage"]["prm_tokens"] for r in results) / 12
    drawn = math.fsum(d["samples"] for d in decisions) / 12
    spend_rows = cells(text.split("compare lines at equal spend")[1], "compute_optimal")
    assert spend_rows[0] == [
        "compute_optimal",
        "8",
        f"{100 * correct / 12:.1f}",
        f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]",
        number(policy),
        number(prm),
        number(policy + prm),
        number(drawn, 1),
    ]
    assert cells(text.split("compare lines at equal spend")[1], "weighted_best_of_n")[0][1:3] == [
        "8",
        cells(text, "weighted_best_of_n")[0][2],  # the accuracy of the table by budget
    ]

    # the decisions: one row per bin, problems and early exits from the journal
    exits = sum(d["early_exit"] for d in decisions)
    head = next(line for line in text.splitlines() if line.startswith(f"{JOB} (table sha256"))
    assert head == (
        f"{JOB} (table sha256 {old}, {table_path}): 12 problems decided, early exit on {exits}"
        f" ({100 * exits / 12:.1f}%), {drawn:.1f} of n=8 generations drawn on average"
    )
    section = text.split(head)[1].split(ORACLE_JOB)[0]  # the oracle's decisions follow
    for level in sorted({d["bin"] for d in decisions}):
        in_bin = [d for d in decisions if d["bin"] == level]
        (row,) = cells(section, str(level))
        choices = Counter(d["choice"] for d in in_bin)
        assert row[0] == str(level)
        ranked = sorted(choices.items(), key=lambda item: (-item[1], item[0]))
        assert row[1] == ", ".join(f"{choice} {count}" for choice, count in ranked)
        assert row[2] == str(len(in_bin))
        assert row[-1] == str(sum(d["early_exit"] for d in in_bin))

    report = orjson.loads((evaluated / "report.json").read_bytes())
    (line,) = (line for line in report["lines"] if line["label"] == "compute_optimal")
    (point,) = line["points"]
    assert point["interval"] == [interval.low, interval.high]
    assert point["spend"]["generations"] == pytest.approx(drawn)
    assert (evaluated / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    # at equal spend: weighted best-of-N, measured at n=8 alone, is read only at exactly its
    # own spend, so compute_optimal's other spends find no fixed line around them
    by_axis = {
        row["axis"]: row for row in report["equal_spend"] if row["line"] == "compute_optimal"
    }
    assert set(by_axis) == {"tokens", "generations"}
    assert by_axis["tokens"]["spend"] == pytest.approx(policy + prm)
    assert by_axis["generations"]["spend"] == pytest.approx(drawn)
    assert by_axis["tokens"]["accuracy"] == pytest.approx(correct / 12)
    for axis, spent in (("tokens", policy + prm), ("generations", drawn)):
        (fixed,) = (p for p in report["lines"] if p["label"] == "weighted_best_of_n")
        at_n8 = fixed["points"][0]["spend"][axis]
        expected = ["weighted_best_of_n"] if spent == pytest.approx(at_n8) else []
        assert [r["label"] for r in by_axis[axis]["readings"]] == expected
    assert "At equal spend: each fixed line's accuracy at compute_optimal's mean spend" in text

    # the oracle line: each problem's choice is that of the oracle bin of its family run's
    # candidate_correct, after the same probe as the predicted line (the same request seeds)
    family = {r["problem_id"]: r for r in results_of(journal, FAMILY_JOB)}
    probed = {r["problem_id"]: r["solution"]["decision"] for r in results}
    oracle_results = results_of(journal, ORACLE_JOB)
    assert len(oracle_results) == 12 and all(r["error"] is None for r in oracle_results)
    for result in oracle_results:
        pass_at_1 = family[result["problem_id"]]["candidate_correct"]
        assert result["oracle_pass_at_1"] == pass_at_1
        decision = result["solution"]["decision"]
        chosen = table.choose_oracle(pass_at_1, 8)
        assert (decision["bin"], decision["choice"]) == (chosen.bin, chosen.label)
        assert decision["predicted"] == probed[result["problem_id"]]["predicted"]
    oracle_correct = sum(r["grades"]["weighted"][0]["correct"] for r in oracle_results)
    (oracle_line,) = (ln for ln in report["lines"] if ln["label"] == "compute_optimal/oracle")
    assert oracle_line["strategy"] == "compute_optimal" and oracle_line["primary"]
    assert oracle_line["points"][0]["correct"] == oracle_correct
    # compared at equal spend as the predicted line is, never read as a fixed line
    assert [(row["line"], row["axis"]) for row in report["equal_spend"]] == [
        ("compute_optimal", "tokens"),
        ("compute_optimal", "generations"),
        ("compute_optimal/oracle", "tokens"),
        ("compute_optimal/oracle", "generations"),
    ]
    assert all(
        reading["label"] == "weighted_best_of_n"
        for row in report["equal_spend"]
        for reading in row["readings"]
    )
    oracle_row = cells(text.split("compare lines at equal spend")[1], "compute_optimal/oracle")[0]
    assert oracle_row[:3] == ["compute_optimal/oracle", "8", f"{100 * oracle_correct / 12:.1f}"]
    oracle_head = text.split(f"{ORACLE_JOB} (table sha256 {old}, {table_path}): 12 problems")[1]
    assert oracle_head.splitlines()[1] == (
        f"bins of the true pass@1 (the share of {FAMILY_JOB}'s candidates right); 0 solved"
        " with the predicted bins (their family run failed)"
    )
    assert "(bin 1: the highest pass@1)" in oracle_head
    assert "No compute_optimal/oracle line" not in text

    # the copy whose family run failed on one problem: that problem's choice is its predicted
    # bin's, and the report counts it
    (refilled_result,) = (
        r
        for r in results_of(fallback / "journal.jsonl", ORACLE_JOB)
        if r["problem_id"] == failed_id
    )
    assert refilled_result["oracle_pass_at_1"] is None
    decision = refilled_result["solution"]["decision"]
    chosen = table.choose(decision["predicted"], 8)
    assert (decision["bin"], decision["choice"]) == (chosen.bin, chosen.label)
    assert "; 1 solved with the predicted bins (their family run failed)" in (
        fallback / "report.txt"
    ).read_text(encoding="utf-8")

    # `asynctts report` shows the same
    capsys.readouterr()  # the simulated server's logs
    assert main(["report", str(evaluated)]) == 0
    assert capsys.readouterr().out == text


def test_bad_compute_optimal_input_fails_before_any_request(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    base = [
        "eval",
        "--policy-url",
        f"http://127.0.0.1:{port}/v1",
        "--policy-model",
        "m",
        "--prm-model",
        "p",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    table = tmp_path / "calibration.json"
    table.write_text('{"format": 0}', encoding="utf-8")
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"format": 1, "probe": 8, "budgets": [16]}', encoding="utf-8")
    for extra, message in [
        (
            ["--strategy", "compute_optimal", "--n", "8"],
            "strategy 'compute_optimal' needs a calibration table: pass --calibration TABLE",
        ),
        (
            ["--strategy", "dvts", "--n", "8", "--calibration", str(table)],
            "a calibration table is only for strategy 'compute_optimal', which is not among"
            " the strategies ['dvts']",
        ),
        (
            ["--strategy", "compute_optimal", "--n", "8", "--calibration", str(table)],
            f"calibration table {table}: not a table `asynctts calibrate` wrote (ValueError:"
            " format 0, expected 2)",
        ),
        (
            ["--strategy", "compute_optimal", "--n", "8", "--calibration", str(earlier)],
            f"calibration table {earlier}: written by an earlier asynctts (one probe size for"
            " every budget); rebuild it with `asynctts calibrate --resume --out RUN_DIR`",
        ),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"asynctts eval: error: {message}"), err
    assert not (tmp_path / "run").exists()
