"""Prompted self-refinement on real vLLM 0.32 (CPU, the tiny models of conftest.py): the model
reads its own solution and a critique request as earlier turns and writes a new solution.

What the simulated server cannot prove: that chat mode (the server renders the messages) and
completions mode (the client renders the same chat template) send vLLM the same tokens for a
conversation with earlier turns, so a seeded refinement is the same text in both; and a whole
prompted revision end to end in each mode, its revision scored as a solution of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from asynctts import DEFAULT_SYSTEM_PROMPT, Endpoint, Finish, Path, Sampling, solve
from asynctts.backends.context import ProblemContext
from asynctts.backends.policy import PolicyClient
from asynctts.backends.templates import PolicyPrompt, chat_fields
from asynctts.ledger import Ledger
from asynctts.search.revise import DEFAULT_CRITIQUE, Revise
from asynctts.transport import Transport

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

PROBLEM = "What is 12 + 7 - 3?"
# an earlier solution as the tiny model writes them (wrong on purpose: 12 + 7 is 19)
EARLIER = "Step 1: 12 + 7 = 18.\n\nStep 2: 18 - 3 = 15.\n\nThe answer is $\\boxed{15}$."
TURNS = (EARLIER, DEFAULT_CRITIQUE)
SAMPLING = Sampling(max_tokens=200)
SOLVE_TIMEOUT_S = 300


def chat_mode(policy: Endpoint) -> Endpoint:
    return dataclasses.replace(policy, mode="chat")


async def tokenize(endpoint: Endpoint, fields: Mapping[str, Any]) -> list[int]:
    body = {"model": endpoint.model, **fields}
    async with (
        aiohttp.ClientSession() as session,
        session.post(endpoint.root_url + "/tokenize", json=body) as response,
    ):
        reply = await response.json()
    assert response.status == 200, reply
    tokens: list[int] = reply["tokens"]
    return tokens


async def test_both_modes_send_the_same_tokens_for_earlier_turns(policy: Endpoint) -> None:
    prompt = PolicyPrompt.for_endpoint(policy)
    ids = prompt.token_ids(PROBLEM, DEFAULT_SYSTEM_PROMPT, (), TURNS)
    chat = await tokenize(policy, chat_fields(PROBLEM, DEFAULT_SYSTEM_PROMPT, "", TURNS))
    assert ids == chat
    text = await tokenize(
        policy, {"prompt": prompt.render(PROBLEM, DEFAULT_SYSTEM_PROMPT, "", TURNS)}
    )
    assert text == chat
    plain = prompt.token_ids(PROBLEM, DEFAULT_SYSTEM_PROMPT, ())
    assert plain is not None and len(chat) > len(plain)  # the turns are in it


async def refinement(endpoint: Endpoint) -> tuple[Path, Ledger]:
    ledger = Ledger()
    ctx = ProblemContext("p0", PROBLEM, DEFAULT_SYSTEM_PROMPT, 5, ledger)
    async with Transport(endpoint, name="policy") as transport:
        client = PolicyClient(endpoint, transport, sampling=SAMPLING)
        (child,) = await client.generate(ctx, Path(key=(0, 0, 1), turns=TURNS), 1, to_end=True)
    return child, ledger


async def test_one_seeded_refinement_is_the_same_in_chat_and_completions_mode(
    policy: Endpoint,
) -> None:
    completions, by_completions = await refinement(policy)
    chat, by_chat = await refinement(chat_mode(policy))
    assert completions.steps and completions.finish in (Finish.EOS, Finish.LENGTH)
    assert completions.turns == chat.turns == TURNS
    assert chat.steps == completions.steps
    assert by_chat.totals().prompt_tokens == by_completions.totals().prompt_tokens


@pytest.mark.parametrize("mode", ["completions", "chat"])
async def test_a_prompted_revision_end_to_end(policy: Endpoint, prm: Endpoint, mode: str) -> None:
    """n=3: one original and, in one round, 2 prompted revisions (threshold 1: every solution
    has a step below it); the revisions are scored on their own steps."""
    endpoint = chat_mode(policy) if mode == "chat" else policy
    strategy = Revise(revision="prompted", threshold=1.0, continuations=2, rounds=1)
    sol = await asyncio.wait_for(
        solve(PROBLEM, strategy=strategy, n=3, policy=endpoint, prm=prm, seed=0, trace=True),
        SOLVE_TIMEOUT_S,
    )
    assert not sol.lost
    assert [c.branch for c in sol.candidates] == ["0.0", "0.0.1.0", "0.0.1.1"]
    revisions = sol.candidates[1:]
    for revision in revisions:
        assert len(revision.scores) == len(revision.steps) > 0
    assert sol.trace is not None
    assert sol.trace.text_of((0, 0, 1, 0)) == revisions[0].text
    # the revisions' prompt (one request, its tokens split between them) held the original's
    # whole text and the critique
    spent = sol.ledger.by_branch()
    original, revised = spent["0.0"], spent["0.0.1.0"] + spent["0.0.1.1"]
    assert revised.prompt_tokens > original.prompt_tokens + original.completion_tokens
