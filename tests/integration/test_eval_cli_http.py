"""`asynctts eval` end to end as a subprocess over real HTTP against the simulated server:
exact accuracies and reports; a run killed with SIGKILL halfway and resumed ends with exactly
one result per problem; resuming with another configuration is refused without a request;
grades that timed out are decided on resume without sampling again; resuming under other
asynctts or math-verify versions is refused unless allowed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_cli import (
    NO_HANG_S,
    POLICY_FORMAT,
    command,
    results_in,
    run,
    sim_argv,
    write_data,
)

from asynctts.eval.journal import last_per_key, read_journal
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer
from asynctts.verify_worker import FAULT_ENV


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
        argv = sim_argv(
            "eval", server, data, out, "--strategy", "weighted_best_of_n", "--strategy", "dvts@4"
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
        argv = sim_argv(
            "eval",
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


def sampling_requests(server: SimulatedServer) -> int:
    return server.stats.routes["/v1/completions"] + server.stats.routes["/pooling"]


async def test_timed_out_grades_are_decided_on_resume(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    chosen = records[:4]
    problems = {
        r["problem"]: SimProblem(answer=r["answer"], n_steps=1, slip_rate=0.0) for r in chosen
    }
    data = write_data(tmp_path / "data.jsonl", chosen)
    out = tmp_path / "run"
    journal = out / "journal.jsonl"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        argv = sim_argv(
            "eval", server, data, out, "--strategy", "weighted_best_of_n", "--n", "1", "2"
        )
        # every grading worker dies on its task: no answer can be graded
        code, stdout, stderr = await run(argv, env={FAULT_ENV: "exit:3"})
        assert code == 0, stderr
        assert "weighted_best_of_n@2: 4 solved now, 0 from the journal (0 re-graded)" in stdout
        first = last_per_key(read_journal(journal).events)
        reasons = {g["reason"] for r in first.values() for gs in r["grades"].values() for g in gs}
        assert reasons == {"timeout"}
        sampled = sampling_requests(server)

        code, stdout, stderr = await run([*argv, "--resume"])
        assert code == 0, stderr
        assert "weighted_best_of_n@2: 0 solved now, 4 from the journal (4 re-graded)" in stdout
        assert sampling_requests(server) == sampled  # graded from the journal, not re-solved
        events = read_journal(journal).events
        keys = results_in(journal)
        assert len(keys) == 8 and set(keys) == set(first)  # appended, the old lines kept
        latest = last_per_key(events)
        for key, old in first.items():
            new = latest[key]
            assert new["regraded_from_t"] == old["t"]
            assert {
                k: v for k, v in new.items() if k not in ("grades", "t", "regraded_from_t")
            } == {k: v for k, v in old.items() if k not in ("grades", "t")}
            for selection, grades in new["grades"].items():
                assert grades == [
                    {**g, "correct": True, "reason": None} for g in old["grades"][selection]
                ]
        report = orjson.loads((out / "report.json").read_bytes())
        for line in report["lines"]:
            assert [(p["correct"], p["done"], p["timeout"]) for p in line["points"]] == [
                (4, 4, 0),
                (4, 4, 0),
            ]

        # decided grades are final: the next resume has nothing to do
        code, stdout, _ = await run([*argv, "--resume"])
        assert code == 0 and "0 solved now, 4 from the journal (0 re-graded)" in stdout
        assert len(results_in(journal)) == 8


async def test_resuming_under_other_versions(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    chosen = records[:2]
    problems = {r["problem"]: SimProblem(answer=r["answer"], n_steps=1) for r in chosen}
    data = write_data(tmp_path / "data.jsonl", chosen)
    out = tmp_path / "run"
    journal = out / "journal.jsonl"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        argv = sim_argv("eval", server, data, out, "--strategy", "majority", "--n", "2")
        code, _, stderr = await run(argv)
        assert code == 0, stderr
        config, *rest = journal.read_bytes().splitlines(keepends=True)
        header = orjson.loads(config)
        now = header["versions"]
        assert set(now) == {"asynctts", "math-verify"} and all(now.values())
        # as if an older math-verify had graded the first half
        older = {**now, "math-verify": "0.0.1"}
        journal.write_bytes(orjson.dumps({**header, "versions": older}) + b"\n" + b"".join(rest))
        requests = sum(server.stats.routes.values())

        code, _, stderr = await run([*argv, "--resume"])
        assert code == 2
        assert (
            f"its results were written with asynctts {now['asynctts']}, math-verify 0.0.1;"
            f" this is asynctts {now['asynctts']}, math-verify {now['math-verify']}."
        ) in stderr
        assert "--allow-version-change" in stderr
        assert sum(server.stats.routes.values()) == requests  # refused before any request

        code, stdout, stderr = await run([*argv, "--resume", "--allow-version-change"])
        assert code == 0, stderr
        assert "majority@2: 0 solved now, 2 from the journal (0 re-graded)" in stdout
    change = [e for e in read_journal(journal).events if e["type"] == "versions"]
    assert [(e["previous"], e["versions"]) for e in change] == [(older, now)]
    assert orjson.loads((out / "report.json").read_bytes())["versions"] == [older, now]
    assert (
        f"Versions: asynctts {now['asynctts']}, math-verify 0.0.1;"
        f" then asynctts {now['asynctts']}, math-verify {now['math-verify']}\n"
    ) in stdout
