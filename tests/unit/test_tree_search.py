"""Beam search and DVTS against scripted in-memory fakes: which paths survive, how many
children each gets (n samples every beam search iteration, shared as the reference's cyclic
replication shares them), when a path finishes, ranking of finished paths, lost branches,
independence of DVTS subtrees, and invariants under random scripts (hypothesis)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.errors import BranchLost
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch, cyclic_shares
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
    policy, prm = scripted({}, {}, final_depth=4)  # every score 0.5
    await BeamSearch(width=2, max_depth=5).run(Path(), 4, policy, prm)
    # the root's children are its 4 copies fork by fork: (0, 0), (0, 1), (1, 0), (1, 1);
    # the first two survive, and their children are listed as the replication makes them,
    # every survivor's first child before any second: (0, 0, 0), (0, 1, 0), (0, 0, 1), ...
    assert sorted(k for k, _, _ in policy.meter.log) == [
        (0,), (0, 0), (0, 0, 0), (0, 1), (0, 1, 0), (1,),
    ]  # fmt: skip


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
    # the other survivor (0, 1) carried on, and (1, 0), the best path that had not
    # survived, stood in for the failed one; the failed one's children never existed
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 1), (1, 0)}


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
    # subtree 1 failed, then so did its one fallback (a fresh fork with its own seed,
    # numbered past the subtree root's 2 children)
    assert [b.key for b in lost] == [(1,), (1, 2)]
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
    # the fork is numbered past the root's 2 children: no key shared with a child
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 2)}


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
    # per iteration: n samples, from at most n // width survivors, shared cyclically
    by_depth: dict[int, list[int]] = {}
    for key, k, _ in policy.meter.log:
        by_depth.setdefault(len(key), []).append(k)
    assert by_depth.pop(1) == [width] * multiple  # the root's n children
    for ks in by_depth.values():
        assert sum(ks) == n and len(ks) <= multiple
        assert sorted(ks, reverse=True) == cyclic_shares(n, len(ks))
    assert max(by_depth, default=1) <= depth
    assert policy.greedy_log == []
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


@pytest.mark.parametrize(
    ("n", "survivors", "shares"),
    [(16, 4, [4, 4, 4, 4]), (16, 3, [6, 5, 5]), (16, 2, [8, 8]), (16, 1, [16]), (4, 3, [2, 1, 1])],
)
def test_cyclic_shares_count_the_copies_of_the_reference_replication(
    n: int, survivors: int, shares: list[int]
) -> None:
    assert cyclic_shares(n, survivors) == shares
    replicated = (list(range(survivors)) * (n // survivors + 1))[:n]
    assert [replicated.count(s) for s in range(survivors)] == shares


async def test_beam_search_samples_n_steps_every_iteration_whatever_finished() -> None:
    """n=16, M=4: after iterations 0..3, 4, 3, 2 and 1 paths are left active; the survivors
    share the 16 samples of the next iteration as the cyclic replication does."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        number = len(path.steps) + 1  # the step being written
        # a path goes on only through child 0 of subtree g < 5 - number
        if number <= 4 and path.key[-1] == 0 and path.key[0] < 5 - number:
            return f"step {number} of {path.key}\n\n", Finish.STEP
        return f"end of {path.key} $\\boxed{{{path.key[0]}}}$", Finish.EOS

    policy = FakePolicy(step)
    results = await BeamSearch(width=4, max_depth=40).run(
        Path(), 16, policy, FakePRM(lambda path, i: 0.5)
    )
    by_iteration: dict[int, list[tuple[Key, int]]] = {}
    for key, k, to_end in policy.meter.log:
        assert not to_end
        by_iteration.setdefault(len(key) - 1, []).append((key, k))
    assert {d: sorted(calls) for d, calls in by_iteration.items()} == {
        0: [((0,), 4), ((1,), 4), ((2,), 4), ((3,), 4)],  # the root, as 4 forks
        1: [((0, 0), 4), ((1, 0), 4), ((2, 0), 4), ((3, 0), 4)],  # 4 active: 4 each
        2: [((0, 0, 0), 6), ((1, 0, 0), 5), ((2, 0, 0), 5)],  # 3 active: 6, 5, 5
        3: [((0, 0, 0, 0), 8), ((1, 0, 0, 0), 8)],  # 2 active: 8 each
        4: [((0, 0, 0, 0, 0), 16)],  # 1 active: all 16, one request
    }
    assert all(sum(k for _, k in calls) == 16 for calls in by_iteration.values())
    # 12 + 13 + 14 + 15 + 16 paths finished; the result is 16 of them
    paths = [r for r in results if isinstance(r, Path)]
    assert len(paths) == 16 and len(results) == 16


async def test_beam_search_survivors_keep_generation_order_for_their_shares() -> None:
    """With 3 survivors of 16 samples the first in generation order (not the best) gets 6,
    as the reference's replication gives the extra copy to the first listed beams."""
    scores = {(0, 0): 0.1, (1, 0): 0.9, (2, 0): 0.5}

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.key) == 2 and path.key[-1] == 0 and path.key[0] < 3:
            return f"{path.key}\n\n", Finish.STEP
        return f"{path.key} $\\boxed{{1}}$", Finish.EOS

    policy = FakePolicy(step)
    prm = FakePRM(lambda path, i: scores.get(node_of(path, i), 0.5))
    await BeamSearch(width=4, max_depth=40).run(Path(), 16, policy, prm)
    assert sorted((key, k) for key, k, _ in policy.meter.log if len(key) == 2) == [
        ((0, 0), 6), ((1, 0), 5), ((2, 0), 5),
    ]  # fmt: skip


async def test_dvts_a_scoring_failure_loses_that_child_alone() -> None:
    scores = {(0, 0): 0.9, (0, 1): 0.4, (0, 2): 0.6}
    policy, prm = scripted({}, scores, final_depth=4)
    prm.fail = lambda path: path.key == (0, 0)  # the best child cannot be scored
    results = await DVTS(width=3, max_depth=10).run(Path(), 3, policy, prm)
    lost = [(r.key, r.stage) for r in results if isinstance(r, BranchLost)]
    assert lost == [((0, 0), "scoring")]
    # its siblings were scored: the walk went on from the best of them, (0, 2)
    assert sorted(k for k, _, _ in policy.meter.log)[:2] == [(0,), (0, 2)]
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 2)}


async def test_dvts_falls_back_when_no_child_could_be_scored() -> None:
    policy, prm = scripted({}, {}, final_depth=3)
    # (0, 0) ties with (0, 1) and goes first; both its children fail to score
    prm.fail = lambda path: len(path.key) == 3 and path.key[:2] == (0, 0)
    results = await DVTS(width=2, max_depth=10).run(Path(), 2, policy, prm)
    assert [r.key for r in results if isinstance(r, BranchLost)] == [(0, 0, 0), (0, 0, 1)]
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 1)}


async def test_dvts_lists_every_path_before_any_lost_branch() -> None:
    policy, prm = scripted({}, {}, final_depth=3)
    policy.fail = lambda path: path.key in {(0,), (1, 0)}
    results = await DVTS(width=2, max_depth=10).run(Path(), 4, policy, prm)
    kinds = [isinstance(r, BranchLost) for r in results]
    assert kinds == sorted(kinds) and kinds.count(True) == 2
    assert [r.key for r in results if isinstance(r, BranchLost)] == [(0,), (1, 0)]
    assert sum(isinstance(r, Path) for r in results) <= 4
