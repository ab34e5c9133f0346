"""strategy="compute_optimal" through `solve` / `solve_many` against the simulated server: the
table is checked against the endpoints before anything is sampled, the decision is in the solution,
and the answer is the weighted vote over the probe and the choice together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asynctts import ConfigError, Solver, solve
from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT
from asynctts.calibration import (
    CalibrationTable,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
    table_identity,
)
from asynctts.testing import SimProblem, SimulatedServer

from helpers_endpoints import endpoints

EASY = "What is 6 times 7?"
HARD = "What is the smallest prime above 1000?"
BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    problems = {
        EASY: SimProblem("42", n_steps=3, slip_rate=0.0),
        HARD: SimProblem("1009", n_steps=4, slip_rate=0.6, wrong_top=0.2),
    }
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as s:
        yield s


def table_for(
    server: SimulatedServer,
    system_prompt: str | None,
    probes: dict[int, int] | None = None,
) -> CalibrationTable:
    """Best-of-N above a probe value of 0.55, beam search below; a probe of 8 at N=16 unless
    `probes` (budget -> size) says otherwise."""
    ends = endpoints(server)
    probes = probes or {16: 8}
    records = [
        ProblemRecord(
            problem_id=f"p{i}",
            # stopping after the probe is wrong everywhere: never the choice
            probes={k: ProbeRecord(value, 0.5, Outcome(False, 1.0, 1.0)) for k in probes.values()},
            pass_at_1=None,
            outcomes={
                (option, n): Outcome(option == (BON if value > 0.5 else BEAM), 1.0, 1.0)
                for option in (BON, BEAM)
                for n in probes
            },
        )
        for i, value in enumerate([0.2, 0.25, 0.3, 0.55, 0.6, 0.65])
    ]
    identity = table_identity(ends["policy"], ends["prm"], system_prompt)
    return build_table(
        records, identity=identity, probe=probes, budgets=list(probes), bins=2, folds=2
    )


async def test_each_problem_gets_its_own_decision(server: SimulatedServer, tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    table_for(server, DEFAULT_SYSTEM_PROMPT).save(path)
    async with Solver(**endpoints(server)) as solver:
        solutions = {
            s.problem_id: s
            async for s in solver.solve_many(
                [("easy", EASY), ("hard", HARD)],
                strategy="compute_optimal",
                n=16,
                seed=0,
                calibration=path,
            )
        }
    easy, hard = solutions["easy"], solutions["hard"]
    assert easy.strategy == "compute_optimal" and easy.answer == "42"
    assert easy.decision is not None and easy.decision["early_exit"] is True
    assert len(easy.candidates) == 8  # the probe alone
    assert hard.decision is not None and hard.decision["choice"] == BEAM
    assert hard.decision["bin"] == 2 and hard.decision["samples"] == 16
    assert len(hard.candidates) > 8  # the probe's samples are candidates beside the beams
    assert hard.to_dict()["decision"] == dict(hard.decision)
    assert hard.answer == hard.votes().weighted


async def test_the_probe_has_the_tables_size_for_each_budget(server: SimulatedServer) -> None:
    table = table_for(server, DEFAULT_SYSTEM_PROMPT, probes={8: 2, 16: 4})
    async with Solver(**endpoints(server)) as solver:
        for n, k in ((8, 2), (16, 4), (32, 4)):
            solution = await solver.solve(HARD, strategy="compute_optimal", n=n, calibration=table)
            decision = solution.decision
            assert decision is not None and decision["probe"] == k
            assert decision["choice"] == table.choose(decision["predicted"], n).label
            assert k <= decision["samples"] <= n


async def test_a_table_for_another_setup_is_refused_before_anything_is_sampled(
    server: SimulatedServer,
) -> None:
    other = table_for(server, "Another system prompt.")
    with pytest.raises(ConfigError, match=r"system_prompt: table 'Another system prompt.'"):
        await solve(EASY, strategy="compute_optimal", n=16, calibration=other, **endpoints(server))
    with pytest.raises(ConfigError, match=r"'compute_optimal' needs calibration=TABLE"):
        await solve(EASY, strategy="compute_optimal", n=16, **endpoints(server))
    with pytest.raises(ConfigError, match=r"calibration= is for strategy 'compute_optimal'"):
        await solve(EASY, strategy="dvts", n=16, calibration=other, **endpoints(server))
    with pytest.raises(ConfigError, match=r"budget n=4 is below the calibration table's smallest"):
        await solve(
            EASY,
            strategy="compute_optimal",
            n=4,
            calibration=table_for(server, DEFAULT_SYSTEM_PROMPT),
            **endpoints(server),
        )
    assert set(server.stats.routes) <= {"/v1/models"}  # nothing sampled or scored
