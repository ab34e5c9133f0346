"""asynctts.eval.pooled: exact pooled numbers on hand-made journals (2 problems x 3 request
seeds), an unfinished seed run reported as such, compute_optimal's decisions over seeds, the
refusals of runs that cannot be pooled, the text and plot of a seeds directory, and the
pooled accuracy as the mean of the seeds' accuracies within its interval (hypothesis)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.calibration import (
    CalibrationTable,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
)
from asynctts.errors import ConfigError
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.journal import Journal
from asynctts.eval.plan import ORACLE_SKIPPED, oracle_skipped, plan_jobs
from asynctts.eval.pooled import (
    is_seeds_dir,
    pool_runs,
    seed_run_dir,
    seed_run_dirs,
    write_pooled_report,
)
from asynctts.eval.report import RunData, load_run, summarize

T, F = True, False
FAMILY = plan_jobs(["weighted_best_of_n"], [1, 2])
(FAMILY_KEY,) = (job.key for job in FAMILY)


def identity(seed: int, jobs: Any = FAMILY, problems: int = 2, **changed: Any) -> dict[str, Any]:
    return {
        "jobs": [job.identity() for job in jobs],
        "data": {"sha256": "ab" * 32},
        "selection": {"problems": problems, "ids_sha256": "cd" * 32},
        "sampling": {"temperature": 0.8},
        "seed": seed,
        "endpoints": {"policy": {"model": "pol"}, "prm": {"model": "prm"}},
        **changed,
    }


def family_result(pid: str, seed: int, rights: tuple[bool, bool]) -> dict[str, Any]:
    """A result of the family job (n = 1, 2), every selection rule right as `rights` says;
    seed s generates 100 (s + 1) tokens and the PRM reads 10."""
    return {
        "type": "result",
        "job": FAMILY_KEY,
        "problem_id": pid,
        "level": int(pid[1:]),
        "subject": "Algebra",
        "error": None,
        "grades": {
            rule: [
                {"n": n, "answer": "x", "correct": right, "reason": None}
                for n, right in zip((1, 2), rights, strict=True)
            ]
            for rule in ("majority", "best", "weighted")
        },
        "usage": {"completion_tokens": 100.0 * (seed + 1), "prm_tokens": 10.0, "requests": 2},
        "lost": 0,
        "t": 1.0,
    }


# per seed: whether p1 and p2 are right at n = 1 and at n = 2
RIGHTS = {
    0: {"p1": (T, T), "p2": (F, F)},
    1: {"p1": (F, T), "p2": (T, T)},
    2: {"p1": (F, F), "p2": (F, F)},
}


def write_seed_run(run_dir: Path, config: dict[str, Any], events: list[dict[str, Any]]) -> Path:
    with Journal.open(run_dir / "journal.jsonl", config, resume=False) as journal:
        for event in events:
            journal.append(event)
    return run_dir


def write_seeds(root: Path, rights: dict[int, dict[str, tuple[bool, bool]]] = RIGHTS) -> Path:
    for seed, by_problem in rights.items():
        write_seed_run(
            seed_run_dir(root, seed),
            {"identity": identity(seed), "info": {"data_source": "data.jsonl"}},
            [family_result(pid, seed, r) for pid, r in by_problem.items()],
        )
    return root


def point(summary: dict[str, Any], label: str, n: int) -> dict[str, Any]:
    (line,) = (line for line in summary["lines"] if line["label"] == label)
    (found,) = (p for p in line["points"] if p["n"] == n)
    return found


def pooled(root: Path) -> dict[str, Any]:
    return pool_runs([load_run(path) for path in seed_run_dirs(root)], run_dir=root)


def test_two_problems_three_seeds(tmp_path: Path) -> None:
    summary = pooled(write_seeds(tmp_path))
    at2 = point(summary, "weighted_best_of_n", 2)
    # p1 right in 2 of 3 seeds, p2 in 1 of 3: (2/3 + 1/3) / 2, the mean of 1/2, 1 and 0
    assert at2["accuracy"] == pytest.approx(0.5)
    assert (at2["correct"], at2["done"], at2["problems"]) == (3, 6, 2)
    assert at2["interval"] == [1 / 3, 2 / 3]
    assert at2["per_seed"] == [
        {"seed": 0, "correct": 1, "done": 2, "accuracy": 0.5},
        {"seed": 1, "correct": 2, "done": 2, "accuracy": 1.0},
        {"seed": 2, "correct": 0, "done": 2, "accuracy": 0.0},
    ]
    at1 = point(summary, "weighted_best_of_n", 1)
    assert at1["accuracy"] == pytest.approx(1 / 3)  # p1 1 of 3, p2 1 of 3
    assert at1["interval"] == [1 / 3, 1 / 3]
    # tokens: seeds generate 100, 200 and 300 per problem at n = 2; the family's n = 1 is half
    assert at2["spend"] == {
        "policy_tokens": 200.0,
        "prm_tokens": 10.0,
        "tokens": 210.0,
        "generations": 2.0,
    }
    assert at1["spend"] == {
        "policy_tokens": 100.0,
        "prm_tokens": 5.0,
        "tokens": 105.0,
        "generations": 1.0,
    }
    assert point(summary, "majority", 2)["spend"]["prm_tokens"] == 0.0
    (line,) = (line for line in summary["lines"] if line["label"] == "weighted_best_of_n")
    assert line["by_level"] == {
        "1": {"correct": 2, "done": 3, "accuracy": pytest.approx(2 / 3)},
        "2": {"correct": 1, "done": 3, "accuracy": pytest.approx(1 / 3)},
    }
    assert line["by_subject"] == {"Algebra": {"correct": 3, "done": 6, "accuracy": 0.5}}
    (job,) = summary["jobs"]
    assert (job["planned"], job["done"], job["errors"]) == (6, 6, 0)
    assert job["total"]["completion_tokens"] == 1200.0
    assert job["per_problem"]["completion_tokens"] == 200.0  # the mean of the seeds' means
    assert [s["seed"] for s in summary["seeds"]] == [0, 1, 2]
    assert all(s["finished"] and s["done"] == {FAMILY_KEY: 2} for s in summary["seeds"])
    assert "seed" not in summary
    assert summary["planned_problems"] == 2


def test_paired_intervals_resample_the_same_problems(tmp_path: Path) -> None:
    summary = pooled(write_seeds(tmp_path))
    # every line over the same problems in id order: the same resamples, as `mean_interval`
    # of the per-problem values draws them
    for label, values in (("weighted_best_of_n", [2 / 3, 1 / 3]), ("majority", [2 / 3, 1 / 3])):
        bounds = mean_interval(values)
        assert point(summary, label, 2)["interval"] == [bounds.low, bounds.high]


def test_an_unfinished_seed_run_is_reported_and_counted_for_what_it_did(tmp_path: Path) -> None:
    rights = {**RIGHTS, 2: {"p1": (F, F)}}  # seed 2 was killed after p1
    summary = pooled(write_seeds(tmp_path, rights))
    at2 = point(summary, "weighted_best_of_n", 2)
    # p1: 2 of 3 seeds right; p2: 1 of the 2 seeds that did it
    assert at2["accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert (at2["correct"], at2["done"]) == (3, 5)
    assert at2["per_seed"][2] == {"seed": 2, "correct": 0, "done": 1, "accuracy": 0.0}
    assert [(s["seed"], s["finished"], s["done"]) for s in summary["seeds"]] == [
        (0, True, {FAMILY_KEY: 2}),
        (1, True, {FAMILY_KEY: 2}),
        (2, False, {FAMILY_KEY: 1}),
    ]
    (job,) = summary["jobs"]
    assert (job["planned"], job["done"]) == (6, 5)
    assert [(s["seed"], s["done"], s["planned"]) for s in job["per_seed"]] == [
        (0, 2, 2),
        (1, 2, 2),
        (2, 1, 2),
    ]


def test_a_seed_run_not_started_is_named_with_nothing_done(tmp_path: Path) -> None:
    write_seeds(tmp_path, {0: RIGHTS[0], 1: RIGHTS[1]})
    write_seed_run(seed_run_dir(tmp_path, 2), {"identity": identity(2), "info": {}}, [])
    summary = pooled(tmp_path)
    assert [(s["seed"], s["finished"]) for s in summary["seeds"]] == [
        (0, True),
        (1, True),
        (2, False),
    ]
    assert point(summary, "weighted_best_of_n", 2)["per_seed"][2]["accuracy"] is None
    assert point(summary, "weighted_best_of_n", 2)["accuracy"] == pytest.approx(0.75)


def test_the_text_json_and_plot_of_a_seeds_directory(tmp_path: Path) -> None:
    rights = {**RIGHTS, 2: {"p1": (F, F)}}
    write_seeds(tmp_path, rights)
    assert is_seeds_dir(tmp_path)
    assert not is_seeds_dir(seed_run_dir(tmp_path, 0))  # a run directory
    summary, text = write_pooled_report(tmp_path)
    assert orjson.loads((tmp_path / "report.json").read_bytes()) == orjson.loads(
        orjson.dumps(summary)
    )
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == text
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert text.startswith(
        f"Run {tmp_path}: 2 problems (data data.jsonl, sha256 abababababab), pooled over"
        " request seeds 0, 1, 2, policy pol, PRM prm\n"
    )
    seeds = text.split("\nSeed runs: ")[1].splitlines()
    assert seeds[1].split() == ["seed", "run", "done", "per", "job", "state", "wall", "s"]
    assert seeds[3].split()[2:] == ["weighted_best_of_n@2", "2/2", "finished", "0.0"]
    assert seeds[5].split()[2:] == ["weighted_best_of_n@2", "1/2", "unfinished", "0.0"]
    assert seeds[7:12] == [
        "Accuracy (%) per seed",
        "line                n  seed 0  seed 1  seed 2",
        "------------------  -  ------  ------  ------",
        "majority            1    50.0    50.0     0.0",
        "majority            2    50.0   100.0     0.0",
    ]
    spend = text.split("Accuracy with bootstrap intervals over problems")[1].splitlines()
    # p1 right in 1 of 3 seeds, p2 in 1 of 2: (1/3 + 1/2) / 2
    assert spend[3].split() == [
        "majority",
        "1",
        "41.7",
        "[33.3,",
        "50.0]",
        "100",
        "0",
        "100",
        "1.0",
    ]


def optimal_table(*, oracle: bool = False) -> CalibrationTable:
    records = [
        ProblemRecord(
            problem_id=f"c{i}",
            # stopping after the probe is wrong everywhere: never the choice
            probes={4: ProbeRecord(value, 0.5, Outcome(False, 1.0, 1.0))},
            pass_at_1=value if oracle else None,
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


def optimal_result(pid: str, tokens: float, level: int, exits: bool, choice: str) -> dict[str, Any]:
    return {
        "type": "result",
        "job": "compute_optimal@8",
        "problem_id": pid,
        "level": 1,
        "subject": "Algebra",
        "error": None,
        "grades": {
            rule: [{"n": 8, "answer": "x", "correct": True, "reason": None}]
            for rule in ("majority", "best", "weighted")
        },
        "usage": {"completion_tokens": tokens, "prm_tokens": 0.0, "requests": 3},
        "lost": 0,
        "solution": {
            "decision": {
                "bin": level,
                "predicted": 0.5,
                "agreement": 1.0,
                "probe": 4,
                "choice": choice,
                "early_exit": exits,
                "samples": 4 if exits else 8,
            }
        },
        "t": 1.0,
    }


def test_compute_optimal_decisions_pool_over_seeds(tmp_path: Path) -> None:
    jobs = plan_jobs(["compute_optimal"], [8], calibration=optimal_table(), budget_tokens=5000.0)
    best, dvts = "weighted_best_of_n", "dvts(width=4)"
    runs = [
        write_seed_run(
            seed_run_dir(tmp_path, seed),
            {"identity": identity(seed, jobs), "info": {}},
            [
                optimal_result("p1", 100.0, 1, seed == 0, best),
                optimal_result("p2", 300.0 * (seed + 1), 2, False, dvts),
            ],
        )
        for seed in (0, 1)
    ]
    summary = pool_runs([load_run(run) for run in runs], run_dir=tmp_path)
    decisions = summary["jobs"][0]["decisions"]
    assert {k: decisions[k] for k in ("problems", "early_exits", "choices", "mean_samples")} == {
        "problems": 4,
        "early_exits": 1,
        "choices": {best: 2, dvts: 2},
        "mean_samples": 7.0,
    }
    # the batch budget is each seed run's: spend 400 and 700, by bin (100 + 100) / 2 and
    # (300 + 600) / 2
    assert decisions["budget_tokens"] == 5000.0
    assert decisions["spent"] == 550.0
    assert [decisions["by_bin"][b]["spent"] for b in ("1", "2")] == [100.0, 450.0]
    assert [decisions["by_bin"][b]["early_exits"] for b in ("1", "2")] == [1, 0]


def test_the_oracle_line_pools_over_seeds_as_a_compared_line(tmp_path: Path) -> None:
    jobs = plan_jobs(
        ["weighted_best_of_n", "compute_optimal"], [8], calibration=optimal_table(oracle=True)
    )
    assert [job.key for job in jobs] == [
        "weighted_best_of_n@8",
        "compute_optimal@8",
        "compute_optimal/oracle@8",
    ]
    eight = [{"n": 8, "answer": "x", "correct": True, "reason": None}]
    family = {**family_result("p1", 0, (T, T)), "job": "weighted_best_of_n@8"}
    family["grades"] = {rule: eight for rule in ("majority", "best", "weighted")}
    runs = [
        write_seed_run(
            seed_run_dir(tmp_path, seed),
            {"identity": identity(seed, jobs, problems=1), "info": {}},
            [
                {  # seed 1's family run failed as a whole on p1
                    **family,
                    "candidate_correct": 0.0 if seed else 0.75,
                    "error": "SolveFailed: every branch was lost" if seed else None,
                },
                optimal_result("p1", 100.0, 2, False, "dvts(width=4)"),
                {
                    **optimal_result("p1", 50.0 * (seed + 1), 1, True, "weighted_best_of_n"),
                    "job": "compute_optimal/oracle@8",
                    "oracle_pass_at_1": None if seed else 0.75,
                },
            ],
        )
        for seed in (0, 1)
    ]
    summary = pool_runs([load_run(run) for run in runs], run_dir=tmp_path)
    (line,) = (ln for ln in summary["lines"] if ln["label"] == "compute_optimal/oracle")
    assert (line["strategy"], line["primary"]) == ("compute_optimal", True)
    (at8,) = line["points"]
    assert (at8["accuracy"], at8["spend"]["tokens"], at8["spend"]["generations"]) == (
        1.0,
        75.0,
        4.0,
    )
    # compared with the fixed lines at equal spend, as the predicted line is
    assert sorted({row["line"] for row in summary["equal_spend"]}) == [
        "compute_optimal",
        "compute_optimal/oracle",
    ]
    decisions = summary["jobs"][2]["decisions"]
    assert decisions["oracle_from"] == "weighted_best_of_n@8"
    assert decisions["predicted_bins"] == 1  # seed 1's family run had no pass@1 for it
    assert (decisions["problems"], decisions["by_bin"]["1"]["problems"]) == (2, 2)
    _, text = write_pooled_report(tmp_path, plot=False)
    assert (
        "bins of the true pass@1 (the share of weighted_best_of_n@8's candidates right); 1 solved"
        " with the predicted bins (their family run failed)\n"
    ) in text
    assert text.count("(bin 1: the highest pass@1)") == 1
    assert "No compute_optimal/oracle line" not in text


def test_a_pooled_report_says_why_it_has_no_oracle_line(tmp_path: Path) -> None:
    jobs = plan_jobs(["dvts", "compute_optimal"], [8], calibration=optimal_table(oracle=True))
    reason = oracle_skipped(jobs)
    assert reason == "oracle bins need the best-of-N family in the run: add weighted_best_of_n"
    runs = [
        write_seed_run(
            seed_run_dir(tmp_path, seed),
            {"identity": identity(seed, jobs, problems=1), "info": {ORACLE_SKIPPED: reason}},
            [optimal_result("p1", 100.0, 1, True, "weighted_best_of_n")],
        )
        for seed in (0, 1)
    ]
    assert pool_runs([load_run(run) for run in runs], run_dir=tmp_path)["oracle_skipped"] == reason
    _, text = write_pooled_report(tmp_path, plot=False)
    assert f"\nNo compute_optimal/oracle line: {reason}\n" in text


def run_data(run_dir: str, config_identity: dict[str, Any]) -> RunData:
    return RunData(Path(run_dir), {"identity": config_identity, "info": {}}, (), {}, False)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (
            identity(0),
            "runs/a and runs/b both ran request seed 0: pool each seed once",
        ),
        (
            identity(1, problems=3),
            "cannot pool runs/a and runs/b: their configurations differ other than by the"
            " request seed:\n  selection.problems: 2 vs 3\n",
        ),
        (
            identity(1, endpoints={"policy": {"model": "other"}, "prm": {"model": "prm"}}),
            'endpoints.policy.model: "pol" vs "other"',
        ),
        (identity(1, plan_jobs(["weighted_best_of_n"], [1, 4])), "jobs[0].key:"),
        (identity(1, sampling={"temperature": 1.0}), "sampling.temperature: 0.8 vs 1.0"),
    ],
)
def test_runs_that_differ_other_than_by_seed_are_refused(
    second: dict[str, Any], message: str
) -> None:
    runs = [run_data("runs/a", identity(0)), run_data("runs/b", second)]
    with pytest.raises(ConfigError) as caught:
        pool_runs(runs, run_dir="runs")
    assert message in str(caught.value)


def test_nothing_to_pool_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run to pool"):
        pool_runs([], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="no seed runs there"):
        write_pooled_report(tmp_path)
    empty = RunData(tmp_path, {"identity": {}, "info": {}}, (), {}, False)
    with pytest.raises(ConfigError, match="its journal holds no configuration"):
        pool_runs([empty], run_dir=tmp_path)


def runs_of(matrix: list[list[bool]]) -> list[RunData]:
    """One run per row (seed) of the family job, each problem of the row right or not at n=2."""
    runs = []
    for seed, row in enumerate(matrix):
        results = {
            (FAMILY_KEY, f"p{i + 1}"): family_result(f"p{i + 1}", seed, (F, right))
            for i, right in enumerate(row)
        }
        config = {"identity": identity(seed, problems=len(row)), "info": {}}
        runs.append(RunData(Path(f"seed-{seed}"), config, (), results, False))
    return runs


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda problems: st.lists(
            st.lists(st.booleans(), min_size=problems, max_size=problems), min_size=1, max_size=4
        )
    )
)
def test_pooled_accuracy_is_the_mean_of_the_seed_accuracies(matrix: list[list[bool]]) -> None:
    runs = runs_of(matrix)
    summary = pool_runs(runs, run_dir="pooled")
    for label in ("majority", "weighted_best_of_n"):
        pooled_point = point(summary, label, 2)
        seeds = [point(summarize(run), label, 2)["accuracy"] for run in runs]
        assert pooled_point["accuracy"] == pytest.approx(math.fsum(seeds) / len(seeds))
        assert [s["accuracy"] for s in pooled_point["per_seed"]] == seeds
        low, high = pooled_point["interval"]
        assert low - 1e-12 <= pooled_point["accuracy"] <= high + 1e-12
