"""`asynctts eval` end to end as a subprocess over real HTTP against the simulated server:
exact accuracies and reports; a run killed with SIGKILL halfway and resumed ends with exactly
one result per problem; resuming with another configuration is refused without a request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from asynctts.testing import LatencyModel, SimProblem, SimulatedServer

CONSOLE_SCRIPT = Path(sys.executable).with_name("asynctts")
POLICY_FORMAT = r"{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = r"Problem: {problem}\n\nSolution:\n{solution}"
NO_HANG_S = 120  # turns a hang into a failure; not a timing assertion


def command() -> list[str]:
    if CONSOLE_SCRIPT.exists():  # the installed entry point itself
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "asynctts.cli"]


def write_data(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    keep = ("problem", "answer", "subject", "level", "unique_id")
    path.write_text(
        "".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in records), encoding="utf-8"
    )
    return path


def eval_argv(server: SimulatedServer, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *command(),
        "eval",
        "--data",
        str(data),
        "--out",
        str(out),
        "--policy-url",
        server.base_url,
        "--policy-model",
        "sim-policy",
        "--prompt-format",
        POLICY_FORMAT,
        "--prm-model",
        "sim-prm",
        "--prm-prompt-format",
        PRM_FORMAT,
        "--no-progress",
        "--grading-workers",
        "1",
        *extra,
    ]


async def run(argv: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), NO_HANG_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def results_in(journal: Path) -> list[tuple[str, str]]:
    keys = []
    for line in journal.read_bytes().split(b"\n"):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the torn last line of a killed run
        if event.get("type") == "result":
            keys.append((event["job"], event["problem_id"]))
    return keys


@pytest.fixture
def records(math500: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # integer answers only, so each wrong answer is plainly wrong
    return [r for r in math500 if r["answer"].isdigit()][:40]


async def test_eval_end_to_end(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    chosen = records[:12]
    # even problems never slip (always right), odd ones always slip (always wrong)
    problems = {
        r["problem"]: SimProblem(answer=r["answer"], n_steps=2, slip_rate=float(i % 2))
        for i, r in enumerate(chosen)
    }
    data = write_data(tmp_path / "data.jsonl", chosen)
    out = tmp_path / "run"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        argv = eval_argv(
            server, data, out, "--strategy", "weighted_best_of_n", "--strategy", "dvts@4"
        )
        code, stdout, stderr = await run([*argv, "--n", "1", "2", "4"])
    assert code == 0, stderr
    report = orjson.loads((out / "report.json").read_bytes())
    accuracy = {
        (line["label"], p["n"]): (p["correct"], p["done"])
        for line in report["lines"]
        for p in line["points"]
    }
    half = (6, 12)
    assert accuracy == {
        **{
            (label, n): half
            for label in ("majority", "best_of_n", "weighted_best_of_n")
            for n in (1, 2, 4)
        },
        **{(label, 4): half for label in ("dvts", "dvts/majority", "dvts/best")},
    }
    assert [(j["key"], j["done"], j["errors"]) for j in report["jobs"]] == [
        ("weighted_best_of_n@4", 12, 0),
        ("dvts@4", 12, 0),
    ]
    assert report["jobs"][0]["per_problem"]["requests"] >= 2  # generation + scoring
    keys = results_in(out / "journal.jsonl")
    assert len(keys) == 24 and len(set(keys)) == 24
    assert "weighted_best_of_n  weighted   50.0  50.0  50.0" in stdout
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    logged = [orjson.loads(line) for line in (out / "eval.log").read_bytes().splitlines()]
    assert Counter(e["event"] for e in logged)["eval.graded"] == 24
    assert all("timestamp" in e and "level" in e for e in logged)


async def test_killed_halfway_then_resumed(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    problems = {
        r["problem"]: SimProblem(answer=r["answer"], n_steps=3, slip_rate=0.3) for r in records
    }
    data = write_data(tmp_path / "data.jsonl", records)
    out = tmp_path / "run"
    journal = out / "journal.jsonl"
    # slow enough that the kill lands mid-run: every engine iteration takes 3 ms
    latency = LatencyModel.constant(0.003)
    async with SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency) as server:
        argv = eval_argv(
            server,
            data,
            out,
            "--strategy",
            "weighted_best_of_n",
            "--n",
            "1",
            "2",
            "4",
            "--max-problems-in-flight",
            "2",
        )
        # its own process group, so the kill takes its grading workers too
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        async with asyncio.timeout(NO_HANG_S):
            while not journal.exists() or len(results_in(journal)) < len(records) // 2:
                assert proc.returncode is None, "the run ended before it could be killed"
                await asyncio.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        before = results_in(journal)
        assert len(records) // 2 <= len(before) < len(records)
        assert len(set(before)) == len(before)

        code, stdout, stderr = await run([*argv, "--resume"])
        assert code == 0, stderr
        after = results_in(journal)
        assert len(after) == len(records)  # nothing redone, nothing lost
        assert set(after) == {("weighted_best_of_n@4", r["unique_id"]) for r in records}
        assert after[: len(before)] == before
        resumed = len(records) - len(before)
        assert f"{resumed} solved now, {len(before)} from the journal" in stdout
        report = orjson.loads((out / "report.json").read_bytes())
        assert report["jobs"][0]["done"] == len(records)

        # the same run with another seed is refused before any request
        requests = sum(server.stats.routes.values())
        code, _, stderr = await run([*argv, "--resume", "--seed", "1"])
        assert code == 2
        assert "cannot resume" in stderr and "seed: 0 (journal) vs 1 (now)" in stderr
        assert sum(server.stats.routes.values()) == requests
        # and a second plain resume has nothing left to do
        code, stdout, _ = await run([*argv, "--resume"])
        assert code == 0 and f"0 solved now, {len(records)} from the journal" in stdout
        assert len(results_in(journal)) == len(records)


async def test_an_endpoints_file_and_an_existing_run_kept_without_resume(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    chosen = records[:2]
    problems = {r["problem"]: SimProblem(answer=r["answer"], n_steps=1) for r in chosen}
    data = write_data(tmp_path / "data.jsonl", chosen)
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        endpoints = tmp_path / "endpoints.json"
        policy = {"prompt_format": POLICY_FORMAT.replace(r"\n", "\n")}
        endpoints.write_text(
            json.dumps({"policy": {"base_url": server.base_url, "model": "sim-policy", **policy}})
        )
        argv = [
            *command(),
            "eval",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--endpoints",
            str(endpoints),
            "--strategy",
            "majority",
            "--n",
            "2",
        ]
        code, stdout, stderr = await run(argv)
        assert code == 0, stderr
        assert "majority@2: 2 solved now, 0 from the journal" in stdout
        code, _, stderr = await run(argv)
    assert code == 2 and "already holds a run" in stderr and "--resume" in stderr
    assert len(results_in(tmp_path / "run" / "journal.jsonl")) == 2
