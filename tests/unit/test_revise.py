"""Revision against scripted in-memory fakes: where it cuts (first step below the threshold,
largest drop), which solution it revises next, its requests (one per revision,
`continuations` children each, from the kept prefix, or prompted: a new turn after the
solution and the critique), its budget (never above n), lost branches, and its errors."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.errors import BranchLost
from asynctts.protocols import Finish, Path
from asynctts.search.revise import DEFAULT_CRITIQUE, REVISIONS, Revise
from asynctts.testing.fakes import FakePolicy, FakePRM

Key = tuple[int, ...]

STEPS = 4  # every solution: 3 steps and a conclusion


def label(key: Key, index: int) -> str:
    """Step `index` as written by node `key`: "0.0/2"."""
    return f"{'.'.join(map(str, key))}/{index}"


def scripted(
    scores: Mapping[str, float],
    *,
    fail_generating: Key | None = None,
    fail_scoring: Key | None = None,
    turns_seen: dict[Key, tuple[str, ...]] | None = None,
    steps_scored: list[tuple[str, ...]] | None = None,
) -> tuple[FakePolicy, FakePRM]:
    """Node `key`'s step i reads label(key, i) (its conclusion boxes key[-1]) and scores
    scores[label] (0.9 otherwise); a solution ends after STEPS steps, whatever its prefix.
    `turns_seen` collects the earlier turns of each generated child by key, `steps_scored`
    the steps of every path the PRM scores."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if turns_seen is not None:
            turns_seen[path.key] = path.turns
        index = len(path.steps)
        if index == STEPS - 1:
            return f"{label(path.key, index)} $\\boxed{{{path.key[-1]}}}$", Finish.EOS
        return f"{label(path.key, index)}\n\n", Finish.STEP

    def score(path: Path, i: int) -> float:
        if steps_scored is not None and i == 0:
            steps_scored.append(path.steps)
        return scores.get(path.steps[i].split()[0].strip(), 0.9)

    policy = FakePolicy(step, fail=lambda path: path.key == fail_generating)
    prm = FakePRM(score, fail=lambda path: path.key == fail_scoring)
    return policy, prm


def keys(results: list[Path | BranchLost]) -> list[Key]:
    return [r.key for r in results]


# --- the cut -------------------------------------------------------------------------------------


def test_first_below_cuts_at_the_first_step_under_the_threshold() -> None:
    revise = Revise(threshold=0.5)
    assert revise.cut_at([0.9, 0.6, 0.4, 0.2]) == 2
    assert revise.cut_at([0.3, 0.9, 0.9]) == 0
    assert revise.cut_at([0.9, 0.5, 0.5]) is None  # at the threshold is not below it
    assert revise.cut_at([]) is None
    assert Revise(threshold=0.0).cut_at([0.0, 0.0]) is None
    assert Revise(threshold=1.0).cut_at([1.0, 0.99]) == 1


def test_largest_drop_cuts_where_the_score_falls_most() -> None:
    revise = Revise(threshold=0.5, cut="largest_drop")
    # falls 0.05, 0.4, 0.1, 0.35: the fall into step 1, though step 2 is the first below 0.5
    assert revise.cut_at([0.95, 0.55, 0.45, 0.1]) == 1
    assert Revise(threshold=0.5).cut_at([0.95, 0.55, 0.45, 0.1]) == 2
    # the first step falls from 1
    assert revise.cut_at([0.3, 0.25, 0.2]) == 0
    # ties go to the earliest: falls 0.25, 0.25, 0.25 (exact in binary)
    assert revise.cut_at([0.75, 0.5, 0.25]) == 0
    # nothing below the threshold: no cut, however steep a fall
    assert revise.cut_at([1.0, 0.5, 0.9]) is None


# --- the search ----------------------------------------------------------------------------------


async def test_a_continuation_that_beats_the_solution_replaces_it_and_is_final() -> None:
    """n=5 (1 + 2 * 2): one original, (0, 0), whose step 2 scores 0.2: cut there, its first
    two steps kept; 2 continuations from that prefix in one request. (0, 0, 1, 1) scores 0.9
    on every step and beats the original (last step 0.6): nothing to cut, so it is final and
    round 2 draws nothing."""
    policy, prm = scripted({"0.0/2": 0.2, "0.0/3": 0.6, "0.0.1.0/3": 0.3})
    results = await Revise().run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True)]
    assert keys(results) == [(0, 0), (0, 0, 1, 0), (0, 0, 1, 1)]
    original, _, better = results
    assert isinstance(better, Path) and isinstance(original, Path)
    assert better.steps[:2] == original.steps[:2]  # the kept prefix
    assert [s.split()[0].strip() for s in better.steps] == [
        "0.0/0",
        "0.0/1",
        "0.0.1.1/2",
        "0.0.1.1/3",
    ]
    assert better.scores == (0.9, 0.9, 0.9, 0.9) and better.finish is Finish.EOS


