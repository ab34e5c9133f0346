"""The best-of-N family (majority, best-of-N, weighted best-of-N) against in-memory fakes:
exact answers, ties, equivalent answer forms, lost branches and the n = 1..N curve."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.api import run_search
from asynctts.equivalence import Equivalence
from asynctts.errors import SolveFailed
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.best_of_n import BestOfN
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.strategy import Strategy
from asynctts.search.weighted_best_of_n import WeightedBestOfN
from asynctts.solution import Solution
from asynctts.testing.fakes import FakePolicy, FakePRM


def sample_index(path: Path, per_request: int) -> int:
    group, i = path.key[0], path.key[1]
    return group * per_request + i


def scripted_policy(answers: Sequence[str | None], per_request: int) -> FakePolicy:
    """Sample i writes two steps and ends with \\boxed{answers[i]} (no box when None)."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        answer = answers[sample_index(path, per_request)]
        if not path.steps:
            return f"Step 1: work {rng.randrange(1000)}.\n\n", Finish.STEP
        if answer is None:
            return "I give up.", Finish.EOS
        return f"The answer is $\\boxed{{{answer}}}$.", Finish.EOS

    return FakePolicy(step)


def scripted_prm(values: Sequence[float], per_request: int) -> FakePRM:
    """Every step of sample i scores values[i] (so last = min = value)."""
    return FakePRM(lambda path, _step: values[sample_index(path, per_request)])


async def run(
    strategy: Strategy,
    answers: Sequence[str | None],
    equivalence: Equivalence,
    values: Sequence[float] | None = None,
    policy: FakePolicy | None = None,
    prm: FakePRM | None = None,
) -> Solution:
    per_request = getattr(strategy, "per_request", 16)
    return await run_search(
        problem_id="t",
        problem="?",
        strategy=strategy,
        n=len(answers),
        generate=policy or scripted_policy(answers, per_request),
        score=prm or scripted_prm(values or [0.5] * len(answers), per_request),
        equivalence=equivalence,
        ledger=Ledger(),
    )


async def test_majority_groups_equivalent_forms(equivalence: Equivalence) -> None:
    # "0.5" and "\frac{1}{2}" are one group of 2; "3" has 2 as well but is seen later
    sol = await run(MajorityVote(), ["7", "\\frac{1}{2}", "3", "0.5", "3"], equivalence)
    assert sol.answer == "\\frac{1}{2}"
    assert [c.group for c in sol.candidates] == [0, 1, 2, 1, 2]
    assert sol.votes().majority == "\\frac{1}{2}"


async def test_majority_tie_goes_to_first_group_seen(equivalence: Equivalence) -> None:
    sol = await run(MajorityVote(), ["4", "5", "5", "4"], equivalence)
    assert sol.answer == "4"


async def test_majority_ignores_samples_without_answer(equivalence: Equivalence) -> None:
    sol = await run(MajorityVote(), [None, None, "9", None], equivalence)
    assert sol.answer == "9"
    assert [c.answer for c in sol.candidates] == [None, None, "9", None]


async def test_majority_never_calls_the_prm(equivalence: Equivalence) -> None:
    prm = scripted_prm([1.0] * 4, 16)
    sol = await run(MajorityVote(), ["1", "1", "2", "2"], equivalence, prm=prm)
    assert prm.calls == 0
    assert all(c.value is None for c in sol.candidates)
    assert sol.votes().best is None and sol.votes().weighted is None


async def test_best_of_n_takes_highest_value(equivalence: Equivalence) -> None:
    sol = await run(BestOfN(), ["1", "2", "2", "3"], equivalence, [0.2, 0.9, 0.1, 0.8])
    assert sol.answer == "2"
    assert [c.value for c in sol.candidates] == [0.2, 0.9, 0.1, 0.8]


async def test_best_of_n_tie_goes_to_first_sampled(equivalence: Equivalence) -> None:
    sol = await run(BestOfN(), ["1", "2", "3"], equivalence, [0.5, 0.7, 0.7])
    assert sol.answer == "2"


async def test_best_of_n_aggregate_min_vs_last(equivalence: Equivalence) -> None:
    # sample 0: steps score (0.1, 0.9); sample 1: (0.6, 0.6)
    prm = FakePRM(lambda path, i: [(0.1, 0.9), (0.6, 0.6)][path.key[1]][i])
    last = await run(BestOfN(aggregate="last"), ["1", "2"], equivalence, prm=prm)
    low = await run(BestOfN(aggregate="min"), ["1", "2"], equivalence, prm=prm)
    prod = await run(BestOfN(aggregate="prod"), ["1", "2"], equivalence, prm=prm)
    assert (last.answer, low.answer, prod.answer) == ("1", "2", "2")
    assert low.candidates[0].value == 0.1
    assert prod.candidates[0].value == pytest.approx(0.09)


