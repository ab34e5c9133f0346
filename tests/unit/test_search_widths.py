"""Without `trace=True`, a solve counts expanded paths per iteration without keeping the tree;
the counts must be exactly the full trace's, whatever ended, narrowed or was lost (lookahead
rollouts count in neither). Beam search samples n steps every iteration it runs."""

from __future__ import annotations

import random

import pytest

from asynctts.api import run_search
from asynctts.equivalence import Equivalence
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.dvts import DVTS
from asynctts.search.strategy import Strategy
from asynctts.solution import Solution
from asynctts.testing.fakes import FakePolicy, FakePRM


def scripted_policy(seed: int) -> FakePolicy:
    """Paths end at a depth drawn from their key; some generate calls fail for good."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.steps) + 1 >= 1 + hash((seed, path.key[:2])) % 5:
            return f"so $\\boxed{{{path.key[0] % 3}}}$", Finish.EOS
        return f"step {len(path.steps)} of {path.key}\n\n", Finish.STEP

    def fail(path: Path) -> bool:
        return hash((seed, path.key)) % 11 == 0

    return FakePolicy(step, seed=seed, fail=fail)


async def solve_twice(
    strategy: Strategy, n: int, seed: int, equivalence: Equivalence
) -> list[Solution]:
    solutions = []
    for keep_trace in (True, False):
        solutions.append(
            await run_search(
                problem_id="t",
                problem="?",
                strategy=strategy,
                n=n,
                generate=scripted_policy(seed),
                score=FakePRM(lambda path, i: (hash(path.key) % 97) / 97, seed=seed),
                equivalence=equivalence,
                ledger=Ledger(),
                keep_trace=keep_trace,
            )
        )
    return solutions


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("strategy", "n"),
    [
        (BeamSearch(width=2, max_depth=6), 8),
        (BeamSearch(width=4, max_depth=6), 8),
        (BeamSearch(width=2, max_depth=6, lookahead=2), 8),
        (DVTS(width=2, max_depth=6), 8),
        (DVTS(width=4, max_depth=3), 8),
        (BestOfN(per_request=2), 6),
    ],
)
async def test_widths_without_trace_equal_the_traced_widths(
    strategy: Strategy, n: int, seed: int, equivalence: Equivalence
) -> None:
    traced, light = await solve_twice(strategy, n, seed, equivalence)
    assert traced.trace is not None and light.trace is None
    assert light.degradation.widths == traced.degradation.widths
    assert traced.degradation.widths == traced.trace.iteration_widths()
    assert light.degradation == traced.degradation
    assert [c.branch for c in light.candidates] == [c.branch for c in traced.candidates]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("lookahead", [0, 1])
async def test_beam_search_samples_n_every_iteration_unless_branches_are_lost(
    seed: int, lookahead: int, equivalence: Equivalence
) -> None:
    policy = scripted_policy(seed)
    sol = await run_search(
        problem_id="t",
        problem="?",
        strategy=BeamSearch(width=4, max_depth=6, lookahead=lookahead),
        n=8,
        generate=policy,
        score=FakePRM(lambda path, i: (hash(path.key) % 97) / 97, seed=seed),
        equivalence=equivalence,
        ledger=Ledger(),
    )
    samples: dict[int, int] = {}
    for key, k, _ in policy.meter.log:
        samples[len(key)] = samples.get(len(key), 0) + k
    lost_generating = [b.branch for b in sol.lost if b.stage == "generating"]
    if not lost_generating:
        assert set(samples.values()) == {8}
    assert len(samples) == len(sol.degradation.widths)
