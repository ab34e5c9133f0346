"""Beam search and DVTS against scripted in-memory fakes: which paths survive, how many
children each gets, when a path finishes, ranking of finished paths, independence of DVTS
subtrees, and invariants under random scripts (hypothesis)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.errors import BranchLost
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.search.dvts import DVTS
from asynctts.testing.fakes import FakePolicy, FakePRM

Key = tuple[int, ...]


def node_of(path: Path, step: int) -> Key:
    """The key of the node that generated step `step` of `path` (DVTS subtrees fork the root,
    so keys can be one level deeper than the steps)."""
    return path.key[: len(path.key) - len(path.steps) + step + 1]


def scripted(
    ends: Mapping[Key, Finish], scores: Mapping[Key, float], final_depth: int
) -> tuple[FakePolicy, FakePRM]:
    """Node `key` ends as `ends[key]` (STEP otherwise; EOS at `final_depth`) and its step
    scores `scores[key]` (0.5 otherwise)."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        key = path.key
        finish = Finish.EOS if len(key) >= final_depth else ends.get(key, Finish.STEP)
        text = f"node {key}" + ("\n\n" if finish is Finish.STEP else " $\\boxed{1}$")
        return text, finish

    def score(path: Path, i: int) -> float:
        return scores.get(node_of(path, i), 0.5)

    return FakePolicy(step), FakePRM(score)


async def test_beam_search_keeps_the_best_and_ranks_finished_by_value() -> None:
    # the root's 4 children come from n // width = 2 forks of it: (0, i) and (1, i)
    scores = {
        (0, 0): 0.1, (0, 1): 0.9, (1, 0): 0.5, (1, 1): 0.7,
        (0, 1, 0): 0.3, (0, 1, 1): 0.6, (1, 1, 0): 0.8, (1, 1, 1): 0.95,
        (1, 1, 0, 0): 0.2, (1, 1, 0, 1): 0.4, (0, 1, 1, 0): 0.99, (0, 1, 1, 1): 0.1,
    }  # fmt: skip
    ends = {(0, 1, 0): Finish.EOS, (1, 1, 1): Finish.EOS}
    policy, prm = scripted(ends, scores, final_depth=99)
    results = await BeamSearch(width=2, max_depth=3).run(Path(), 4, policy, prm)
    # the last iteration generates to the end; the n=4 best finished paths, best first
    assert [r.key for r in results if isinstance(r, Path)] == [
        (0, 1, 1, 0), (1, 1, 1), (1, 1, 0, 1), (0, 1, 0),
    ]  # fmt: skip
    assert sorted(policy.meter.log) == [
        ((0,), 2, False),  # the root: n children as n // width requests of width siblings
        ((0, 1), 2, False),  # then the n // width = 2 best, width children each
        ((0, 1, 1), 2, True),
        ((1,), 2, False),
        ((1, 1), 2, False),
        ((1, 1, 0), 2, True),
    ]
    assert all(r.done for r in results if isinstance(r, Path))


async def test_beam_search_stops_when_no_path_is_active() -> None:
    policy, prm = scripted({}, {}, final_depth=3)
    results = await BeamSearch(width=2, max_depth=40).run(Path(), 4, policy, prm)
    assert policy.calls == 4  # the root's 2 requests, then the 2 survivors, whose children end
    assert len(results) == 4


async def test_beam_search_ties_go_to_the_first_child() -> None:
    policy, prm = scripted({}, {}, final_depth=3)  # every score 0.5
    await BeamSearch(width=2, max_depth=5).run(Path(), 4, policy, prm)
    assert sorted(k for k, _, _ in policy.meter.log) == [(0,), (0, 0), (0, 1), (1,)]


async def test_beam_search_filters_duplicate_texts() -> None:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.key) >= 3:
            return f"end {path.key}", Finish.EOS
        return ("same\n\n" if path.key != (1, 1) else "unique\n\n"), Finish.STEP

    prm = FakePRM(lambda path, i: 0.1 if path.key[:2] == (1, 1) else 0.9)
    plain = FakePolicy(step)
    await BeamSearch(width=2, max_depth=5).run(Path(), 4, plain, prm)
    assert sorted(k for k, _, _ in plain.meter.log) == [(0,), (0, 0), (0, 1), (1,)]
    deduped = FakePolicy(step)
    await BeamSearch(width=2, max_depth=5, filter_duplicates=True).run(Path(), 4, deduped, prm)
    # (0, 1) and (1, 0) repeat (0, 0)'s text: the second survivor is the unique (1, 1)
    assert sorted(k for k, _, _ in deduped.meter.log) == [(0,), (0, 0), (1,), (1, 1)]