async def test_weighted_sums_values_per_equivalent_group(equivalence: Equivalence) -> None:
    # "1/2" group: 0.3 + 0.3 + 0.3 = 0.9 beats the single best "4" at 0.8
    answers = ["4", "0.5", "\\frac12", "\\dfrac{1}{2}"]
    sol = await run(WeightedBestOfN(), answers, equivalence, [0.8, 0.3, 0.3, 0.3])
    assert sol.answer in {"0.5", "\\frac{1}{2}"}
    assert sol.candidates[1].group == sol.candidates[2].group == sol.candidates[3].group
    assert sol.votes().best == "4"
    assert sol.votes().majority == sol.answer


async def test_weighted_tie_goes_to_first_group(equivalence: Equivalence) -> None:
    sol = await run(WeightedBestOfN(), ["8", "9"], equivalence, [0.4, 0.4])
    assert sol.answer == "8"


async def test_curve_is_the_votes_of_each_prefix(equivalence: Equivalence) -> None:
    answers = ["1", "2", "2", "3", "3", "3", "2", "2"]
    values = [0.9, 0.1, 0.1, 0.5, 0.5, 0.5, 0.95, 0.1]
    sol = await run(WeightedBestOfN(per_request=3), answers, equivalence, values)
    curve = sol.curve()
    assert [v.n for v in curve] == [1, 2, 4, 8]
    assert [v.majority for v in curve] == ["1", "1", "2", "2"]
    assert [v.best for v in curve] == ["1", "1", "1", "2"]
    # weighted at 4: "1"=0.9, "2"=0.2, "3"=0.5; at 8: "2"=1.25, "3"=1.5, "1"=0.9
    assert [v.weighted for v in curve] == ["1", "1", "1", "3"]
    assert sol.answer == "3"


async def test_curve_includes_budget_that_is_not_a_power_of_two(
    equivalence: Equivalence,
) -> None:
    sol = await run(MajorityVote(), ["1", "2", "2", "3", "3", "3"], equivalence)
    assert [v.n for v in sol.curve()] == [1, 2, 4, 6]
    assert [v.majority for v in sol.curve()] == ["1", "1", "2", "3"]


async def test_samples_go_out_in_groups_of_per_request(equivalence: Equivalence) -> None:
    policy = scripted_policy(["1"] * 10, per_request=4)
    await run(MajorityVote(per_request=4), ["1"] * 10, equivalence, policy=policy)
    assert sorted(policy.meter.log) == [((0,), 4, True), ((1,), 4, True), ((2,), 2, True)]


async def test_a_lost_group_is_recorded_and_the_rest_answer(equivalence: Equivalence) -> None:
    answers = ["1", "1", "2", "2", "2", "2"]
    policy = scripted_policy(answers, per_request=2)
    policy.fail = lambda path: path.key == (1,)
    sol = await run(MajorityVote(per_request=2), answers, equivalence, policy=policy)
    assert [(b.index, b.branch, b.stage) for b in sol.lost] == [
        (2, "1.0", "generating"),
        (3, "1.1", "generating"),
    ]
    assert [c.index for c in sol.candidates] == [0, 1, 4, 5]
    assert sol.answer == "1"  # tie 2:2 between "1" (first) and "2"
    assert "injected failure" in sol.lost[0].reason


async def test_scoring_failure_loses_one_sample(equivalence: Equivalence) -> None:
    prm = FakePRM(lambda path, i: 0.9 if path.key == (0, 1) else 0.2)
    prm.fail = lambda path: path.key == (0, 1)
    sol = await run(BestOfN(), ["1", "2", "3"], equivalence, prm=prm)
    assert [(b.branch, b.stage) for b in sol.lost] == [("0.1", "scoring")]
    assert sol.answer == "1"


async def test_all_branches_lost_raises_solve_failed(equivalence: Equivalence) -> None:
    policy = scripted_policy(["1", "2"], per_request=16)
    policy.fail = lambda path: True
    with pytest.raises(SolveFailed, match="all 2 branches lost"):
        await run(MajorityVote(), ["1", "2"], equivalence, policy=policy)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    per_request=st.integers(1, 9),
    seed=st.integers(0, 3),
)
async def test_exactly_n_samples_in_generation_order_and_seeded(
    n: int, per_request: int, seed: int
) -> None:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.steps) < 2:
            return f"s{rng.randrange(10**6)}\n\n", Finish.STEP
        return f"$\\boxed{{{rng.randrange(3)}}}$", Finish.EOS

    async def once() -> list[Path]:
        policy = FakePolicy(step, seed=seed)
        results = await MajorityVote(per_request=per_request).run(
            Path(), n, policy, FakePRM(lambda p, i: 0.0)
        )
        assert policy.calls == -(-n // per_request)
        return [r for r in results if isinstance(r, Path)]

    first, second = await once(), await once()
    assert len(first) == n
    assert [p.key for p in first] == [(i // per_request, i % per_request) for i in range(n)]
    assert first == second
