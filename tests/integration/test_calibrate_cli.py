"""`asynctts calibrate` end to end as a subprocess over real HTTP against the simulated server:
the grid is journaled once per (job, problem), the table loads and names every bin and budget,
a finished run resumed sends no request (with other table settings too, a probe size per
budget among them), and a run killed with SIGKILL partway resumes with exactly one result per
(job, problem)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_cli import (
    NO_HANG_S,
    POLICY_FORMAT,
    PRM_FORMAT,
    results_in,
    run,
    sim_argv,
    write_data,
)

from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT
from asynctts.calibration import CalibrationTable, Option, table_identity
from asynctts.endpoint import Endpoint
from asynctts.testing import LatencyModel, SimulatedServer, math500_problem

# the grid at N in {4, 16}: widths 2 and 4 at N=4, width 4 alone at N=16
JOBS = (
    "weighted_best_of_n@16",
    "beam_search[width=2]@4",
    "beam_search@4",
    "beam_search@16",
    "dvts[width=2]@4",
    "dvts@4",
    "dvts@16",
    "particle_filter@4",
    "particle_filter@16",
    "rebase@4",
    "rebase@16",
    "revise@16",  # revise refuses N=4 (it needs 5)
)
OPTIONS = {  # at N=4; N=16 has no width 2
    "probe",
    "majority",
    "best_of_n",
    "weighted_best_of_n",
    "beam_search(width=2)",
    "beam_search(width=4)",
    "dvts(width=2)",
    "dvts(width=4)",
    "particle_filter",
    "rebase",
}


def unescaped(flag: str) -> str:
    return flag.replace(r"\n", "\n")


def calibrate_argv(server: SimulatedServer, data: Path, out: Path, *extra: str) -> list[str]:
    """The grid at N in {4, 16}, a probe of 4, 2 bins, 2 folds."""
    grid = ("--n", "4", "16", "--probe", "4", "--bins", "2", "--folds", "2")
    return sim_argv("calibrate", server, data, out, *grid, *extra)


@pytest.fixture
def records(math500: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # integer answers only, so each wrong answer is plainly wrong; every level
    chosen = [r for r in math500 if r["answer"].isdigit()]
    return [r for level in range(1, 6) for r in chosen if r["level"] == level][::8][:12]


def problems_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """MATH-500 difficulty per level (the simulator's fit), so the bins differ."""
    return {r["problem"]: math500_problem(r["problem"], r["answer"], r["level"]) for r in records}


def requests(server: SimulatedServer) -> int:
    """Generation and scoring requests: all but the model check each run makes at open."""
    return sum(n for route, n in server.stats.routes.items() if not route.endswith("/models"))


async def test_calibrate_end_to_end_then_resumed_without_a_request(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    data = write_data(tmp_path / "data.jsonl", records)
    out = tmp_path / "run"
    async with SimulatedServer(prm_model="sim-prm", problems=problems_of(records)) as server:
        argv = calibrate_argv(server, data, out)
        code, stdout, stderr = await run(argv)
        assert code == 0, stderr
        sent = requests(server)
        assert sent > 0

        table = CalibrationTable.load(out / "calibration.json")
        assert (table.budgets, table.probes, table.problems) == ((4, 16), {4: 4, 16: 4}, 12)
        assert set(table.parts) == {4} and table.parts[4].bins == 2
        part = table.part_for(16)
        assert set(part.cells) == {(1, 4), (1, 16), (2, 4), (2, 16)}
        for (_, n), cells in part.cells.items():
            at_16 = (OPTIONS | {"revise"}) - {"beam_search(width=2)", "dvts(width=2)"}
            assert {cell.option for cell in cells} == (OPTIONS if n == 4 else at_16)
            assert all(cell.problems > 0 for cell in cells)
            assert all(0.0 <= cell.accuracy <= 1.0 for cell in cells)
        policy = Endpoint(
            base_url=server.base_url, model="sim-policy", prompt_format=unescaped(POLICY_FORMAT)
        )
        prm = Endpoint(
            base_url=server.base_url, model="sim-prm", prompt_format=unescaped(PRM_FORMAT)
        )
        assert table.identity == table_identity(policy, prm, DEFAULT_SYSTEM_PROMPT)
        assert table.aggregate == "last"
        text = (out / "calibration.txt").read_text(encoding="utf-8")
        assert "budgets [4, 16], probe sizes N=4: 4, N=16: 4 (bin 1 easiest)" in text
        for (level, n), cells in part.cells.items():  # one row per bin and budget
            row = rf"^ +4 +{level} +{n} +{re.escape(cells[0].option)} "
            assert len(re.findall(row, text, re.MULTILINE)) == 1, (row, text)
            assert Option.parse(cells[0].option).label in OPTIONS | {"revise"}
        assert f"problems: 12 from {data}" in text
        assert "the best-of-N family ran once at the largest N" in text
        # every width divides its budget here; revision alone cannot pay for itself at N=4
        refusals = [line for line in text.splitlines() if line.startswith("refused")]
        assert refusals == [
            "refused: revise at N=4: n=4: one solution and its revisions take up to 1 +"
            " continuations * rounds = 1 + 2 * 2 = 5 generations"
        ]
        assert stdout.startswith(text)
        assert (out / "calibration.png").read_bytes().startswith(b"\x89PNG")
        assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
        report = orjson.loads((out / "report.json").read_bytes())
        assert [(job["key"], job["done"]) for job in report["jobs"]] == [(j, 12) for j in JOBS]

        keys = results_in(out / "journal.jsonl")
        assert len(keys) == len(set(keys)) == 12 * len(JOBS)
        family = [
            orjson.loads(line)
            for line in (out / "journal.jsonl").read_bytes().splitlines()
            if b'"job":"weighted_best_of_n@16"' in line and b'"type":"result"' in line
        ]
        shares = sorted(r["candidate_correct"] for r in family)
        assert len(shares) == 12 and 0.0 <= shares[0] < shares[-1] <= 1.0

        # resumed as it was, then with other table settings: nothing is sent again
        code, stdout, stderr = await run([*argv, "--resume"])
        assert code == 0, stderr
        assert "0 solved now, 12 from the journal" in stdout
        code, stdout, stderr = await run([*argv, "--resume", "--bins", "3", "--probe", "2"])
        assert code == 0, stderr
        assert requests(server) == sent
        rebuilt = CalibrationTable.load(out / "calibration.json")
        assert (rebuilt.probes, rebuilt.parts[2].bins) == ({4: 2, 16: 2}, 3)
        # a probe size per budget: one part each, the larger probe's cells at N=16 alone
        code, stdout, stderr = await run([*argv, "--resume", "--probe", "2", "8"])
        assert code == 0, stderr
        assert requests(server) == sent
        rebuilt = CalibrationTable.load(out / "calibration.json")
        assert rebuilt.probes == {4: 2, 16: 8} and set(rebuilt.parts) == {2, 8}
        assert rebuilt.parts[2].budgets == (4, 16) and rebuilt.parts[8].budgets == (16,)
        assert [v.budget for v in rebuilt.validation] == [4, 16]
        assert "probe sizes N=4: 2, N=16: 8" in stdout
        assert (out / "calibration.png").read_bytes().startswith(b"\x89PNG")
        # a probe above its budget: refused before anything is read or sent
        code, _, stderr = await run([*argv, "--resume", "--probe", "8", "8"])
        assert code == 2
        assert "error: probe of 8 samples at budget N=4: need 1 <= probe <= N" in stderr
        assert requests(server) == sent


async def test_killed_partway_then_resumed(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    data = write_data(tmp_path / "data.jsonl", records)
    out = tmp_path / "run"
    journal = out / "journal.jsonl"
    latency = LatencyModel.constant(0.003)  # slow enough that the kill lands mid-run
    async with SimulatedServer(
        prm_model="sim-prm", problems=problems_of(records), latency=latency
    ) as server:
        argv = calibrate_argv(server, data, out, "--max-problems-in-flight", "2")
        # its own process group, so the kill takes its grading workers too
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        async with asyncio.timeout(NO_HANG_S):
            while not journal.exists() or len(results_in(journal)) < 18:
                assert proc.returncode is None, "the run ended before it could be killed"
                await asyncio.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        before = results_in(journal)
        assert 18 <= len(before) < 12 * len(JOBS)
        assert len(set(before)) == len(before)
        assert not (out / "calibration.json").exists()

        code, _, stderr = await run([*argv, "--resume"])
        assert code == 0, stderr
        after = results_in(journal)
        assert after[: len(before)] == before  # nothing redone, nothing lost
        assert set(after) == {(job, r["unique_id"]) for job in JOBS for r in records}
        assert len(after) == len(set(after))
        assert CalibrationTable.load(out / "calibration.json").problems == 12
