"""Chat mode against a chat template that trims message bodies, on real vLLM 0.32 (CPU).

The "trimming" server serves the tiny policy with a Llama-3-style template (`content | trim`,
build_models.py). Under `continue_final_message` it renders a partial solution without its
trailing "\\n\\n"; the model then writes the "\\n\\n" first, and a plain step request stops on
it at once. Shown here: that failure on the raw server, the client noticing the trim, and chat
mode then giving the steps completions mode gives.

Why the modes are compared greedily: with a seed, vLLM draws one random number per generated
token, and in chat mode the model spends two draws writing the delimiter that completions mode
puts in the prompt, so sampled continuations diverge after the first step however the client
behaves. What holds with sampling is checked too: the root step (same prompt tokens, same
seed) and a chat continuation against completions of the same trimmed prompt, token for token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from asynctts import DEFAULT_SYSTEM_PROMPT, Endpoint, Finish, Path, Sampling, Solution, Solver
from asynctts.answers import extract_boxed
from asynctts.backends.context import ProblemContext, derive_seed
from asynctts.backends.policy import (
    PolicyClient,
    decode_trim_probe,
    encode_trim_probe,
    trim_min_tokens,
)
from asynctts.backends.templates import PolicyPrompt, chat_fields, continued_ids, load_tokenizer
from asynctts.ledger import Ledger
from asynctts.protocols import STEP_DELIMITER
from asynctts.transport import Transport

from helpers_vllm import Fleet

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

PROBLEMS = ("What is 12 + 7 - 3?", "Compute $3 + 4 - 1$.", "Find the value of $21 + 9 - 3 + 5$.")
# A step as the tiny model writes it (its arithmetic is poor; the format is what matters).
STEP_1 = "Step 1: 12 + 7 = 19.\n\n"
SOLVE_TIMEOUT_S = 300


async def post(url: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


def trimming_endpoints(fleet: Fleet, **settings: Any) -> tuple[Endpoint, Endpoint]:
    """(completions mode, chat mode) against the trimming server; completions mode renders the
    same trimming template on the client."""
    server = fleet.server("trimming")
    base = {"base_url": server.base_url, "model": "tiny-policy", **settings}
    tokenizer = str(fleet.models.trimming_tokenizer)
    return Endpoint(**base, tokenizer=tokenizer), Endpoint(**base, mode="chat")


def context(problem: str = PROBLEMS[0], seed: int | None = 0) -> ProblemContext:
    return ProblemContext("p0", problem, DEFAULT_SYSTEM_PROMPT, seed, Ledger())


def step_body(endpoint: Endpoint, **fields: Any) -> dict[str, Any]:
    return {
        "model": endpoint.model,
        "max_tokens": 60,
        "stop": [STEP_DELIMITER],
        "include_stop_str_in_output": True,
        **fields,
    }


# --- the failure, on the raw server -------------------------------------------------------------


async def test_the_template_drops_the_delimiter_and_a_plain_step_request_stops_at_once(
    fleet: Fleet,
) -> None:
    completions, chat = trimming_endpoints(fleet)
    tokenizer = load_tokenizer(completions.tokenizer_name)
    prompt = PolicyPrompt.for_endpoint(completions)
    root = completions.root_url

    async def tokenize(body: Mapping[str, Any]) -> list[int]:
        status, reply = await post(root + "/tokenize", {"model": chat.model, **body})
        assert status == 200, reply
        return list(reply["tokens"])

    # the root: both modes send the same tokens, so the same seed draws the same first steps
    at_root = chat_fields(PROBLEMS[0], DEFAULT_SYSTEM_PROMPT, "")
    assert await tokenize(at_root) == prompt.token_ids(PROBLEMS[0], DEFAULT_SYSTEM_PROMPT, ())
    # a continuation: the chat prompt is the completions prompt without the delimiter's tokens
    ids = prompt.token_ids(PROBLEMS[0], DEFAULT_SYSTEM_PROMPT, (STEP_1,))
    assert ids is not None
    delimiter_ids = continued_ids(tokenizer, STEP_1)[-2:]
    assert tokenizer.decode(delimiter_ids) == STEP_DELIMITER
    continuing = chat_fields(PROBLEMS[0], DEFAULT_SYSTEM_PROMPT, STEP_1)
    assert await tokenize(continuing) == ids[:-2]

    # without min_tokens the step stop fires on the delimiter the model writes first
    url = root + "/v1/chat/completions"
    status, reply = await post(url, step_body(chat, **continuing, temperature=0))
    assert status == 200, reply
    (choice,) = reply["choices"]
    assert choice["message"]["content"] == STEP_DELIMITER
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", STEP_DELIMITER)
    # with it, the step comes back whole, behind the delimiter the template ate
    min_tokens = trim_min_tokens(Sampling(), STEP_DELIMITER)
    body = step_body(chat, **continuing, temperature=0, min_tokens=min_tokens)
    _, reply = await post(url, body)
    (choice,) = reply["choices"]
    assert choice["message"]["content"].startswith(STEP_DELIMITER + "Step 2:")
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", STEP_DELIMITER)


async def test_the_probe_tells_the_trimming_template_from_the_one_that_keeps_whitespace(
    fleet: Fleet,
) -> None:
    verdicts = {}
    for role in ("trimming", "policy"):
        url = fleet.server(role).root_url + "/v1/chat/completions"
        replies = []
        for body in encode_trim_probe(model="tiny-policy", delimiter=STEP_DELIMITER):
            status, reply = await post(url, body)
            assert status == 200, reply
            replies.append(reply)
        verdicts[role] = decode_trim_probe(*replies)
    assert verdicts == {"trimming": True, "policy": False}


# --- the client ---------------------------------------------------------------------------------


async def test_chat_continuations_equal_completions_of_the_trimmed_prompt_with_a_seed(
    fleet: Fleet,
) -> None:
    """Sampling at temperature 0.8: the chat continuation is, sample for sample, completions
    of the same trimmed prompt with the same seed; the client drops the leading delimiter."""
    completions, chat = trimming_endpoints(fleet)
    sampling = Sampling(max_tokens=60)
    ctx = context()
    async with Transport(chat, name="policy") as transport:
        client = PolicyClient(chat, transport, sampling=sampling)
        roots = await client.generate(ctx, Path(), 4)
        parent = Path(steps=(STEP_1,), key=(0,))
        children = await client.generate(ctx, parent, 4)
    async with Transport(completions, name="policy") as transport:
        completions_client = PolicyClient(completions, transport, sampling=sampling)
        assert await completions_client.generate(ctx, Path(), 4) == roots

    ids = PolicyPrompt.for_endpoint(completions).token_ids(
        ctx.problem, DEFAULT_SYSTEM_PROMPT, parent.steps
    )
    assert ids is not None
    body = step_body(
        completions,
        prompt=ids[:-2],  # what the trimming template rendered
        n=4,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        seed=derive_seed(0, ctx.problem_id, parent.key),
        min_tokens=trim_min_tokens(sampling, STEP_DELIMITER),
    )
    status, reply = await post(completions.root_url + "/v1/completions", body)
    assert status == 200, reply
    texts = [c["text"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
    assert all(text.startswith(STEP_DELIMITER) for text in texts)
    assert [c.steps for c in children] == [
        (STEP_1, text.removeprefix(STEP_DELIMITER)) for text in texts
    ]
    assert all(c.finish is Finish.STEP and c.steps[1].startswith("Step 2:") for c in children)


async def solve_all(
    policy: Endpoint, prm: Endpoint, strategy: str, sampling: Sampling
) -> list[Solution]:
    async with Solver(policy=policy, prm=prm, sampling=sampling) as solver:
        return [
            await asyncio.wait_for(
                solver.solve(problem, strategy=strategy, n=4, seed=0), SOLVE_TIMEOUT_S
            )
            for problem in PROBLEMS
        ]


def outcome(solution: Solution) -> list[tuple[tuple[str, ...], Finish, str | None]]:
    return [(c.steps, c.finish, extract_boxed(c.text)) for c in solution.candidates]


@pytest.mark.parametrize("strategy", ["dvts", "beam_search", "best_of_n"])
async def test_chat_mode_gives_the_steps_of_completions_mode(
    fleet: Fleet, prm: Endpoint, strategy: str
) -> None:
    """Greedy (vLLM takes n=1 only then, hence one sample a request): the same steps, finish
    reasons and answers in both modes, for solutions of several steps."""
    completions, chat = trimming_endpoints(fleet, max_n_per_request=1)
    greedy = Sampling(temperature=0.0)
    expected = await solve_all(completions, prm, strategy, greedy)
    got = await solve_all(chat, prm, strategy, greedy)
    assert [outcome(s) for s in got] == [outcome(s) for s in expected]
    assert [s.answer for s in got] == [s.answer for s in expected]
    for solution in got:
        assert solution.answer is not None and not solution.lost
        for candidate in solution.candidates:
            assert candidate.finish is Finish.EOS
            assert len(candidate.steps) >= 2, candidate.steps
            assert all(s.endswith(STEP_DELIMITER) for s in candidate.steps[:-1])
            assert not any(s.startswith(STEP_DELIMITER) for s in candidate.steps)
    if strategy != "best_of_n":  # tree searches continue partial solutions in chat mode
        # one probe of two requests, and the delimiter written again at every continuation
        extra = got[0].ledger.totals().requests - expected[0].ledger.totals().requests
        assert extra == 2
        for g, e in zip(got, expected, strict=True):
            assert g.ledger.totals().completion_tokens > e.ledger.totals().completion_tokens


async def test_sampled_tree_search_in_chat_mode_writes_whole_steps(
    fleet: Fleet, prm: Endpoint
) -> None:
    _, chat = trimming_endpoints(fleet)
    for solution in await solve_all(chat, prm, "dvts", Sampling()):
        assert solution.answer is not None and not solution.lost
        for candidate in solution.candidates:
            assert candidate.finish is not Finish.EMPTY
            assert all(s.endswith(STEP_DELIMITER) for s in candidate.steps[:-1])
            assert all(s.startswith(("Step ", "The answer")) for s in candidate.steps)
        assert max(len(c.steps) for c in solution.candidates) >= 2
