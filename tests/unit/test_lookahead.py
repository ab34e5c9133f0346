"""Beam search lookahead: each unfinished candidate is rolled out greedily (temperature 0) for
scoring only; the candidate keeps its one new step and the rolled-out path's value. Also the
greedy sampling it needs, in the policy backend and the fake policy, and its trace nodes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from asynctts.api import run_search
from asynctts.backends.context import ProblemContext, Sampling
from asynctts.backends.policy import PolicyClient
from asynctts.endpoint import Endpoint
from asynctts.equivalence import Equivalence
from asynctts.errors import BranchLost
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.testing.fakes import FakePolicy, FakePRM

from helpers_transport import ScriptedTransport

# The text of the step each node writes names the node; scores look the text up.
STEP_SCORES = {
    "(0, 0)": 0.2,  # child (0, 0) itself looks poor ...
    "(0, 0, -1, 0)": 0.7,
    "(0, 0, -1, 0, 0)": 0.9,  # ... but its rollout ends well
    "(0, 1)": 0.8,  # child (0, 1) looks good ...
    "(0, 1, -1, 0)": 0.3,
    "(0, 1, -1, 0, 0)": 0.1,  # ... and its rollout ends badly
}


def named_steps(final: int) -> FakePolicy:
    """Each node writes a step naming its key; the `final`-th step of a path ends it."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.steps) + 1 >= final:
            return f"{path.key} $\\boxed{{{path.key[1]}}}$", Finish.EOS
        return f"{path.key}\n\n", Finish.STEP

    return FakePolicy(step)


def by_text(path: Path, i: int) -> float:
    return STEP_SCORES.get(path.steps[i].removesuffix("\n\n"), 0.5)


@pytest.mark.parametrize(("lookahead", "survivor"), [(0, (0, 1)), (2, (0, 0))])
async def test_lookahead_ranks_candidates_by_their_rollout(
    lookahead: int, survivor: tuple[int, ...]
) -> None:
    # n = 2, width 2: one survivor of the root fork's two children; the next and last
    # iteration generates the survivor's two children to the end
    policy = named_steps(final=5)
    search = BeamSearch(width=2, max_depth=2, lookahead=lookahead)
    results = await search.run(Path(), 2, policy, FakePRM(by_text))
    assert sorted(policy.meter.log) == [((0,), 2, False), (survivor, 2, True)]
    paths = [r for r in results if isinstance(r, Path)]
    assert {p.key[:2] for p in paths} == {survivor}
    # the rollouts were dropped: a result continues its candidate's one step, not the rollout
    assert all(p.steps[1] == f"{(*survivor, p.key[2])}\n\n" for p in paths)
    # and every score a result carries is the PRM's score of that step, never a rollout's
    assert all(p.scores == tuple(by_text(p, i) for i in range(len(p.steps))) for p in paths)


async def test_lookahead_rolls_each_candidate_k_greedy_steps_not_in_the_last_iteration() -> None:
    # paths end at step 5: iteration 0's 4 candidates roll out steps 2-3, iteration 1's
    # steps 3-4, and iteration 2 (the last) generates to the end without lookahead
    policy = named_steps(final=5)
    await BeamSearch(width=2, max_depth=3, lookahead=2).run(Path(), 4, policy, FakePRM(by_text))
    rolled_out = [key[:-1] for key, k, to_end in policy.greedy_log if key[-1] == -1]
    assert len(policy.greedy_log) == 2 * (4 + 4)  # 2 greedy calls per candidate
    assert all(k == 1 and not to_end for _, k, to_end in policy.greedy_log)
    assert {len(key) for key in rolled_out} == {2, 3}  # iterations 0 and 1 only
    assert sum(k for _, k, _ in policy.meter.log) == 3 * 4  # still n samples per iteration


