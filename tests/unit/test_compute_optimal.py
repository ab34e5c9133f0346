"""compute_optimal over the two protocols: the probe decides; a settled probe ends the search,
an unsettled one runs the table's choice for its bin with the rest of the budget; the probe's
samples stay candidates; lost probe samples are values in their place."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from asynctts.calibration import CalibrationTable, Outcome, ProblemRecord, build_table
from asynctts.errors import BranchLost
from asynctts.protocols import Path
from asynctts.search.compute_optimal import ComputeOptimal
from asynctts.testing import SimPolicy, SimPRM, SimProblem
from asynctts.testing.sim_model import SimModel

EASY = "What is 6 times 7?"
HARD = "What is the smallest prime above 1000?"
BON = "weighted_best_of_n"
BEAM = "beam_search(width=4)"


def table(
    probe: int = 8, budgets: Sequence[int] = (16,), hard_choice: str = BEAM
) -> CalibrationTable:
    """Two bins split at a probe value of 0.55: best-of-N above, `hard_choice` below."""
    records = [
        ProblemRecord(
            problem_id=f"p{i}",
            predicted=value,
            agreement=0.5,
            pass_at_1=None,
            outcomes={
                (option, n): Outcome(option == (BON if value > 0.5 else hard_choice), 1.0, 1.0)
                for option in (BON, BEAM, "probe")
                for n in budgets
            },
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


def test_budgets_below_the_probe_or_the_table_are_refused() -> None:
    strategy = ComputeOptimal(table=table(probe=8, budgets=(16,)))
    with pytest.raises(ValueError, match=r"n=4 is below the probe of 8 samples"):
        strategy.check_budget(4)
    with pytest.raises(ValueError, match=r"n=12 is below the calibration table's smallest"):
        strategy.check_budget(12)
    strategy.check_budget(64)  # above the largest: the largest calibrated budget answers