async def test_beam_search_records_lost_branches_and_answers_from_the_rest() -> None:
    policy, prm = scripted({}, {(0, 0): 0.9, (0, 1): 0.8}, final_depth=4)
    policy.fail = lambda path: path.key == (0, 0)
    results = await BeamSearch(width=2, max_depth=5).run(Path(), 4, policy, prm)
    lost = [r for r in results if isinstance(r, BranchLost)]
    assert [(b.key, b.stage) for b in lost] == [((0, 0), "generating")]
    # the other survivor (0, 1) carried on; the failed one's children never existed
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 1)}


@pytest.mark.parametrize("strategy", [BeamSearch, DVTS])
def test_budget_must_be_a_multiple_of_width(strategy: type[BeamSearch] | type[DVTS]) -> None:
    with pytest.raises(ValueError, match="n=6 is not a multiple of width=4"):
        strategy(width=4).check_budget(6)
    with pytest.raises(ValueError, match="width=0"):
        strategy(width=0)
    with pytest.raises(ValueError, match="aggregate='avg'"):
        strategy(aggregate="avg")  # type: ignore[arg-type]


async def test_dvts_walks_greedily_and_emits_finished_children_only() -> None:
    scores = {
        (0, 0): 0.2, (0, 1): 0.7,  # subtree 0 keeps (0, 1)
        (0, 1, 0): 0.9, (0, 1, 1): 0.3,
        (1, 0): 0.05, (1, 1): 0.01,  # subtree 1 is poor but never compared with subtree 0
        (1, 0, 1): 0.6,
    }  # fmt: skip
    ends = {(0, 1, 0): Finish.EOS, (1, 0, 1): Finish.EOS}
    policy, prm = scripted(ends, scores, final_depth=99)
    results = await DVTS(width=2, max_depth=3).run(Path(), 4, policy, prm)
    keys = [r.key for r in results if isinstance(r, Path)]
    # subtree 0 ended at (0,1,0) whose unfinished sibling (0,1,1) is not a result;
    # subtree 1 walked (1,0) then (1,0,1) ended; its sibling (1,0,0) was unfinished
    assert keys == [(0, 1, 0), (1, 0, 1)]
    assert sorted(policy.meter.log) == [
        ((0,), 2, False), ((0, 1), 2, False), ((1,), 2, False), ((1, 0), 2, False),
    ]  # fmt: skip


async def test_dvts_last_iteration_generates_to_the_end() -> None:
    policy, prm = scripted({}, {}, final_depth=99)
    results = await DVTS(width=2, max_depth=2).run(Path(), 4, policy, prm)
    assert [(k, to_end) for k, _, to_end in sorted(policy.meter.log)] == [
        ((0,), False), ((0, 0), True), ((1,), False), ((1, 0), True),
    ]  # fmt: skip
    assert len(results) == 4 and all(isinstance(r, Path) and r.done for r in results)


async def test_dvts_lost_subtree_does_not_sink_the_others() -> None:
    policy, prm = scripted({}, {}, final_depth=2)
    policy.fail = lambda path: path.key[:1] == (1,)
    results = await DVTS(width=2, max_depth=5).run(Path(), 6, policy, prm)
    lost = [r for r in results if isinstance(r, BranchLost)]
    # subtree 1 failed, then so did its one fallback (a fresh fork with its own seed)
    assert [b.key for b in lost] == [(1,), (1, 1)]
    assert {r.key[0] for r in results if isinstance(r, Path)} == {0, 2}


async def test_dvts_falls_back_to_the_next_best_sibling() -> None:
    scores = {(0, 0): 0.9, (0, 1): 0.5}
    policy, prm = scripted({}, scores, final_depth=4)
    policy.fail = lambda path: path.key == (0, 0)  # the best child's expansion fails
    results = await DVTS(width=2, max_depth=10).run(Path(), 2, policy, prm)
    assert [r.key for r in results if isinstance(r, BranchLost)] == [(0, 0)]
    finished = [r for r in results if isinstance(r, Path)]
    assert finished and all(p.key[:2] == (0, 1) and p.done for p in finished)


async def test_dvts_falls_back_to_a_fresh_fork_at_the_subtree_root() -> None:
    policy, prm = scripted({}, {}, final_depth=3)
    policy.fail = lambda path: path.key == (0,)
    results = await DVTS(width=2, max_depth=10).run(Path(), 2, policy, prm)
    assert [r.key for r in results if isinstance(r, BranchLost)] == [(0,)]
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 1)}


