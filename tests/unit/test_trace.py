"""The search trace and the record of what degraded, from scripted in-memory searches."""

from __future__ import annotations

import json
import random
from pathlib import Path as FilePath

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
from asynctts.trace import Widths


def policy_ending_at(depth_of_end: dict[tuple[int, ...], int], default: int) -> FakePolicy:
    """Paths whose key starts with a listed prefix end after that many steps."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        limit = next((d for k, d in depth_of_end.items() if path.key[: len(k)] == k), default)
        if len(path.steps) + 1 >= limit:
            return f"so $\\boxed{{{path.key[0]}}}$", Finish.EOS
        return f"step {len(path.steps)} of {path.key}\n\n", Finish.STEP

    return FakePolicy(step)


async def search(
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
        keep_trace=True,
    )


async def test_beam_search_trace_marks_kept_pruned_and_results(
    equivalence: Equivalence, tmp_path: FilePath
) -> None:
    prm = FakePRM(lambda path, i: 0.9 if path.key[:2] == (0, 0) else 0.4)
    sol = await search(
        BeamSearch(width=2, max_depth=4), 4, policy_ending_at({}, 3), prm, equivalence
    )
    assert sol.trace is not None
    nodes = {n.key: n for n in sol.trace.nodes.values()}
    assert nodes[()].state == "kept" and nodes[(0,)].state == "kept"  # root and its forks
    assert nodes[(0, 0)].expanded and nodes[(0, 0)].scores == (0.9,)
    assert nodes[(0, 0)].steps == ("step 0 of (0, 0)\n\n",)
    assert nodes[(1, 1)].state == "pruned"
    results = [k for k, n in nodes.items() if n.state == "result"]
    assert results == [c.branch and tuple(map(int, c.branch.split("."))) for c in sol.candidates]
    # two root forks, then two survivors twice (the third step ends every path)
    assert sol.trace.iteration_widths() == (2, 2, 2)
    assert sol.degradation.widths == (2, 2, 2) and sol.degradation.planned_width == 2
    assert not sol.degradation.degraded and sol.degradation.narrowed == ()

    saved = tmp_path / "trace.json"
    sol.trace.save_json(saved)
    data = json.loads(saved.read_text())
    assert data["widths"] == [2, 2, 2]
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id["0.0"]["parent"] == "0" and by_id["0"]["parent"] == "root"
    assert by_id["1.1"]["state"] == "pruned"
    assert by_id["0.0"]["generated_s"][0] <= by_id["0.0"]["scored_s"][0]

    picture = tmp_path / "trace.png"
    sol.trace.render(picture, title="beam search")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_beam_width_falling_below_plan_is_recorded(equivalence: Equivalence) -> None:
    # fork 1's children end at once, (0, 1)'s at step 2, (0, 0, 1)'s and (0, 0, 0, 1) at
    # step 3: after iteration 2 a single path is left to expand
    limits = {(1,): 1, (0, 1): 2, (0, 0, 1): 3, (0, 0, 0, 1): 3}
    prm = FakePRM(lambda path, i: 0.5)
    sol = await search(
        BeamSearch(width=2, max_depth=8), 4, policy_ending_at(limits, 5), prm, equivalence
    )
    # the lone path's two children both go on, so the width recovers at iteration 4
    assert sol.degradation.widths == (2, 2, 2, 1, 2)
    assert sol.degradation.narrowed == (3,)
    assert sol.degradation.notes() == ["iteration 3: 1 of 2 paths expanded"]
    assert not sol.degradation.degraded  # narrowing by finishing is not a loss


async def test_lost_and_cut_branches_are_recorded(equivalence: Equivalence) -> None:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if path.key[:2] == (0, 1):
            return "a step that ran out of tokens", Finish.LENGTH
        return "$\\boxed{1}$", Finish.EOS

    policy = FakePolicy(step, fail=lambda path: path.key == (1,))
    prm = FakePRM(lambda path, i: 0.5, fail=lambda path: path.key == (2, 0))
    sol = await search(BestOfN(per_request=2), 6, policy, prm, equivalence)
    d = sol.degradation
    assert (d.lost_generating, d.lost_scoring, d.cut, d.unfinished) == (2, 1, 1, 0)
    assert d.degraded and d.planned_width is None
    assert d.notes() == [
        "3 branches lost (2 generating, 1 scoring)",
        "1 candidates cut by max_tokens or the context length",
    ]
    assert sol.to_dict()["degradation"]["notes"] == d.notes()


async def test_dvts_unfinished_subtree_is_recorded_not_a_candidate(
    equivalence: Equivalence,
) -> None:
    """A subtree whose last expansion finished nothing: only a policy that ignores `to_end`
    does this, but the result must still say so rather than pass it off as a candidate."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if path.key[0] == 1:
            return "more\n\n", Finish.STEP
        return "$\\boxed{2}$", Finish.EOS

    class IgnoresToEnd(FakePolicy):
        async def __call__(self, path: Path, k: int, *, to_end: bool = False) -> list[Path]:
            return await super().__call__(path, k, to_end=False)

    sol = await search(
        DVTS(width=2, max_depth=2), 4, IgnoresToEnd(step), FakePRM(lambda p, i: 0.5), equivalence
    )
    assert sol.degradation.unfinished == 1
    assert {c.branch.split(".")[0] for c in sol.candidates} == {"0"}
    assert "1 paths hit the iteration limit unfinished" in sol.degradation.notes()


async def test_widths_put_forks_at_their_parents_iteration_and_children_one_below() -> None:
    async def generate(path: Path, k: int, *, to_end: bool = False) -> list[Path]:
        return [path.extend(i, ("step\n\n",), Finish.STEP) for i in range(k)]

    widths = Widths()
    counted = widths.wrap(generate)
    root = Path()
    # two forks of the root (DVTS subtrees): both expanded at iteration 0
    first, _ = await counted(root.fork(0), 2)
    await counted(root.fork(1), 2)
    # a child, and a fork of that child (a subtree started below the root)
    await counted(first, 3)
    await counted(first.fork(7), 1)
    assert widths.iteration_widths() == (2, 2)
    depths = {(): 0, (0,): 0, (0, 1): 1, (0, 0, 2): 2, (0, 0, 7): 1}
    assert {key: widths.depth(key) for key in depths} == depths


async def test_traced_nodes_are_at_the_iterations_widths_counts(equivalence: Equivalence) -> None:
    prm = FakePRM(lambda path, i: 0.5)
    sol = await search(DVTS(width=2, max_depth=3), 4, policy_ending_at({}, 3), prm, equivalence)
    assert sol.trace is not None
    nodes = sol.trace.nodes.values()
    assert all(node.depth == sol.trace.widths.depth(node.key) for node in nodes)
    expanded = [node.depth for node in nodes if node.expanded]
    assert sol.trace.iteration_widths() == tuple(
        expanded.count(d) for d in range(max(expanded) + 1)
    )
