"""`Solution.answer`, `votes()` and `curve()` agree whatever was lost: every candidate sits
at a position below n, so the votes at the full budget are the answer's selection, for every
strategy and any pattern of failed generation and scoring requests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.api import run_search
from asynctts.equivalence import Equivalence
from asynctts.errors import SolveFailed
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.dvts import DVTS
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.particle_filter import ParticleFilter, WeightedParticleFilter
from asynctts.search.rebase import Rebase
from asynctts.search.revise import Revise
from asynctts.search.strategy import Strategy
from asynctts.search.weighted_best_of_n import WeightedBestOfN
from asynctts.solution import Solution, pick
from asynctts.testing.fakes import FakePolicy, FakePRM


def draw(seed: int, *what: object) -> float:
    return random.Random(repr((seed, *what))).random()


async def solve(
    strategy: Strategy, n: int, policy: FakePolicy, prm: FakePRM, equivalence: Equivalence
) -> Solution:
    return await run_search(
        problem_id="t",
        problem="?",
        strategy=strategy,
        n=n,
        generate=policy,
        score=prm,
        equivalence=equivalence,
        ledger=Ledger(),
    )


def assert_agree(sol: Solution, strategy: Strategy) -> None:
    n = sol.n
    assert sol.answer == pick(sol.votes(n), strategy.selection)
    assert sol.votes() == sol.votes(n)
    assert sol.curve()[-1] == sol.votes(n)
    indexes = [c.index for c in sol.candidates]
    assert all(i < n for i in indexes)
    assert len(set(indexes + [b.index for b in sol.lost])) == len(indexes) + len(sol.lost)


async def test_dvts_lost_expansion_does_not_push_a_candidate_out_of_the_votes(
    equivalence: Equivalence,
) -> None:
    """DVTS width 2, n = 4, one failed expansion in subtree 0: its lost branch used to sit
    between the subtrees' results, so subtree 1's last candidate fell past n and out of the
    votes (answer "1", votes().weighted "0")."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.steps) >= 2:
            return f"so $\\boxed{{{path.key[0]}}}$", Finish.EOS
        return f"step {path.key}\n\n", Finish.STEP

    policy = FakePolicy(step, fail=lambda path: path.key == (0, 0))
    prm = FakePRM(lambda path, i: 0.3 if path.key[0] == 0 else 0.4)
    strategy = DVTS(width=2, max_depth=5)
    sol = await solve(strategy, 4, policy, prm, equivalence)
    assert [b.branch for b in sol.lost] == ["0.0"]
    assert [(c.index, c.answer) for c in sol.candidates] == [(0, "0"), (1, "0"), (2, "1"), (3, "1")]
    assert [b.index for b in sol.lost] == [4]
    # weighted: "1" has 0.4 + 0.4 against "0"'s 0.3 + 0.3
    assert sol.answer == sol.votes().weighted == "1"
    assert_agree(sol, strategy)


STRATEGIES: list[tuple[Strategy, int]] = [
    (BeamSearch(width=2, max_depth=4), 2),
    (BeamSearch(width=4, max_depth=3), 4),
    (DVTS(width=2, max_depth=4), 2),
    (DVTS(width=3, max_depth=3), 3),
    (MajorityVote(per_request=3), 1),
    (BestOfN(per_request=2), 1),
    (WeightedBestOfN(per_request=4), 1),
    (ParticleFilter(max_depth=4), 1),
    (WeightedParticleFilter(max_depth=4, resample_inactive=False), 1),
    (Rebase(max_depth=4), 1),
    (Rebase(weight_temperature=1.0, max_depth=3, aggregate="min"), 1),
    (Revise(continuations=2, rounds=1, per_request=2), 3),
    (Revise(threshold=0.7, cut="largest_drop", continuations=1, rounds=3), 4),
]


@pytest.mark.parametrize(("strategy", "unit"), STRATEGIES, ids=lambda s: getattr(s, "name", ""))
@settings(max_examples=30, deadline=None)
@given(
    multiple=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    p_end=st.floats(0.1, 0.9),
    p_lose_generating=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    p_lose_scoring=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
)
async def test_answer_votes_and_curve_agree_whatever_was_lost(
    strategy: Strategy,
    unit: int,
    multiple: int,
    seed: int,
    p_end: float,
    p_lose_generating: float,
    p_lose_scoring: float,
    equivalence: Equivalence,
) -> None:
    n = unit * multiple

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if rng.random() < p_end:
            return f"so $\\boxed{{{rng.randrange(3)}}}$", Finish.EOS
        return f"step {rng.random():.6f}\n\n", Finish.STEP

    policy = FakePolicy(
        step, seed=seed, fail=lambda path: draw(seed, "g", path.key) < p_lose_generating
    )
    prm = FakePRM(
        lambda path, i: draw(seed, "s", path.key, i),
        seed=seed,
        fail=lambda path: draw(seed, "f", path.key) < p_lose_scoring,
    )
    try:
        sol = await solve(strategy, n, policy, prm, equivalence)
    except SolveFailed:
        return  # every branch lost: no answer to agree with
    assert_agree(sol, strategy)
