"""One token budget over a batch of compute_optimal problems, against the simulated server: the
run never spends more than the budget (also when the table under-predicts and the gate must
cut branches), a problem whose probe settled closes after it, the rest run their allotment,
and lost branches say why. Bad budgets are refused before anything is sent. `asynctts eval
--budget-tokens` runs it as a subprocess and reports the budget and its spend per bin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from helpers_cli import run as run_cli
from helpers_cli import sim_argv

from asynctts import ConfigError, Solution, Solver
from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT, Sampling
from asynctts.calibration import PROBE, CalibrationTable, Cell, ProbePart, table_identity
from asynctts.testing import SimProblem, SimulatedServer

from helpers_endpoints import endpoints, policy_of, prm_of

EASY = "What is 6 times 7?"
HARD = [f"Find the value of x in puzzle {i}." for i in range(4)]
BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"
# simulated solutions run to ~50 words (tokens): a bound of 100 per sample keeps the gate's
# holds near what requests cost
SAMPLING = Sampling(max_tokens=100)


PROBLEMS = {
    EASY: SimProblem("42", n_steps=3, slip_rate=0.0),
    **{
        text: SimProblem(str(100 + i), n_steps=4, slip_rate=0.5, wrong_top=0.2)
        for i, text in enumerate(HARD)
    },
}


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(prm_model="sim-prm", problems=PROBLEMS) as s:
        yield s


def table_for(server: SimulatedServer, beam_tokens: float) -> CalibrationTable:
    """One bin, budget 8, a probe of 4 samples (~380 tokens on these problems): beam search
    gains the most per token, best-of-N lies under the hull."""
    ends = endpoints(server)
    cells = (
        (BEAM, 0.6, beam_tokens),
        (BON, 0.4, 760.0),
        (PROBE, 0.3, 380.0),
    )
    return CalibrationTable(
        identity=table_identity(ends["policy"], ends["prm"], DEFAULT_SYSTEM_PROMPT),
        aggregate="last",
        settle_rule="count",
        confidence=0.95,
        budgets=(8,),
        probes={8: 4},
        parts={
            4: ProbePart(
                probe=4,
                edges=(),
                cells={(1, 8): tuple(Cell(o, a, t, 0.0, 10) for o, a, t in cells)},
                validated={(1, 8): Cell(*cells[0], 0.0, 10)},  # the choice, as valued
            )
        },
    )


async def run(server: SimulatedServer, table: CalibrationTable, budget: float) -> list[Solution]:
    items = [("easy", EASY)] + [(f"hard{i}", text) for i, text in enumerate(HARD)]
    async with Solver(policy=policy_of(server), prm=prm_of(server), sampling=SAMPLING) as solver:
        return [
            s
            async for s in solver.solve_many(
                items,
                strategy="compute_optimal",
                n=8,
                seed=0,
                calibration=table,
                budget_tokens=budget,
                max_problems_in_flight=2,
            )
        ]


def spend(solutions: list[Solution]) -> float:
    return sum(
        s.ledger.totals().completion_tokens + s.ledger.totals().prm_tokens for s in solutions
    )


async def test_a_generous_budget_runs_every_allotment_and_closes_the_settled_problem(
    server: SimulatedServer,
) -> None:
    solutions = await run(server, table_for(server, beam_tokens=1100.0), budget=20_000)
    by_id = {s.problem_id: s for s in solutions}
    assert solutions[0].problem_id == "easy"  # closed at its probe, before the others ran
    easy = by_id["easy"]
    assert easy.decision is not None and easy.answer == "42" and len(easy.candidates) == 4
    assert (easy.decision["early_exit"], easy.decision["allocated"]) == (True, PROBE)
    assert easy.decision["allocated_n"] == 4
    for i in range(len(HARD)):
        hard = by_id[f"hard{i}"]
        assert hard.decision is not None and hard.error is None and not hard.lost
        assert (hard.decision["allocated"], hard.decision["allocated_n"]) == (BEAM, 8)
        assert hard.decision["samples"] == 8 and hard.decision["early_exit"] is False
    assert spend(solutions) <= 20_000


@pytest.mark.parametrize("budget", [1_950, 2_600, 3_400])
async def test_the_gate_keeps_the_spend_within_the_budget_and_lost_branches_say_why(
    server: SimulatedServer, budget: float
) -> None:
    # the table says beam search costs 20 tokens after the probe: every hard problem is
    # allotted it, and the budget runs out under their requests
    solutions = await run(server, table_for(server, beam_tokens=40.0), budget=budget)
    assert len(solutions) == 5
    assert spend(solutions) <= budget
    hard = [s for s in solutions if s.problem_id != "easy"]
    assert all(s.decision is None or s.decision["allocated"] == BEAM for s in hard)
    lost = [b for s in solutions for b in s.lost]
    assert lost, "the budget should have cut some branches"
    assert all("batch budget exhausted" in b.reason for b in lost)
    assert all(b.reason.startswith("BatchBudgetExhausted: ") for b in lost)


async def test_bad_budgets_are_refused_before_anything_is_sent(server: SimulatedServer) -> None:
    table = table_for(server, beam_tokens=1100.0)
    async with Solver(policy=policy_of(server), prm=prm_of(server), sampling=SAMPLING) as solver:
        with pytest.raises(ConfigError, match=r"budget_tokens= is for strategy 'compute_opt"):
            async for _ in solver.solve_many([EASY], strategy="dvts", n=8, budget_tokens=1e4):
                pass
        with pytest.raises(ConfigError, match=r"budget_tokens=0: need a finite number > 0"):
            async for _ in solver.solve_many(
                [EASY], strategy="compute_optimal", n=8, calibration=table, budget_tokens=0
            ):
                pass
        with pytest.raises(
            ConfigError,
            match=r"budget_tokens=1000 is below the probes' expected spend of 1140 tokens "
            r"\(3 problems x 380",
        ):
            async for _ in solver.solve_many(
                [EASY, *HARD[:2]],
                strategy="compute_optimal",
                n=8,
                calibration=table,
                budget_tokens=1000,
            ):
                pass
    assert set(server.stats.routes) <= {"/v1/models"}  # nothing sampled or scored


def eval_argv(server: SimulatedServer, data: Path, out: Path, *extra: str) -> list[str]:
    return sim_argv("eval", server, data, out, "--max-tokens", str(SAMPLING.max_tokens), *extra)


async def test_eval_spends_one_budget_per_job_and_reports_it_per_bin(
    server: SimulatedServer, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": t, "answer": p.answer}) + "\n" for t, p in PROBLEMS.items()),
        encoding="utf-8",
    )
    table_path = tmp_path / "calibration.json"
    table_for(server, beam_tokens=40.0).save(table_path)
    out = tmp_path / "eval"
    flags = ("--strategy", "compute_optimal", "--n", "8", "--calibration", str(table_path))
    code, stdout, stderr = await run_cli(
        eval_argv(server, data, out, *flags, "--budget-tokens", "3000")
    )
    assert code == 0, stderr
    events = [orjson.loads(line) for line in (out / "journal.jsonl").read_bytes().splitlines()]
    (config,) = [e for e in events if e.get("type") == "config"]
    (job,) = config["identity"]["jobs"]
    assert job["budget_tokens"] == 3000
    results = [e for e in events if e.get("type") == "result"]
    assert len(results) == 5
    spent = sum(r["usage"]["completion_tokens"] + r["usage"]["prm_tokens"] for r in results)
    assert spent <= 3000
    cut = sum(
        "batch budget exhausted" in lost["reason"]
        for r in results
        for lost in r["solution"]["lost"]
    )
    assert (
        f"batch budget 3000 tokens: spent {spent:.0f} ({100 * spent / 3000:.1f}%), {cut}"
        " branches cut by it" in stdout
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    decisions = report["jobs"][0]["decisions"]
    assert decisions["budget_tokens"] == 3000 and decisions["spent"] == pytest.approx(spent)
    allotted = {
        f"{d['allocated']}@{d['allocated_n']}" if d["allocated"] != PROBE else PROBE
        for r in results
        if (d := r["solution"]["decision"]) is not None
    }
    assert set(decisions["by_bin"]["1"]["allotted"]) == allotted
    assert PROBE in allotted  # the settled problem

    # a budget without compute_optimal, or below the probes: refused before anything is sent
    before = dict(server.stats.routes)
    code, _, stderr = await run_cli(
        eval_argv(
            server,
            data,
            tmp_path / "bad",
            "--strategy",
            "weighted_best_of_n",
            "--n",
            "8",
            "--budget-tokens",
            "3000",
        )
    )
    assert code == 2
    assert "a batch token budget is only for strategy 'compute_optimal'" in stderr
    code, _, stderr = await run_cli(
        eval_argv(server, data, tmp_path / "bad", *flags, "--budget-tokens", "1000")
    )
    assert code == 2
    assert (
        "compute_optimal@8: budget_tokens=1000 is below the probes' expected spend of 1900 tokens"
        " (5 problems x 380" in stderr
    )
    assert dict(server.stats.routes) == before and not (tmp_path / "bad").exists()