async def test_a_rollout_stops_at_the_end_of_the_solution() -> None:
    # candidates have 1 step and paths end at step 3: the second greedy step ends each
    # rollout, so a lookahead of 5 makes 2 greedy calls per candidate, not 5
    policy = named_steps(final=3)
    await BeamSearch(width=2, max_depth=2, lookahead=5).run(Path(), 2, policy, FakePRM(by_text))
    assert sorted(key for key, _, _ in policy.greedy_log) == [
        (0, 0, -1), (0, 0, -1, 0), (0, 1, -1), (0, 1, -1, 0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("aggregate", "value"), [("last", 0.9), ("min", 0.2), ("prod", 0.2 * 0.7 * 0.9)]
)
async def test_a_candidate_keeps_its_scores_and_competes_with_its_rollouts_value(
    aggregate: str, value: float
) -> None:
    policy = named_steps(final=9)
    search = BeamSearch(width=2, max_depth=2, lookahead=2, aggregate=aggregate)  # type: ignore[arg-type]
    candidate = Path(key=(0,)).extend(0, ["(0, 0)\n\n"], Finish.STEP)
    (scored,) = await search._score([candidate], 2, policy, FakePRM(by_text))
    assert not isinstance(scored, BranchLost)
    path, ranked_by = scored
    # its own step's score, which its descendants inherit, is the PRM's for that step
    assert path.steps == candidate.steps and path.scores == (0.2,)
    assert ranked_by == pytest.approx(value)  # the rolled-out path's value


async def test_a_failed_rollout_loses_its_candidate() -> None:
    policy = named_steps(final=9)
    policy.fail = lambda path: path.key == (0, 1, -1, 0)  # the second greedy step of (0, 1)
    results = await BeamSearch(width=2, max_depth=2, lookahead=2).run(
        Path(), 2, policy, FakePRM(by_text)
    )
    lost = [(r.key, r.stage) for r in results if isinstance(r, BranchLost)]
    assert lost == [((0, 1), "generating")]
    assert {r.key[:2] for r in results if isinstance(r, Path)} == {(0, 0)}


def test_lookahead_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="lookahead=-1: need >= 0"):
        BeamSearch(lookahead=-1)


async def test_greedy_children_of_the_fake_are_the_same_for_the_same_prefix() -> None:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        return f"{rng.random():.9f}\n\n", Finish.STEP

    policy = FakePolicy(step)
    a, b = await policy(Path(steps=("x\n\n",), key=(0,)), 2, greedy=True)
    (c,) = await policy(Path(steps=("x\n\n",), key=(5, 1)), 1, greedy=True)
    assert a.steps == b.steps == c.steps and (a.key, b.key) == ((0, 0), (0, 1))
    sampled = await policy(Path(steps=("x\n\n",), key=(0,)), 2)
    assert sampled[0].steps != sampled[1].steps
    assert policy.greedy_log == [((0,), 2, False), ((5, 1), 1, False)]
    assert policy.meter.log == [((0,), 2, False)]


def echo(route: str, body: Mapping[str, Any]) -> dict[str, Any]:
    step = {"text": "s\n\n", "finish_reason": "stop", "stop_reason": "\n\n"}
    return {"choices": [{"index": j, **step} for j in range(body["n"])]}


@pytest.mark.parametrize("greedy", [False, True])
async def test_the_policy_client_samples_greedy_at_temperature_zero(greedy: bool) -> None:
    transport = ScriptedTransport(echo)
    endpoint = Endpoint(
        base_url="http://127.0.0.1:9/v1", model="m", prompt_format="{system}|{problem}|"
    )
    client = PolicyClient(endpoint, transport, sampling=Sampling(temperature=0.7, top_p=0.9))
    ctx = ProblemContext("p1", "Q?", "S", 7, Ledger())
    await client.generate(ctx, Path(steps=("a\n\n",), key=(3,)), 1, greedy=greedy)
    (call,) = transport.calls
    assert call.body["temperature"] == (0.0 if greedy else 0.7)
    assert call.body["top_p"] == 0.9 and call.body["stop"] == ["\n\n"]


async def test_the_trace_records_rollouts_as_lookahead_nodes(equivalence: Equivalence) -> None:
    policy = named_steps(final=5)
    sol = await run_search(
        problem_id="t",
        problem="?",
        strategy=BeamSearch(width=2, max_depth=2, lookahead=2),
        n=2,
        generate=policy,
        score=FakePRM(by_text),
        equivalence=equivalence,
        ledger=Ledger(),
        keep_trace=True,
    )
    assert sol.trace is not None
    nodes = sol.trace.nodes
    rollout = [key for key, node in nodes.items() if node.state == "lookahead"]
    assert sorted(rollout) == [
        (0, 0, -1), (0, 0, -1, 0), (0, 0, -1, 0, 0), (0, 1, -1), (0, 1, -1, 0), (0, 1, -1, 0, 0),
    ]  # fmt: skip
    assert nodes[(0, 0, -1, 0, 0)].scores == (0.9,) and nodes[(0, 0, -1, 0, 0)].depth == 3
    # a candidate's own step score comes from its rollout's scoring (it is scored nowhere else)
    assert nodes[(0, 0)].scores == (0.2,) and nodes[(0, 0)].state == "kept"
    assert nodes[(0, 1)].state == "pruned"
    # rollouts are no expansion of the search: widths count the root fork and the survivor
    assert sol.degradation.widths == (1, 1)
    assert not any(key in sol.trace.answers() for key in rollout)
    # their cost is the problem's like any request's: 2 greedy calls per candidate
    assert policy.calls == 2 + 2 * 2