async def test_a_solution_no_continuation_beats_is_revised_again() -> None:
    """The continuations score 0.5 at the end against the original's 0.6: the original
    stays the best and is cut again in round 2, from a prefix under a new key."""
    scores = {"0.0/2": 0.2, "0.0/3": 0.6, "0.0.1.0/3": 0.5, "0.0.1.1/3": 0.5}
    policy, prm = scripted(scores)
    results = await Revise().run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True), ((0, 0, 2), 2, True)]
    assert keys(results) == [(0, 0), (0, 0, 1, 0), (0, 0, 1, 1), (0, 0, 2, 0), (0, 0, 2, 1)]


async def test_the_best_continuation_is_cut_where_its_own_scores_fall() -> None:
    """The original is cut at step 1. Round 1's best, (0, 0, 1, 0) (last step 0.95), has its
    step 2 below the threshold: round 2 cuts it there, under the key (0, 0, 1, 0, 2), keeping
    the original's step 0 and its own step 1."""
    scores = {"0.0/1": 0.1, "0.0/3": 0.6, "0.0.1.0/2": 0.4, "0.0.1.0/3": 0.95}
    policy, prm = scripted(scores)
    results = await Revise().run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True), ((0, 0, 1, 0, 2), 2, True)]
    assert len(results) == 5
    round_two = results[3]
    assert isinstance(round_two, Path)
    assert [s.split()[0].strip() for s in round_two.steps] == [
        "0.0/0",
        "0.0.1.0/1",
        "0.0.1.0.2.0/2",
        "0.0.1.0.2.0/3",
    ]


async def test_every_original_is_revised_on_its_own_and_results_go_by_round() -> None:
    """n=16: m = 16 // 5 = 3 originals from one request (per_request 16); (0, 1) has nothing
    to cut; (0, 0) and (0, 2) are cut and revised twice (their continuations never beat
    them). Results: the originals, round 1's continuations, round 2's; 11 of the 16
    generations drawn (15 at most), 5 left unspent."""
    scores = {"0.0/0": 0.1, "0.2/1": 0.1, "0.0/3": 0.95, "0.2/3": 0.95}
    policy, prm = scripted(scores)
    results = await Revise().run(Path(), 16, policy, prm)
    assert sorted(policy.meter.log) == [
        ((0,), 3, True),
        ((0, 0, 1), 2, True),
        ((0, 0, 2), 2, True),
        ((0, 2, 1), 2, True),
        ((0, 2, 2), 2, True),
    ]
    assert sum(k for _, k, _ in policy.meter.log) == 11
    assert keys(results) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 0, 1, 0),
        (0, 0, 1, 1),
        (0, 2, 1, 0),
        (0, 2, 1, 1),
        (0, 0, 2, 0),
        (0, 0, 2, 1),
        (0, 2, 2, 0),
        (0, 2, 2, 1),
    ]
    # (0, 0) was cut at step 0: its continuations are fresh solutions from the root's prefix
    first = results[3]
    assert isinstance(first, Path) and first.steps[0].startswith("0.0.1.0/0")


async def test_rounds_zero_is_weighted_best_of_n() -> None:
    policy, prm = scripted({"0.0/0": 0.1})
    results = await Revise(rounds=0, per_request=2).run(Path(), 3, policy, prm)
    assert policy.meter.log == [((0,), 2, True), ((1,), 1, True)]
    assert keys(results) == [(0, 0), (0, 1), (1, 0)]


# --- prompted self-refinement --------------------------------------------------------------------


def names(path: Path | BranchLost) -> list[str]:
    assert isinstance(path, Path)
    return [s.split()[0].strip() for s in path.steps]


