"""asynctts against real vLLM 0.32 servers on the CPU (tiny models, see conftest.py).

What is checked here is what the simulated server cannot prove: vLLM's own step stops and
finish reasons, `n` siblings, per-request seeds, the prompts both policy modes produce, both
PRM kinds, every strategy end to end, vLLM's context-length behaviour, and a server killed in
the middle of a solve.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from asynctts import (
    DEFAULT_SYSTEM_PROMPT,
    STRATEGIES,
    Endpoint,
    EndpointError,
    Finish,
    Path,
    PromptTooLong,
    Sampling,
    Solution,
    SolveFailed,
    Solver,
    solve,
)
from asynctts.answers import extract_boxed, normalize
from asynctts.backends.context import ProblemContext
from asynctts.backends.policy import PolicyClient
from asynctts.backends.templates import PolicyPrompt, chat_fields, load_tokenizer
from asynctts.ledger import Ledger
from asynctts.transport import Transport

from build_models import SYSTEM_PROMPT as TRAINED_SYSTEM_PROMPT
from helpers_vllm import MAX_MODEL_LEN, Fleet, metric_sum

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

PROBLEM = "What is 12 + 7 - 3?"
SOLVE_TIMEOUT_S = 300


async def post(url: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


@pytest.fixture
async def generator(policy: Endpoint) -> AsyncIterator[PolicyClient]:
    async with Transport(policy, name="policy") as transport:
        yield PolicyClient(policy, transport, sampling=Sampling())


def context(seed: int | None = 0, problem: str = PROBLEM) -> ProblemContext:
    return ProblemContext(
        problem_id="p0",
        problem=problem,
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        seed=seed,
        ledger=Ledger(),
    )


def test_the_tiny_model_was_trained_on_the_default_system_prompt() -> None:
    assert TRAINED_SYSTEM_PROMPT == DEFAULT_SYSTEM_PROMPT


# --- the wire format of vLLM itself ------------------------------------------------------------


async def test_vllm_step_stop_eos_and_length_as_documented(fleet: Fleet, policy: Endpoint) -> None:
    """stop_reason is "\\n\\n" at a step stop and null at EOS; max_tokens gives "length"."""
    prompt = PolicyPrompt.for_endpoint(policy).render(PROBLEM, DEFAULT_SYSTEM_PROMPT, "")
    url = policy.root_url + "/v1/completions"
    base = {"model": policy.model, "prompt": prompt, "temperature": 0, "max_tokens": 200}
    status, step = await post(url, {**base, "stop": ["\n\n"], "include_stop_str_in_output": True})
    assert status == 200
    choice = step["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "\n\n")
    assert choice["text"].startswith("Step 1:") and choice["text"].endswith("\n\n")
    _, whole = await post(url, base)
    choice = whole["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert extract_boxed(choice["text"]) is not None
    _, cut = await post(url, {**base, "max_tokens": 3})
    assert cut["choices"][0]["finish_reason"] == "length"


async def test_children_are_steps_with_their_finish(generator: PolicyClient) -> None:
    children = await generator.generate(context(), Path(), 4)
    assert [c.key for c in children] == [(0,), (1,), (2,), (3,)]
    for child in children:
        assert len(child.steps) == 1
        if child.finish is Finish.STEP:
            assert child.steps[0].startswith("Step 1:") and child.steps[0].endswith("\n\n")
    # walk one branch to its end: every step but the last ends at the delimiter
    path = children[0]
    while not path.done:
        (path,) = await generator.generate(context(), path, 1)
    assert path.finish is Finish.EOS
    assert all(step.endswith("\n\n") for step in path.steps[:-1])
    assert extract_boxed(path.text) is not None, path.text


async def test_max_tokens_cut_is_length(policy: Endpoint) -> None:
    async with Transport(policy, name="policy") as transport:
        client = PolicyClient(policy, transport, sampling=Sampling(max_tokens=2))
        children = await client.generate(context(), Path(), 2)
    assert [c.finish for c in children] == [Finish.LENGTH, Finish.LENGTH]


async def test_n_siblings_come_from_one_request(generator: PolicyClient) -> None:
    ctx = context()
    children = await generator.generate(ctx, Path(), 6)
    assert len(children) == 6
    (attempt,) = ctx.ledger.attempts
    assert attempt.branches == ("0", "1", "2", "3", "4", "5")
    assert len({c.text for c in children}) > 1, "siblings at temperature 0.8 should differ"


async def test_seeded_requests_reproduce(generator: PolicyClient) -> None:
    first = await generator.generate(context(seed=7), Path(), 4)
    again = await generator.generate(context(seed=7), Path(), 4)
    other = await generator.generate(context(seed=8), Path(), 4)
    assert [c.steps for c in again] == [c.steps for c in first]
    assert [c.steps for c in other] != [c.steps for c in first]
    # deeper: the same seed reproduces a continuation too
    deeper = [await generator.generate(context(seed=7), first[0], 3) for _ in range(2)]
    assert [c.steps for c in deeper[0]] == [c.steps for c in deeper[1]]


# --- prompts ------------------------------------------------------------------------------------


async def tokenize(endpoint: Endpoint, body: Mapping[str, Any]) -> list[int]:
    status, reply = await post(endpoint.root_url + "/tokenize", {"model": endpoint.model, **body})
    assert status == 200, reply
    tokens: list[int] = reply["tokens"]
    return tokens


@pytest.mark.parametrize("steps", [(), ("Step 1: 12 + 7 = 19.\n\n",)])
async def test_chat_and_completions_modes_send_the_same_prompt(
    policy: Endpoint, steps: tuple[str, ...]
) -> None:
    tokenizer = load_tokenizer(policy.tokenizer_name)
    prompt = PolicyPrompt.for_endpoint(policy)
    text = prompt.render(PROBLEM, DEFAULT_SYSTEM_PROMPT, "".join(steps))
    completions = await tokenize(policy, {"prompt": text})
    chat = await tokenize(policy, chat_fields(PROBLEM, DEFAULT_SYSTEM_PROMPT, "".join(steps)))
    assert completions == chat
    assert completions.count(tokenizer.bos_token_id) == 1, "one BOS, not two"
    # the ids completions mode sends read as the same text
    ids = prompt.token_ids(PROBLEM, DEFAULT_SYSTEM_PROMPT, steps)
    assert ids is not None
    assert tokenizer.decode(ids) == tokenizer.decode(completions)
    assert ids[: len(completions) - 1] == completions[:-1] or not steps


async def test_continuation_prompt_ends_with_the_tokens_the_model_wrote(policy: Endpoint) -> None:
    """The boundary trap of docs/design.md, section 6, on a real server: a text prompt ending in
    "\\n\\n" is tokenized differently from what the model generated; our ids are not."""
    tokenizer = load_tokenizer(policy.tokenizer_name)
    prompt = PolicyPrompt.for_endpoint(policy)
    prefix_ids = prompt.token_ids(PROBLEM, DEFAULT_SYSTEM_PROMPT, ())
    assert prefix_ids is not None
    status, reply = await post(
        policy.root_url + "/v1/completions",
        {
            "model": policy.model,
            "prompt": prefix_ids,
            "max_tokens": 60,
            "temperature": 0,
            "stop": ["\n\n"],
            "include_stop_str_in_output": True,
            "return_token_ids": True,
        },
    )
    assert status == 200, reply
    choice = reply["choices"][0]
    step, written = choice["text"], choice["token_ids"]
    assert step.endswith("\n\n") and choice["stop_reason"] == "\n\n"
    ours = prompt.token_ids(PROBLEM, DEFAULT_SYSTEM_PROMPT, (step,))
    assert ours == prefix_ids + written
    as_text = await tokenize(
        policy, {"prompt": prompt.render(PROBLEM, DEFAULT_SYSTEM_PROMPT, step)}
    )
    assert as_text != ours, "this tokenizer should show the trap (merged trailing newlines)"
    assert tokenizer.decode(as_text) == tokenizer.decode(ours)


# --- PRMs ---------------------------------------------------------------------------------------


def assert_scored(solution: Solution) -> None:
    assert solution.candidates
    for candidate in solution.candidates:
        assert len(candidate.scores) == len(candidate.steps) > 0
        assert all(0.0 <= s <= 1.0 for s in candidate.scores)


async def test_pooling_prm_scores_every_step(fleet: Fleet, policy: Endpoint, prm: Endpoint) -> None:
    sol = await asyncio.wait_for(
        solve(PROBLEM, strategy="best_of_n", n=4, policy=policy, prm=prm, seed=3), SOLVE_TIMEOUT_S
    )
    assert_scored(sol)
    assert sol.ledger.totals().prm_tokens > 0
    # the raw server: one [p_neg, p_pos] row per step tag
    tag = fleet.models.step_tag
    status, reply = await post(
        prm.root_url + "/pooling", {"model": prm.model, "input": [f"a{tag}b{tag}c{tag}"]}
    )
    assert status == 200
    rows = reply["data"][0]["data"]
    assert len(rows) == 3 and all(abs(sum(row) - 1) < 1e-4 for row in rows)


async def test_logprob_prm_scores_every_step(policy: Endpoint, judge: Endpoint) -> None:
    sol = await asyncio.wait_for(
        solve(PROBLEM, strategy="best_of_n", n=4, policy=policy, prm=judge, seed=3),
        SOLVE_TIMEOUT_S,
    )
    assert_scored(sol)
    # the judge was trained to say "+" or "-": scores are not all equal
    scores = {s for c in sol.candidates for s in c.scores}
    assert len(scores) > 1


# --- solve, end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_every_strategy_returns_a_boxed_answer_of_the_model(
    policy: Endpoint, prm: Endpoint, strategy: str
) -> None:
    """Default sampling (max_tokens 2048) against --max-model-len 2048: vLLM 0.32 clamps
    max_tokens to what the context leaves, so a normal solve works."""
    n = 8 if strategy in ("beam_search", "dvts", "revise") else 4
    sol = await asyncio.wait_for(
        solve(PROBLEM, strategy=strategy, n=n, policy=policy, prm=prm, seed=0), SOLVE_TIMEOUT_S
    )
    assert sol.answer is not None
    boxed = {normalize(b) for c in sol.candidates if (b := extract_boxed(c.text)) is not None}
    assert sol.answer in boxed
    assert not sol.lost
    totals = sol.ledger.totals()
    assert totals.requests > 0 and totals.completion_tokens > 0 and totals.failures == 0
    if strategy in ("beam_search", "dvts"):
        # tree searches continue partial solutions: at least one finished path has 2+ steps
        assert max(len(c.steps) for c in sol.candidates) >= 2


async def test_solve_many_over_real_vllm(policy: Endpoint, prm: Endpoint) -> None:
    problems = [f"What is {a} + {b}?" for a, b in ((3, 4), (10, 5), (21, 9))]
    async with Solver(policy=policy, prm=prm) as solver:
        results = [s async for s in solver.solve_many(problems, strategy="dvts", n=4, seed=1)]
    assert sorted(s.problem_id for s in results) == ["p0", "p1", "p2"]
    assert all(s.ok and s.answer is not None for s in results)


# --- context length -----------------------------------------------------------------------------


async def test_vllm_clamps_max_tokens_to_the_context_and_rejects_a_longer_prompt(
    policy: Endpoint,
) -> None:
    url = policy.root_url + "/v1/completions"
    near = await tokenize(policy, {"prompt": "1 + 1 = 2. " * 300})
    filler = "1 + 1 = 2. " * int(300 * (MAX_MODEL_LEN - 20) / len(near))
    status, reply = await post(url, {"model": policy.model, "prompt": filler, "max_tokens": 2048})
    assert status == 200, reply  # clamped, not rejected
    usage = reply["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= MAX_MODEL_LEN
    status, reply = await post(url, {"model": policy.model, "prompt": filler * 2, "max_tokens": 16})
    assert status == 400 and "maximum context length" in reply["error"]["message"]


async def test_a_problem_longer_than_the_context_is_prompt_too_long(
    policy: Endpoint, prm: Endpoint
) -> None:
    with pytest.raises(PromptTooLong, match="maximum context length"):
        await solve("What is " + "1 + " * 2000 + "1?", strategy="dvts", n=4, policy=policy, prm=prm)


# --- a server that dies -------------------------------------------------------------------------


async def finished_requests(root_url: str) -> float:
    """Requests the server has completed."""
    return await metric_sum(root_url, "vllm:request_success_total")


async def test_killing_the_policy_server_mid_solve_is_recorded_not_a_hang(
    fleet: Fleet, prm: Endpoint
) -> None:
    victim = fleet.server("victim")
    policy = Endpoint(
        base_url=victim.base_url,  # type: ignore[attr-defined]
        model="tiny-policy",
        tokenizer=str(fleet.models.policy),
        max_attempts=3,
    )
    problems = [f"What is {a} + {b} - {c}?" for a, b, c in ((3, 4, 1), (10, 5, 2), (21, 9, 3))]

    async def solve_all() -> list[Solution]:
        async with Solver(policy=policy, prm=prm) as solver:
            return [s async for s in solver.solve_many(problems * 4, strategy="beam_search", n=8)]

    root_url: str = victim.root_url  # type: ignore[attr-defined]
    before = await finished_requests(root_url)  # the launcher's smoke test counts too
    task = asyncio.create_task(solve_all())
    for _ in range(1200):  # kill once the solve has had answers: it is under way
        if await finished_requests(root_url) >= before + 3:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "the solve finished before the kill: make it longer"
    os.killpg(victim.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    try:
        results = await asyncio.wait_for(task, timeout=180)
    except (SolveFailed, EndpointError) as err:  # a clear error is acceptable too
        assert root_url in str(err)
        return
    assert len(results) == len(problems) * 4
    degraded = [s for s in results if s.error is not None or s.lost]
    assert degraded, "a killed server must show up as errors or lost branches"
    for s in degraded:
        reasons = [s.error] if s.error else [b.reason for b in s.lost]
        assert any("ConnectFailed" in r or "127.0.0.1" in r for r in reasons if r), reasons
