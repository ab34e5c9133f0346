"""compute_optimal over the two protocols: the probe (of the table's size for the budget)
decides; a settled probe ends the search, an unsettled one runs the table's choice for its bin
with the rest of the budget; the probe's samples stay candidates; lost probe samples are values
in their place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from asynctts.calibration import (
    PROBE,
    CalibrationTable,
    Outcome,
    ProbeRecord,
    ProblemRecord,
    build_table,
    probe_sizes,
)
from asynctts.errors import BranchLost, ConfigError
from asynctts.protocols import Path
from asynctts.search.compute_optimal import ComputeOptimal
from asynctts.testing import SimPolicy, SimPRM, SimProblem
from asynctts.testing.sim_model import SimModel

EASY = "What is 6 times 7?"
HARD = "What is the smallest prime above 1000?"
BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


def table(
    probe: int | Mapping[int, int] = 8, budgets: Sequence[int] = (16,), hard_choice: str = BEAM
) -> CalibrationTable:
    """Two bins split at a probe value of 0.55 (every probe size reads alike): best-of-N
    above, `hard_choice` below."""

    def right(option: str, value: float) -> Outcome:
        return Outcome(option == (BON if value > 0.5 else hard_choice), 1.0, 1.0)

    sizes = set(probe_sizes(probe, budgets).values())
    records = [
        ProblemRecord(
            problem_id=f"p{i}",
            probes={k: ProbeRecord(value, 0.5, right(PROBE, value)) for k in sizes},
            pass_at_1=None,
            outcomes={(option, n): right(option, value) for option in (BON, BEAM) for n in budgets},
        )
        for i, value in enumerate([0.2, 0.25, 0.3, 0.55, 0.6, 0.65])
    ]
    return build_table(records, identity={}, probe=probe, budgets=budgets, bins=2, folds=2)


@pytest.fixture
def sim() -> SimModel:
    return SimModel(
        {
            EASY: SimProblem("42", n_steps=3, slip_rate=0.0),
            HARD: SimProblem("1009", n_steps=4, slip_rate=0.6, wrong_top=0.2),
        }
    )


class Counting:
    """The policy, counting the samples it was asked for."""

    def __init__(self, policy: SimPolicy) -> None:
        self.policy = policy
        self.samples = 0

    async def __call__(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        self.samples += k
        return await self.policy(path, k, to_end=to_end)


async def test_a_settled_probe_ends_the_search(sim: SimModel) -> None:
    policy = Counting(SimPolicy(sim, EASY))
    strategy = ComputeOptimal(table=table())
    decision, results = await strategy.run_deciding(Path(), 16, policy, SimPRM(sim, EASY))
    assert policy.samples == 8 and len(results) == 8
    assert decision["early_exit"] is True and decision["samples"] == 8
    assert decision["agreement"] == 1.0 and (decision["bin"], decision["choice"]) == (1, BON)
    assert all(isinstance(r, Path) and r.key[0] == 0 for r in results)


async def test_an_open_probe_runs_the_bins_choice_with_the_rest(sim: SimModel) -> None:
    policy = Counting(SimPolicy(sim, HARD))
    strategy = ComputeOptimal(table=table())
    decision, results = await strategy.run_deciding(Path(), 16, policy, SimPRM(sim, HARD))
    assert decision["early_exit"] is False and decision["agreement"] < 1.0
    assert decision["predicted"] < 0.5 and decision["bin"] == 2
    assert (decision["choice"], decision["samples"]) == (BEAM, 16)
    probe, rest = results[:8], results[8:]
    assert all(isinstance(r, Path) and r.key[0] == 0 for r in probe)
    assert rest and all(isinstance(r, Path) and r.key[0] == 1 for r in rest)
    # the probe's 8 samples, then beam search's 8 steps an iteration until all finished
    depth = max(len(r.steps) for r in rest if isinstance(r, Path))
    assert policy.samples == 8 + 8 * depth


async def test_a_bin_whose_choice_is_the_probe_stops_there(sim: SimModel) -> None:
    strategy = ComputeOptimal(table=table(hard_choice="probe"))
    decision, results = await strategy.run_deciding(
        Path(), 16, SimPolicy(sim, HARD), SimPRM(sim, HARD)
    )
    assert (decision["choice"], decision["early_exit"], decision["samples"]) == ("probe", False, 8)
    assert len(results) == 8


async def test_without_early_exit_the_choice_always_runs(sim: SimModel) -> None:
    strategy = ComputeOptimal(table=table(), early_exit=False)
    decision, results = await strategy.run_deciding(
        Path(), 16, SimPolicy(sim, EASY), SimPRM(sim, EASY)
    )
    assert (decision["early_exit"], decision["choice"], decision["samples"]) == (False, BON, 16)
    assert len(results) == 16


async def test_more_samples_come_in_doubling_batches_until_the_answers_settle() -> None:
    problem = SimProblem("42", n_steps=3, slip_rate=0.12)  # ~68% of samples right
    sim = SimModel({EASY: problem})
    strategy = ComputeOptimal(table=table(budgets=(64,), hard_choice=BON))
    stops = []
    for seed in range(12):
        policy = SimPolicy(sim, EASY, seed)
        decision, results = await strategy.run_deciding(Path(), 64, policy, SimPRM(sim, EASY))
        samples = decision["samples"]
        assert decision["choice"] == BON and samples in (8, 16, 32, 64)
        assert len(results) == samples and decision["early_exit"] == (samples < 64)
        assert [r.key[0] for r in results] == [0] * 8 + [
            batch
            for batch, size in ((1, 8), (2, 16), (3, 32))
            if 8 + size <= samples
            for _ in range(size)
        ]
        stops.append(samples)
    assert {16, 32} & set(stops), stops  # some settle only after a batch or two


async def test_lost_probe_samples_stay_in_their_place(sim: SimModel) -> None:
    policy = SimPolicy(sim, HARD)

    async def failing_first_group(
        path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        if path.key == (0, 0):  # the probe's first request (per_request=4: samples 0-3)
            raise BranchLost(path.key, "generating", "HTTP 500")
        return await policy(path, k, to_end=to_end)

    strategy = ComputeOptimal(table=table(), per_request=4)
    decision, results = await strategy.run_deciding(
        Path(), 16, failing_first_group, SimPRM(sim, HARD)
    )
    assert [isinstance(r, BranchLost) for r in results[:8]] == [True] * 4 + [False] * 4
    assert decision["choice"] == BEAM  # read from the 4 samples that came back


@pytest.mark.parametrize("problem", [EASY, HARD])
async def test_the_probe_has_the_tables_size_for_the_budget(sim: SimModel, problem: str) -> None:
    strategy = ComputeOptimal(table=table(probe={8: 2, 16: 4}, budgets=(8, 16)))
    for n, k in ((8, 2), (12, 2), (16, 4), (64, 4)):
        policy = Counting(SimPolicy(sim, problem))
        decision, results = await strategy.run_deciding(Path(), n, policy, SimPRM(sim, problem))
        assert decision["probe"] == k
        assert [r.key[0] for r in results[:k] if isinstance(r, Path)] == [0] * k
        assert all(isinstance(r, Path) and r.key[0] != 0 for r in results[k:])
        assert len(results) == decision["samples"] <= n
        if decision["early_exit"] or decision["choice"] == PROBE:
            assert policy.samples == decision["samples"]


def test_budgets_below_the_table_are_refused() -> None:
    # a table's probe at N is at most N: the smallest calibrated budget is the only floor
    strategy = ComputeOptimal(table=table(probe=8, budgets=(16,)))
    for n in (4, 12):
        with pytest.raises(
            ConfigError, match=rf"budget n={n} is below the calibration table's smallest budget 16"
        ):
            strategy.check_budget(n)
    strategy.check_budget(64)  # above the largest: the largest calibrated budget answers
    small = ComputeOptimal(table=table(probe={8: 2, 16: 4}, budgets=(8, 16)))
    small.check_budget(8)
    with pytest.raises(ConfigError, match=r"budget n=7 is below the calibration table's"):
        small.check_budget(7)