async def test_prompted_revisions_are_whole_solutions_after_the_solution_and_critique() -> None:
    """n=5: the original (0, 0) has step 2 below the threshold. Round 1 is one request of 2
    for the empty start (0, 0, 1) whose earlier turns are the original's text and the
    critique; its continuations are whole solutions of their own, and the PRM scores only
    their steps. (0, 0, 1, 1) beats the original (0.9 against 0.6): final."""
    turns_seen: dict[Key, tuple[str, ...]] = {}
    steps_scored: list[tuple[str, ...]] = []
    policy, prm = scripted(
        {"0.0/2": 0.2, "0.0/3": 0.6, "0.0.1.0/3": 0.3},
        turns_seen=turns_seen,
        steps_scored=steps_scored,
    )
    results = await Revise(revision="prompted").run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True)]
    assert keys(results) == [(0, 0), (0, 0, 1, 0), (0, 0, 1, 1)]
    original, first, better = results
    assert isinstance(original, Path) and isinstance(first, Path) and isinstance(better, Path)
    assert turns_seen[(0, 0)] == ()
    assert turns_seen[(0, 0, 1, 0)] == turns_seen[(0, 0, 1, 1)] == (original.text, DEFAULT_CRITIQUE)
    assert better.turns == (original.text, DEFAULT_CRITIQUE)
    assert names(first) == ["0.0.1.0/0", "0.0.1.0/1", "0.0.1.0/2", "0.0.1.0/3"]
    assert names(better) == ["0.0.1.1/0", "0.0.1.1/1", "0.0.1.1/2", "0.0.1.1/3"]
    assert better.scores == (0.9, 0.9, 0.9, 0.9) and better.finish is Finish.EOS
    # the PRM read each solution's own steps: never the earlier solution in a revision's
    assert sorted(steps_scored) == sorted([original.steps, first.steps, better.steps])


async def test_prompted_revision_refines_the_best_so_far_with_its_own_text() -> None:
    """Round 1's best, (0, 0, 1, 0), still has a step below the threshold: round 2 starts at
    (0, 0, 1, 0, 2) with that solution's text (not the original's) and the given critique."""
    turns_seen: dict[Key, tuple[str, ...]] = {}
    scores = {"0.0/1": 0.1, "0.0/3": 0.6, "0.0.1.0/2": 0.4, "0.0.1.0/3": 0.95}
    policy, prm = scripted(scores, turns_seen=turns_seen)
    revise = Revise(revision="prompted", critique="Check it.")
    results = await revise.run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True), ((0, 0, 1, 0, 2), 2, True)]
    best = results[1]
    assert isinstance(best, Path) and best.key == (0, 0, 1, 0)
    assert turns_seen[(0, 0, 1, 0, 2, 0)] == (best.text, "Check it.")
    assert names(results[3]) == [f"0.0.1.0.2.0/{i}" for i in range(STEPS)]


async def test_prompted_revision_leaves_a_solution_without_a_low_step_alone() -> None:
    policy, prm = scripted({})
    results = await Revise(revision="prompted").run(Path(), 10, policy, prm)
    assert policy.meter.log == [((0,), 2, True)]
    assert keys(results) == [(0, 0), (0, 1)]


def test_only_prompted_revision_needs_a_policy_that_renders_turns() -> None:
    assert Revise(revision="prompted").needs_turns
    assert not Revise().needs_turns


# --- lost branches -------------------------------------------------------------------------------


async def test_a_failed_revision_loses_its_continuations_and_the_solution_goes_on() -> None:
    policy, prm = scripted({"0.0/2": 0.2}, fail_generating=(0, 0, 1))
    results = await Revise().run(Path(), 5, policy, prm)
    assert policy.meter.log == [((0,), 1, True), ((0, 0, 1), 2, True), ((0, 0, 2), 2, True)]
    assert keys(results) == [(0, 0), (0, 0, 2, 0), (0, 0, 2, 1), (0, 0, 1, 0), (0, 0, 1, 1)]
    lost = results[3:]
    assert all(isinstance(r, BranchLost) and r.stage == "generating" for r in lost)


async def test_a_failed_scoring_loses_that_continuation_alone() -> None:
    policy, prm = scripted({"0.0/2": 0.2, "0.0/3": 0.95}, fail_scoring=(0, 0, 1, 0))
    results = await Revise(rounds=1).run(Path(), 3, policy, prm)
    assert keys(results) == [(0, 0), (0, 0, 1, 1), (0, 0, 1, 0)]
    assert isinstance(results[-1], BranchLost) and results[-1].stage == "scoring"


async def test_a_lost_original_has_nothing_to_revise() -> None:
    policy, prm = scripted({}, fail_generating=(0,))
    results = await Revise().run(Path(), 10, policy, prm)
    assert policy.meter.log == [((0,), 2, True)]
    assert keys(results) == [(0, 0), (0, 1)]
    assert all(isinstance(r, BranchLost) for r in results)