async def test_beam_search_stands_in_the_next_best_path_for_a_lost_one() -> None:
    scores = {(0, 0): 0.9, (0, 1): 0.8}  # the spare fork's children score 0.5
    policy, prm = scripted({}, scores, final_depth=4)
    policy.fail = lambda path: path.key in {(0, 0), (1,)}
    results = await BeamSearch(width=2, max_depth=10).run(Path(), 4, policy, prm)
    lost = [r.key for r in results if isinstance(r, BranchLost)]
    assert lost == [(1,), (0, 0)]
    # at the root, fork (1,) failed and the spare fork (2,) stood in; at iteration 1 the
    # best child (0, 0) failed and the next best after (0, 1), namely (2, 0), stood in
    assert sorted(k for k, _, _ in policy.meter.log if len(k) == 1) == [(0,), (1,), (2,)]
    assert sorted(k for k, _, _ in policy.meter.log if len(k) == 2) == [(0, 0), (0, 1), (2, 0)]


def random_script(seed: int, p_end: float) -> tuple[FakePolicy, FakePRM]:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if rng.random() < p_end:
            return f"end {rng.random():.6f} $\\boxed{{{rng.randrange(3)}}}$", Finish.EOS
        return f"step {rng.random():.6f}\n\n", Finish.STEP

    def score(path: Path, i: int) -> float:
        return random.Random(repr((seed, node_of(path, i)))).random()

    return FakePolicy(step, seed=seed), FakePRM(score, seed=seed)


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 4),
    multiple=st.integers(1, 4),
    depth=st.integers(1, 6),
    seed=st.integers(0, 10**6),
    p_end=st.floats(0.0, 1.0),
)
async def test_beam_search_invariants(
    width: int, multiple: int, depth: int, seed: int, p_end: float
) -> None:
    n = width * multiple
    policy, prm = random_script(seed, p_end)
    results = await BeamSearch(width=width, max_depth=depth).run(Path(), n, policy, prm)
    paths = [r for r in results if isinstance(r, Path)]
    assert 1 <= len(paths) <= n and all(p.done and p.scored for p in paths)
    values = [p.scores[-1] for p in paths]
    assert values == sorted(values, reverse=True)
    # per iteration: one call at the root, then at most n // width calls of width children
    by_depth: dict[int, list[int]] = {}
    for key, k, _ in policy.meter.log:
        by_depth.setdefault(len(key), []).append(k)
    assert by_depth.pop(1) == [width] * multiple  # the root's n children
    for ks in by_depth.values():
        assert len(ks) <= multiple and all(k == width for k in ks)
    assert max(by_depth, default=1) <= depth
    assert sum(len(ks) * width for ks in by_depth.values()) + n <= n * depth
    again_policy, again_prm = random_script(seed, p_end)
    again = await BeamSearch(width=width, max_depth=depth).run(Path(), n, again_policy, again_prm)
    assert again == results


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 4),
    subtrees=st.integers(1, 4),
    depth=st.integers(1, 6),
    seed=st.integers(0, 10**6),
    p_end=st.floats(0.0, 1.0),
)
async def test_dvts_invariants(
    width: int, subtrees: int, depth: int, seed: int, p_end: float
) -> None:
    n = width * subtrees
    policy, prm = random_script(seed, p_end)
    results = await DVTS(width=width, max_depth=depth).run(Path(), n, policy, prm)
    paths = [r for r in results if isinstance(r, Path)]
    assert len(paths) <= n and all(p.done for p in paths)  # last step generates to the end
    assert {p.key[0] for p in paths} == set(range(subtrees))  # every subtree finished
    assert policy.calls <= subtrees * depth
    assert all(k == width for _, k, _ in policy.meter.log)
    again_policy, again_prm = random_script(seed, p_end)
    assert await DVTS(width=width, max_depth=depth).run(Path(), n, again_policy, again_prm) == (
        results
    )


async def test_dvts_subtrees_never_wait_for_each_other() -> None:
    """Subtree 1 is held until subtree 0 has finished its whole walk: a lockstep schedule
    would deadlock here (the timeout would fire)."""
    policy, prm = scripted({}, {}, final_depth=5)
    subtree0_done = asyncio.Event()

    async def generate(path: Path, k: int, *, to_end: bool = False) -> list[Path]:
        if path.key[0] == 1:
            await subtree0_done.wait()
        children = await policy(path, k, to_end=to_end)
        if path.key[0] == 0 and all(c.done for c in children):
            subtree0_done.set()
        return children

    results = await asyncio.wait_for(DVTS(width=2, max_depth=10).run(Path(), 4, generate, prm), 5)
    assert {r.key[0] for r in results if isinstance(r, Path)} == {0, 1}
