"""`asynctts eval --seeds` end to end as a subprocess over real HTTP against the simulated
server: one ordinary run per request seed over the same problems, the report pooled over them
(the mean of the seeds' accuracies), the seed reaching the requests, `asynctts report` of the
seeds directory giving the same report, and `--resume` with nothing left sampling nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from helpers_cli import command, results_in, run, sim_argv, write_data

from asynctts.eval.journal import last_per_key, read_journal
from asynctts.testing import SimProblem, SimulatedServer

SEEDS = (0, 1, 2)


def solving_requests(server: SimulatedServer) -> int:
    """Requests that sample or score (the endpoints' model checks on opening aside)."""
    return server.stats.routes["/v1/completions"] + server.stats.routes["/pooling"]


def answers_of(run_dir: Path) -> dict[str, str | None]:
    """Each problem's answer in a seed run's journal."""
    contents = read_journal(run_dir / "journal.jsonl")
    return {pid: r["answer"] for (_, pid), r in sorted(last_per_key(contents.events).items())}


async def test_eval_seeds_end_to_end(tmp_path: Path, math500: list[dict[str, Any]]) -> None:
    chosen = [r for r in math500 if r["answer"].isdigit()][:6]
    # wrong half the time: the request seed decides which samples slip
    problems = {
        r["problem"]: SimProblem(answer=r["answer"], n_steps=2, slip_rate=0.5) for r in chosen
    }
    data = write_data(tmp_path / "data.jsonl", chosen)
    out = tmp_path / "seeds"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        argv = [
            *sim_argv("eval", server, data, out, "--strategy", "weighted_best_of_n"),
            *("--n", "1", "2", "--shuffle", "--seed", "5", "--limit", "4"),
            *("--seeds", *map(str, SEEDS)),
        ]
        code, stdout, stderr = await run(argv)
        assert code == 0, stderr
        runs = [out / f"seed-{seed}" for seed in SEEDS]
        configs = [read_journal(r / "journal.jsonl").config or {} for r in runs]
        identities = [config["identity"] for config in configs]
        # the request seed is each run's; the selection (shuffled with --seed 5) is shared
        assert [i["seed"] for i in identities] == list(SEEDS)
        assert all(i["selection"] == identities[0]["selection"] for i in identities)
        assert identities[0]["selection"]["shuffle_seed"] == 5
        for run_dir in runs:
            keys = results_in(run_dir / "journal.jsonl")
            assert len(keys) == 4 and len(set(keys)) == 4
            assert (run_dir / "report.json").exists() and (run_dir / "accuracy.png").exists()
        assert len({tuple(sorted(answers_of(r))) for r in runs}) == 1  # the same problems
        assert len({tuple(answers_of(r).values()) for r in runs}) > 1  # not the same answers

        pooled = orjson.loads((out / "report.json").read_bytes())
        assert [s["seed"] for s in pooled["seeds"]] == list(SEEDS)
        assert all(s["finished"] for s in pooled["seeds"])
        seed_reports = [orjson.loads((r / "report.json").read_bytes()) for r in runs]
        for at, line in enumerate(pooled["lines"]):
            for index, point in enumerate(line["points"]):
                seeds = [s["lines"][at]["points"][index]["accuracy"] for s in seed_reports]
                assert [s["accuracy"] for s in point["per_seed"]] == seeds
                assert math.isclose(point["accuracy"], math.fsum(seeds) / len(seeds))
                low, high = point["interval"]
                assert low <= point["accuracy"] <= high
                assert (point["done"], point["problems"]) == (12, 4)
        assert [(j["key"], j["planned"], j["done"]) for j in pooled["jobs"]] == [
            ("weighted_best_of_n@2", 12, 12)
        ]
        assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
        text = (out / "report.txt").read_text(encoding="utf-8")
        assert "pooled over request seeds 0, 1, 2" in text
        assert text in stdout
        assert "seed 2: weighted_best_of_n@2: 4 solved now, 0 from the journal" in stdout

        requests = solving_requests(server)
        code, stdout, stderr = await run([*argv, "--resume"])
        assert code == 0, stderr
        assert solving_requests(server) == requests  # nothing left: nothing sampled or scored
        for seed in SEEDS:
            assert f"seed {seed}: weighted_best_of_n@2: 0 solved now, 4 from the journal" in stdout
        assert (out / "report.txt").read_text(encoding="utf-8") == text

    code, stdout, stderr = await run([*command(), "report", str(out)])
    assert code == 0, stderr
    assert stdout == text