# --- budget --------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    continuations=st.integers(1, 4),
    rounds=st.integers(0, 3),
    extra=st.integers(0, 30),
    seed=st.integers(0, 10**6),
    threshold=st.floats(0.0, 1.0),
    cut=st.sampled_from(["first_below", "largest_drop"]),
    per_request=st.integers(1, 5),
    p_end=st.floats(0.2, 0.9),
    p_lose=st.sampled_from([0.0, 0.2]),
    revision=st.sampled_from(REVISIONS),
)
async def test_never_more_than_n_generations_and_every_path_among_the_first_n(
    continuations: int,
    rounds: int,
    extra: int,
    seed: int,
    threshold: float,
    cut: str,
    per_request: int,
    p_end: float,
    p_lose: float,
    revision: str,
) -> None:
    strategy = Revise(
        threshold=threshold,
        cut=cut if revision == "guided" else "first_below",  # type: ignore[arg-type]
        continuations=continuations,
        rounds=rounds,
        per_request=per_request,
        revision=revision,  # type: ignore[arg-type]
    )
    n = strategy.cost + extra

    def chance(*what: object) -> float:
        return random.Random(repr((seed, *what))).random()

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if rng.random() < p_end:
            return f"so $\\boxed{{{rng.randrange(3)}}}$", Finish.EOS
        return f"step {rng.random():.6f}\n\n", Finish.STEP

    policy = FakePolicy(step, seed=seed, fail=lambda path: chance("g", path.key) < p_lose)
    prm = FakePRM(
        lambda path, i: chance("s", path.steps[: i + 1]),
        seed=seed,
        fail=lambda path: chance("f", path.key) < p_lose,
    )
    results = await strategy.run(Path(), n, policy, prm)
    drawn = sum(k for _, k, _ in policy.meter.log)
    assert drawn <= strategy.originals(n) * strategy.cost <= n
    assert len(results) == drawn  # one result per generation asked for
    paths = [r for r in results if isinstance(r, Path)]
    assert results[: len(paths)] == paths  # lost branches after every path
    assert all(p.done and p.scored for p in paths)
    assert len(set(keys(results))) == len(results)
    revisions = [(key, k) for key, k, _ in policy.meter.log if len(key) > 1]
    assert all(k == continuations for _, k in revisions)
    assert len(revisions) <= strategy.originals(n) * rounds
    # prompted revisions are whole solutions after the solution they revise
    assert all(bool(p.turns) == (len(p.key) > 2 and revision == "prompted") for p in paths)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"threshold": 1.5}, "threshold=1.5: need a value in [0, 1]"),
        ({"threshold": -0.1}, "threshold=-0.1: need a value in [0, 1]"),
        ({"threshold": math.nan}, "threshold=nan: need a value in [0, 1]"),
        ({"cut": "steepest"}, "cut='steepest': choose one of ['first_below', 'largest_drop']"),
        ({"continuations": 0}, "continuations=0: need >= 1"),
        ({"rounds": -1}, "rounds=-1: need >= 0"),
        ({"per_request": 0}, "per_request=0: need >= 1"),
        ({"aggregate": "mean"}, "aggregate='mean': choose one of ['last', 'min', 'prod']"),
        ({"revision": "rewrite"}, "revision='rewrite': choose one of ['guided', 'prompted']"),
        ({"critique": " \n"}, "critique=' \\n': prompted revision needs a request"),
        (
            {"revision": "prompted", "cut": "largest_drop"},
            "cut='largest_drop': prompted revision writes whole new solutions, it cuts nothing",
        ),
        (
            {"critique": "Check it."},
            "critique= is for revision='prompted': guided revision asks nothing",
        ),
    ],
)
def test_bad_settings_are_refused(settings_: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        Revise(**settings_)  # type: ignore[arg-type]
    assert str(err.value) == message


async def test_a_budget_too_small_for_one_solution_and_its_revisions_is_refused_first() -> None:
    policy, prm = scripted({})
    with pytest.raises(ValueError) as err:
        await Revise(continuations=3, rounds=2).run(Path(), 6, policy, prm)
    assert str(err.value) == (
        "n=6: one solution and its revisions take up to 1 + continuations * rounds"
        " = 1 + 3 * 2 = 7 generations"
    )
    assert policy.calls == 0 and prm.calls == 0
    Revise(continuations=3, rounds=2).check_budget(7)
