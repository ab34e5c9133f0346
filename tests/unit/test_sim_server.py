"""SimulatedServer over real HTTP on 127.0.0.1 (aiohttp client), plus its pure model.

No test asserts on elapsed time: scheduling facts are read from the server's records and
counters (order of events, peaks, exact time-weighted means), never from durations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.testing.cli import add_sim_arguments, sim_settings
from asynctts.testing.prefix_cache import PrefixCache
from asynctts.testing.server import (
    H200_1B_ITERATION_S,
    Fault,
    LatencyModel,
    SimStats,
    SimulatedServer,
    error_body,
    load_problems,
)
from asynctts.testing.sim_model import (
    CONCLUSION_PATTERN,
    PRM_DISCRIMINATION,
    PRM_FOOLED_RATE,
    PRM_PERSISTENCE,
    STEP_CORRELATION,
    STEP_PATTERN,
    SimModel,
    SimProblem,
    conclusion,
    first_slip,
    wrong_answer,
)

PROBLEM = "What is 6 times 7?"
ANSWER = "42"
SYSTEM = "Solve the problem. Conclude with: Therefore, the final answer is: $\\boxed{answer}$."


def template(problem: str) -> str:
    """A chat-template-like rendering, so tests prove the model reads through templates."""
    return (
        f"<|start|>system<|sep|>{SYSTEM}<|end|><|start|>user<|sep|>{problem}<|end|>"
        "<|start|>assistant<|sep|>"
    )


STEP_RE = re.compile(STEP_PATTERN)
CONCLUSION_RE = re.compile(CONCLUSION_PATTERN)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    problems = {
        PROBLEM: SimProblem(answer=ANSWER, n_steps=4, slip_rate=0.0),
        "Always wrong?": SimProblem(answer="7", n_steps=3, slip_rate=1.0),
    }
    async with SimulatedServer(problems=problems, prm_model="sim-prm") as s:
        yield s


async def post(
    session: aiohttp.ClientSession, server: SimulatedServer, route: str, body: Any
) -> tuple[int, Any]:
    async with session.post(server.url + route, json=body) as response:
        return response.status, await response.json()


async def step(
    session: aiohttp.ClientSession, server: SimulatedServer, prompt: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "model": "sim-policy",
        "prompt": prompt,
        "max_tokens": 200,
        "stop": ["\n\n"],
        "include_stop_str_in_output": True,
        **extra,
    }
    status, payload = await post(session, server, "/v1/completions", body)
    assert status == 200, payload
    return payload  # type: ignore[no-any-return]


async def walk(
    session: aiohttp.ClientSession, server: SimulatedServer, prompt: str, seed: int
) -> list[str]:
    """Generate one step per request until EOS; the steps in order."""
    steps: list[str] = []
    for _ in range(20):
        choice = (await step(session, server, prompt + "".join(steps), seed=seed))["choices"][0]
        steps.append(choice["text"])
        assert choice["finish_reason"] == "stop"
        if choice["stop_reason"] is None:
            return steps
        assert choice["stop_reason"] == "\n\n" and choice["text"].endswith("\n\n")
    raise AssertionError(f"no EOS after 20 steps: {steps}")


def final_answer(steps: list[str]) -> str:
    match = CONCLUSION_RE.fullmatch(steps[-1])
    assert match is not None, steps[-1]
    return match["answer"]


# --- the deterministic model over HTTP -------------------------------------------------------


async def test_walk_reaches_the_registered_answer_without_slips(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    for seed in (0, 1, 2):
        steps = await walk(session, server, template(PROBLEM), seed)
        assert len(steps) == 5  # 4 steps + the conclusion
        for i, text in enumerate(steps[:-1], start=1):
            match = STEP_RE.match(text)
            assert match is not None and match["index"] == str(i)
        assert final_answer(steps) == ANSWER
    assert {r.problem for r in server.stats.records} == {PROBLEM}


async def test_walk_with_slips_reaches_a_wrong_answer(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    steps = await walk(session, server, template("Always wrong?"), seed=3)
    assert len(steps) == 4
    problem = SimProblem(answer="7", n_steps=3, slip_rate=1.0)
    tags = [STEP_RE.match(s)["tag"] for s in steps[:-1]]  # type: ignore[index]
    wrong_path = first_slip(
        tags, problem.slip_rates("Always wrong?"), "Always wrong?", STEP_CORRELATION
    )
    assert wrong_path is not None and wrong_path.endswith(tags[0])  # step 1 slipped
    assert final_answer(steps) == wrong_answer(problem, "Always wrong?", wrong_path) != "7"


async def test_same_seed_same_text_and_choice_i_uses_seed_plus_i(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    prompt = template(PROBLEM)
    three = (await step(session, server, prompt, seed=10, n=3))["choices"]
    assert [c["index"] for c in three] == [0, 1, 2]
    singles = [(await step(session, server, prompt, seed=10 + i))["choices"][0] for i in range(3)]
    assert [c["text"] for c in three] == [c["text"] for c in singles]
    again = (await step(session, server, prompt, seed=10, n=3))["choices"]
    assert again == three
    assert len({c["text"] for c in three}) == 3  # distinct seeds, distinct steps
    records = [r for r in server.stats.records if r.n == 3]
    assert [(r.seed, r.problem) for r in records] == [(10, PROBLEM), (10, PROBLEM)]


async def test_unseeded_requests_follow_the_server_seed(session: aiohttp.ClientSession) -> None:
    texts = []
    for _ in range(2):
        async with SimulatedServer(seed=5) as s:
            payload = await step(session, s, template(PROBLEM), n=4)
            texts.append([c["text"] for c in payload["choices"]])
    assert texts[0] == texts[1] and len(set(texts[0])) == 4


async def test_temperature_zero_is_greedy(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    a = (await step(session, server, template(PROBLEM), n=3, seed=1, temperature=0))["choices"]
    b = (await step(session, server, template(PROBLEM), n=1, seed=9, temperature=0))["choices"]
    assert {c["text"] for c in a} == {b[0]["text"]}


async def test_usage_counts_words_and_sums_choices(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    prompt = template(PROBLEM) + "Step 1: so we get (0000ff).\n\n"
    payload = await step(session, server, prompt, n=4, seed=0)
    words = [len(c["text"].split()) for c in payload["choices"]]
    usage = payload["usage"]
    assert usage["completion_tokens"] == sum(words)
    assert usage["prompt_tokens"] == len(prompt.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(STEP_RE.match(c["text"])["index"] == "2" for c in payload["choices"])  # type: ignore[index]
    assert server.stats.completion_tokens["/v1/completions"] == sum(words)


async def test_include_stop_str_in_output(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    prompt = template(PROBLEM)
    kept = (await step(session, server, prompt, seed=4))["choices"][0]
    cut = await step(session, server, prompt, seed=4, include_stop_str_in_output=False)
    choice = cut["choices"][0]
    assert choice["stop_reason"] == kept["stop_reason"] == "\n\n"
    assert not choice["text"].endswith("\n") and choice["text"] + "\n\n" == kept["text"]


async def test_without_the_step_stop_the_rest_of_the_solution_comes_at_once(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    steps = await walk(session, server, template(PROBLEM), seed=6)
    body = {"prompt": template(PROBLEM) + steps[0], "max_tokens": 500, "seed": 6}
    status, payload = await post(session, server, "/v1/completions", body)
    assert status == 200
    (choice,) = payload["choices"]
    assert choice["text"] == "".join(steps[1:])
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)


async def test_max_tokens_cuts_with_finish_reason_length(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    payload = await step(session, server, template(PROBLEM), seed=0, max_tokens=3)
    (choice,) = payload["choices"]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    assert choice["text"].startswith("Step 1: ") and len(choice["text"].split()) == 3
    assert payload["usage"]["completion_tokens"] == 3


async def test_default_completions_max_tokens_is_vllms_16(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    status, payload = await post(session, server, "/v1/completions", {"prompt": PROBLEM})
    assert status == 200 and payload["usage"]["completion_tokens"] == 16
    assert payload["choices"][0]["finish_reason"] == "length"


async def test_a_concluded_prompt_gets_an_empty_eos(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    steps = await walk(session, server, template(PROBLEM), seed=0)
    (choice,) = (await step(session, server, template(PROBLEM) + "".join(steps)))["choices"]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("", "stop", None)


async def test_unregistered_problem_gets_a_hash_derived_integer_answer(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    steps = await walk(session, server, template("What is the unknown quantity?"), seed=0)
    assert len(steps) == 5 and final_answer(steps).isdigit()
    assert steps == await walk(session, server, template("What is the unknown quantity?"), 0)
    assert {r.problem for r in server.stats.records} == {None}


async def test_five_hundred_registered_problems_are_told_apart(
    session: aiohttp.ClientSession,
) -> None:
    problems = {
        f"Problem number {i}: compute {i} plus {i}.": SimProblem(str(2 * i)) for i in range(500)
    }
    async with SimulatedServer(problems=problems) as s:
        for i in (0, 317, 499):
            await step(session, s, template(f"Problem number {i}: compute {i} plus {i}."), seed=0)
        assert [r.problem for r in s.stats.records] == [
            f"Problem number {i}: compute {i} plus {i}." for i in (0, 317, 499)
        ]


async def test_chat_continuation_equals_completions_continuation(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    partial = "".join((await walk(session, server, template(PROBLEM), seed=8))[:2])
    completions = await step(session, server, template(PROBLEM) + partial, seed=21, n=2)
    chat_body = {
        "model": "sim-policy",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": PROBLEM}]},
            {"role": "assistant", "content": partial},
        ],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "n": 2,
        "seed": 21,
        "max_tokens": 200,
        "stop": ["\n\n"],
        "include_stop_str_in_output": True,
    }
    status, chat = await post(session, server, "/v1/chat/completions", chat_body)
    assert status == 200 and chat["object"] == "chat.completion"
    assert [c["message"]["content"] for c in chat["choices"]] == [
        c["text"] for c in completions["choices"]
    ]
    assert [(c["finish_reason"], c["stop_reason"]) for c in chat["choices"]] == [
        ("stop", "\n\n")
    ] * 2
    assert all(c["message"]["role"] == "assistant" for c in chat["choices"])
    assert STEP_RE.match(chat["choices"][0]["message"]["content"])["index"] == "3"  # type: ignore[index]


async def test_chat_both_generation_flags_is_a_400(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "messages": [{"role": "user", "content": PROBLEM}, {"role": "assistant", "content": ""}],
        "continue_final_message": True,
        "add_generation_prompt": True,
    }
    status, payload = await post(session, server, "/v1/chat/completions", body)
    assert status == 400
    assert payload == error_body(
        400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    )
    assert payload["error"]["type"] == "BadRequestError"


async def test_wrong_model_is_vllms_404(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    for route, body in (
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ("/pooling", {"model": "nope", "input": ["x"]}),
    ):
        status, payload = await post(session, server, route, body)
        assert status == 404
        assert payload == {
            "error": {
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }


async def test_context_overflow_is_vllms_400(session: aiohttp.ClientSession) -> None:
    """As vLLM 0.32: max_tokens is shortened to what the prompt leaves of the context; a
    prompt that fills the context, or max_tokens above the context itself, is a 400."""
    async with SimulatedServer(max_model_len=64) as s:
        body = {"prompt": "Q. " + "word " * 59, "max_tokens": 10}
        status, payload = await post(session, s, "/v1/completions", body)
        assert status == 200 and payload["usage"]["completion_tokens"] <= 64 - 60
        status, payload = await post(session, s, "/v1/completions", {**body, "max_tokens": 65})
        assert status == 400
        assert payload["error"]["message"] == (
            "max_tokens=65 cannot be greater than max_model_len=64."
        )
        assert payload["error"]["code"] == 400
        chat = {"messages": [{"role": "user", "content": "word " * 64}]}
        status, payload = await post(session, s, "/v1/chat/completions", chat)
        assert status == 400 and payload["error"]["message"] == (
            "This model's maximum context length is 64 tokens. However, your request has 64 "
            "input tokens. Please reduce the length of the input."
        )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "JSON decode error"),
        (b"[1, 2]", "the request body must be a JSON object, got list"),
        (b"{}", "Field required: 'prompt'"),
        (b'{"prompt": ["a", "b"]}', "prompt must be a string"),
        (b'{"prompt": "a", "n": 0}', "n must be an integer >= 1, got 0"),
        (b'{"prompt": "a", "max_tokens": 0}', "max_tokens must be at least 1, got 0."),
        (b'{"prompt": "a", "stop": 5}', "stop must be a string or a list of strings, got 5"),
        (b'{"prompt": "a", "seed": "x"}', "seed must be an integer, got 'x'"),
    ],
)
async def test_malformed_requests_are_400_with_a_message(
    server: SimulatedServer, session: aiohttp.ClientSession, raw: bytes, message: str
) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(server.url + "/v1/completions", data=raw, headers=headers) as r:
        assert r.status == 400
        payload = await r.json()
    assert payload["error"]["message"].startswith(message)
    assert server.stats.statuses[400] == 1


async def test_pooling_scores_one_row_per_tag(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    tag = "<extra_0>"
    steps = f"Step 1: so we get (000a1b).\n\n{tag}Step 2: then note (001c2d).\n\n{tag}"
    wrong = f"{steps}{conclusion('43')}{tag}"
    right = f"{steps}{conclusion(ANSWER)}{tag}"
    inputs = [f"Problem: {PROBLEM}\n\n{wrong}", f"Problem: {PROBLEM}\n\n{right}", PROBLEM]
    status, payload = await post(session, server, "/pooling", {"model": "sim-prm", "input": inputs})
    assert status == 200 and payload["object"] == "list"
    rows = [item["data"] for item in payload["data"]]
    assert [item["index"] for item in payload["data"]] == [0, 1, 2]
    assert [len(r) for r in rows] == [3, 3, 0]
    assert all(0 < p < 1 and neg + p == pytest.approx(1) for r in rows for neg, p in r)
    # the PRM judges the path, not the boxed answer: it never sees the problem's answer, so
    # two conclusions of the same path score alike whatever they box
    assert rows[0] == rows[1]
    assert rows[0] == SimModel({PROBLEM: SimProblem(ANSWER, slip_rate=0.0)}).score(inputs[1])
    words = sum(len(text.split()) for text in inputs)
    assert payload["usage"]["prompt_tokens"] == payload["usage"]["total_tokens"] == words
    assert server.stats.prompt_tokens["/pooling"] == words


async def test_models_health_tokenize_and_not_found(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    async with session.get(server.base_url + "/models") as r:
        models = await r.json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [
        ("sim-policy", "model", 4096),
        ("sim-prm", "model", 4096),
    ]
    async with session.get(server.url + "/health") as r:
        assert r.status == 200 and await r.read() == b""
    body = {"model": "sim-policy", "prompt": "a b  c\n\nd", "return_token_strs": True}
    status, tokens = await post(session, server, "/tokenize", body)
    assert status == 200
    assert (tokens["count"], tokens["max_model_len"], len(tokens["tokens"])) == (4, 4096, 4)
    assert tokens["token_strs"] == ["a", "b", "c", "d"]
    async with session.get(server.url + "/v2/nothing") as r:
        assert r.status == 404 and await r.json() == {"detail": "Not Found"}
    assert server.stats.routes["/v2/nothing"] == 1


def parse_prometheus(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_report_the_prefix_cache(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    first = await step(session, server, "Preamble here.\n\n" + PROBLEM + "\n\n", seed=0)
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    prompt = "Preamble here.\n\n" + PROBLEM + "\n\n" + first["choices"][0]["text"]
    second = await step(session, server, prompt, seed=0)
    # the longest prefix seen before ends at the step boundary after the problem
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 7}
    async with session.get(server.url + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        metrics = parse_prometheus(await r.text())
    label = '{model_name="sim-policy"}'
    assert metrics["vllm:prefix_cache_hits_total" + label] == 7
    assert metrics["vllm:prefix_cache_queries_total" + label] == 7 + len(prompt.split())
    assert metrics["vllm:num_requests_running" + label] == 0
    assert metrics["vllm:num_requests_waiting" + label] == 0
    success = 'vllm:request_success_total{finished_reason="stop",model_name="sim-policy"}'
    assert metrics[success] == 2


def test_prefix_cache_hits_only_whole_chained_prefixes() -> None:
    cache = PrefixCache(capacity=3)
    assert cache.lookup("a b\n\nc\n\nd") == (4, 0)
    assert cache.lookup("a b\n\nc\n\nx y") == (5, 3)
    assert cache.lookup("a b\n\nc\n\nd") == (4, 3)  # never the whole prompt
    assert cache.lookup("z\n\nc\n\nd") == (3, 0)  # same segment after a different prefix
    cache.lookup("q\n\nr\n\ns")  # capacity 3: evicts the rest
    assert cache.lookup("a b\n\nc") == (3, 0)


# --- faults -----------------------------------------------------------------------------------


async def test_status_fault_with_retry_after_applies_times_then_is_used_up(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", status=503, retry_after_s=2, times=2))
    seen = []
    for _ in range(3):
        async with session.post(server.url + "/v1/completions", json={"prompt": "x"}) as r:
            seen.append((r.status, r.headers.get("Retry-After"), await r.json()))
    assert [(s, h) for s, h, _ in seen] == [(503, "2"), (503, "2"), (200, None)]
    assert seen[0][2]["error"]["type"] == "ServiceUnavailableError"
    assert seen[0][2]["error"]["code"] == 503
    assert server.pending_faults() == []
    records = server.stats.records
    assert [r.status for r in records] == [503, 503, 200]
    assert records[0].fault is records[1].fault is not None and records[2].fault is None


async def test_faults_apply_in_order_and_only_to_matching_requests(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", status=429, match=lambda b: b.get("seed") == 5))
    server.add_fault(Fault("*", status=500, times=2))
    statuses = []
    for route, body in (
        ("/v1/completions", {"prompt": "x", "seed": 1}),  # 500 (the 429 does not match)
        ("/v1/completions", {"prompt": "x", "seed": 5}),  # 429 (added first)
        ("/pooling", {"input": "x"}),  # 500 ("*" matches any route)
        ("/v1/completions", {"prompt": "x", "seed": 5}),  # both used up
    ):
        async with session.post(server.url + route, json=body) as r:
            statuses.append(r.status)
    assert statuses == [500, 429, 500, 200]


async def test_drop_closes_the_connection_without_a_response(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", drop=True))
    with pytest.raises(aiohttp.ClientError):
        async with session.post(server.url + "/v1/completions", json={"prompt": "x"}) as r:
            await r.read()
    assert server.stats.records[0].status is None
    assert server.stats.statuses[None] == 1
    status, _ = await post(session, server, "/v1/completions", {"prompt": "x"})
    assert status == 200


async def test_truncate_sends_a_200_whose_json_is_cut(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", truncate=True))
    async with session.post(server.url + "/v1/completions", json={"prompt": "x"}) as r:
        assert r.status == 200
        raw = await r.read()
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert raw.startswith(b'{"id":"cmpl-')
    # a cut response is not what the client's ledger can count
    assert server.stats.completion_tokens["/v1/completions"] == 0


async def test_close_mid_body_fails_the_clients_read(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", close_mid_body=True))
    async with session.post(server.url + "/v1/completions", json={"prompt": "x"}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_custom_body_answers_html(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    page = "<html><body>502 Bad Gateway</body></html>"
    server.add_fault(Fault("/v1/models", status=502, body=page))
    async with session.get(server.base_url + "/models") as r:
        assert (r.status, r.content_type, await r.text()) == (502, "text/html", page)


async def test_delay_fault_trips_a_client_timeout(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    server.add_fault(Fault("/v1/completions", delay_s=5.0))
    with pytest.raises(TimeoutError):
        async with session.post(
            server.url + "/v1/completions",
            json={"prompt": "x"},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as r:
            await r.read()
    await wait_for(lambda: len(server.stats.records) == 1)
    (record,) = server.stats.records
    assert record.status is None and record.disconnected


def test_fault_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match="route='completions'"):
        Fault("completions")
    with pytest.raises(ValueError, match=r"retry_after_s=1\.0: needs a status"):
        Fault("*", retry_after_s=1.0)
    with pytest.raises(ValueError, match="drop=True sends nothing"):
        Fault("*", drop=True, status=500)
    with pytest.raises(ValueError, match="times=0"):
        Fault("*", status=500, times=0)
    with pytest.raises(ValueError, match="status=99"):
        Fault("*", status=99)


async def test_max_concurrent_requests_answers_429_beyond_the_limit(
    session: aiohttp.ClientSession,
) -> None:
    async with SimulatedServer(max_concurrent_requests=2) as s:
        s.add_fault(Fault("/v1/completions", delay_s=30.0, times=2))  # two held in flight
        held = [
            asyncio.create_task(post(session, s, "/v1/completions", {"prompt": "x"}))
            for _ in range(2)
        ]
        await wait_for(lambda: s.stats.in_flight == 2)
        status, payload = await post(session, s, "/v1/completions", {"prompt": "x"})
        assert status == 429
        assert payload["error"]["message"] == "Too many concurrent requests: the limit is 2"
        async with session.get(s.url + "/v1/models") as models:  # GETs are not limited
            assert models.status == 200
        s.max_concurrent_requests = None  # lifted while serving
        status, _ = await post(session, s, "/v1/completions", {"prompt": "x"})
        assert status == 200
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await wait_for(lambda: s.stats.in_flight == 0)
    assert s.stats.statuses[429] == 1
    assert [r.status for r in s.stats.records if r.fault is None][:3] == [429, 200, 200]
    with pytest.raises(ValueError, match="max_concurrent_requests=0"):
        SimulatedServer(max_concurrent_requests=0)


# --- latency and the continuous-batching engine ------------------------------------------------


async def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    """Poll `condition` (no timing assertion: the deadline only stops a hung test)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls the server's counters from outside
            await asyncio.sleep(0.005)


def test_latency_model_interpolates_the_h200_table() -> None:
    model = LatencyModel.h200_1b()
    assert [model.iteration_s(r) for r, _ in H200_1B_ITERATION_S] == [
        s for _, s in H200_1B_ITERATION_S
    ]
    assert model.iteration_s(8) == pytest.approx(0.0026 + 7 / 15 * (0.0057 - 0.0026))
    assert model.iteration_s(2048) == pytest.approx(0.194 + 1024 * (0.194 - 0.050) / 768)
    assert LatencyModel.h200_1b(time_scale=0.5).iteration_s(16) == pytest.approx(0.00285)
    assert LatencyModel.constant(0.01).iteration_s(500) == 0.01
    assert LatencyModel.h200_8b_prm().prefill_s(34_000) == pytest.approx(1.0)
    assert not LatencyModel.zero(per_request_jitter_s=0.1).uses_engine
    assert LatencyModel.h200_8b_prm().uses_engine and LatencyModel.constant(1e-3).uses_engine
    with pytest.raises(ValueError, match="strictly increasing"):
        LatencyModel(iteration_points=((4, 0.1), (2, 0.2)))
    with pytest.raises(ValueError, match="time_scale=0"):
        LatencyModel(time_scale=0)


async def test_engine_queues_beyond_max_num_seqs_fifo(session: aiohttp.ClientSession) -> None:
    async with SimulatedServer(latency=LatencyModel.constant(0.02), max_num_seqs=1) as s:
        body = {"prompt": PROBLEM, "max_tokens": 50, "stop": ["\n\n"], "seed": 0}
        first = asyncio.create_task(post(session, s, "/v1/completions", {**body, "n": 2}))
        await wait_for(lambda: s.stats.waiting == 1)
        async with session.get(s.url + "/metrics") as r:
            metrics = parse_prometheus(await r.text())
        assert metrics['vllm:num_requests_running{model_name="sim-policy"}'] == 1
        assert metrics['vllm:num_requests_waiting{model_name="sim-policy"}'] == 1
        second = asyncio.create_task(post(session, s, "/v1/completions", body))
        await wait_for(lambda: s.stats.waiting == 2)
        assert [(await first)[0], (await second)[0]] == [200, 200]
        stats = s.stats
    assert (stats.peak_running, stats.running, stats.waiting) == (1, 0, 0)
    completions = [r for r in stats.records if r.route == "/v1/completions"]
    assert completions[0].start_s < completions[1].start_s
    assert completions[0].end_s < completions[1].end_s  # FIFO
    assert stats.iterations == sum(r.tokens for r in completions)  # one token per iteration
    assert stats.mean_running == pytest.approx(1.0) and stats.occupancy == pytest.approx(1.0)


async def test_five_hundred_concurrent_requests_through_the_engine(
    session: aiohttp.ClientSession,
) -> None:
    latency = LatencyModel.constant(0.002)
    async with SimulatedServer(latency=latency, max_num_seqs=64) as s:
        body = {"prompt": template(PROBLEM), "max_tokens": 200}
        results = await asyncio.gather(
            *(post(session, s, "/v1/completions", {**body, "seed": i}) for i in range(500))
        )
        stats = s.stats
    assert [status for status, _ in results] == [200] * 500
    assert stats.routes["/v1/completions"] == 500 and len(stats.records) == 500
    assert stats.peak_running == 64 and stats.running == 0 and stats.waiting == 0
    assert stats.peak_concurrent <= 500
    assert 0 < stats.mean_running <= 64
    assert stats.occupancy == pytest.approx(stats.mean_running / 64)
    assert stats.completion_tokens["/v1/completions"] == sum(
        p["usage"]["completion_tokens"] for _, p in results
    )


async def test_five_hundred_concurrent_requests_zero_latency_skip_the_engine(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    body = {"prompt": template(PROBLEM), "max_tokens": 50, "stop": ["\n\n"]}
    results = await asyncio.gather(
        *(post(session, server, "/v1/completions", {**body, "seed": i}) for i in range(500))
    )
    assert [status for status, _ in results] == [200] * 500
    stats = server.stats
    assert stats.iterations == 0 and stats.peak_running == 0 and stats.busy_s == 0
    assert stats.statuses[200] == 500 and stats.in_flight == 0


async def test_a_client_that_goes_away_aborts_its_sequences(
    session: aiohttp.ClientSession,
) -> None:
    async with SimulatedServer(latency=LatencyModel.constant(0.05), max_num_seqs=4) as s:
        with pytest.raises(TimeoutError):
            await session.post(
                s.url + "/v1/completions",
                json={"prompt": PROBLEM, "max_tokens": 500, "n": 6},
                timeout=aiohttp.ClientTimeout(total=0.2),
            )
        await wait_for(lambda: len(s.stats.records) == 1)
        assert (s.stats.running, s.stats.waiting) == (0, 0)
        (record,) = s.stats.records
        assert record.disconnected and record.status is None and record.n == 6


async def test_jitter_is_seeded_and_recorded(session: aiohttp.ClientSession) -> None:
    draws = []
    for seed in (1, 1, 2):
        latency = LatencyModel.zero(per_request_jitter_s=0.02)
        async with SimulatedServer(latency=latency, seed=seed) as s:
            for _ in range(4):
                await post(session, s, "/v1/completions", {"prompt": "x"})
            records = s.stats.records
        assert all(0 <= r.jitter_s <= 0.02 and r.end_s - r.start_s >= r.jitter_s for r in records)
        draws.append([r.jitter_s for r in records])
    assert draws[0] == draws[1] != draws[2]
    assert len(set(draws[0])) == 4


async def test_restart_keeps_the_port_and_the_records(session: aiohttp.ClientSession) -> None:
    async with SimulatedServer() as s:
        url = s.url
        await post(session, s, "/v1/completions", {"prompt": "x"})
        await s.stop()
        assert not s.running
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, s, "/v1/completions", {"prompt": "x"})
        await s.start()
        assert s.url == url
        status, _ = await post(session, s, "/v1/completions", {"prompt": "x"})
        assert status == 200 and len(s.stats.records) == 2


async def test_stop_drops_requests_in_flight(session: aiohttp.ClientSession) -> None:
    async with SimulatedServer(latency=LatencyModel.constant(0.05)) as s:
        body = {"prompt": PROBLEM, "max_tokens": 500, "n": 2}
        pending = asyncio.create_task(post(session, s, "/v1/completions", body))
        await wait_for(lambda: s.stats.running == 2)
        await s.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending
        (record,) = s.stats.records
        assert record.status is None and record.disconnected
        assert (s.stats.in_flight, s.stats.running, s.stats.waiting) == (0, 0, 0)


async def test_reset_stats_returns_the_old_counters(
    server: SimulatedServer, session: aiohttp.ClientSession
) -> None:
    await post(session, server, "/v1/completions", {"prompt": "x"})
    old = server.reset_stats()
    assert isinstance(old, SimStats) and old.routes["/v1/completions"] == 1
    assert server.stats.routes["/v1/completions"] == 0 and server.stats.records == []


# --- the pure model ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**62), slip_rate=st.sampled_from([0.0, 0.3, 1.0]))
def test_stepwise_and_one_shot_generation_agree(seed: int, slip_rate: float) -> None:
    model = SimModel({PROBLEM: SimProblem(ANSWER, n_steps=5, slip_rate=slip_rate)})
    prompt = template(PROBLEM)
    one_shot = model.sample(model.read(prompt), seed).text
    stepwise = ""
    while True:
        s = model.sample(model.read(prompt + stepwise), seed, stop=["\n\n"])
        stepwise += s.text + (s.stop_reason or "")
        if s.stop_reason is None:
            break
    assert stepwise == one_shot
    problem = model.problems[PROBLEM]
    tags = [m["tag"] for m in STEP_RE.finditer(one_shot)]
    wrong_path = first_slip(tags, problem.slip_rates(PROBLEM), PROBLEM, STEP_CORRELATION)
    expected = ANSWER if wrong_path is None else wrong_answer(problem, PROBLEM, wrong_path)
    assert one_shot.endswith(conclusion(expected))
    assert len(STEP_RE.findall(one_shot)) == 5


def test_wrong_paths_sometimes_share_a_wrong_answer() -> None:
    model = SimModel({PROBLEM: SimProblem(ANSWER, n_steps=4, slip_rate=0.5)})
    answers = [
        CONCLUSION_RE.search(model.sample(model.read(PROBLEM), seed).text)["answer"]  # type: ignore[index]
        for seed in range(200)
    ]
    wrong = [a for a in answers if a != ANSWER]
    assert 0 < len(wrong) < 200
    assert 1 < len(set(wrong)) < len(wrong)


def test_the_longest_registered_problem_in_the_prompt_wins() -> None:
    model = SimModel({"Add 1.": SimProblem("1"), "Add 1. Then double it.": SimProblem("4")})
    assert model.read(template("Add 1. Then double it.")).key == "Add 1. Then double it."
    assert model.read(template("Add 1.")).key == "Add 1."
    # the system prompt quotes the conclusion; only text after the problem counts
    assert not model.read(template("Add 1.")).concluded


def test_sim_problem_validates() -> None:
    with pytest.raises(ValueError, match=r"slip_rate=1\.5"):
        SimProblem("1", slip_rate=1.5)
    with pytest.raises(ValueError, match="answer=''"):
        SimProblem("")


# --- the command line -------------------------------------------------------------------------


def test_load_problems_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "A?", "answer": 3}\n\n{"problem": "B?"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:3: need a field 'answer'"):
        load_problems(path)
    path.write_text('{"problem": "A?", "answer": 3, "slip_rate": 0}\n')
    assert load_problems(path) == {"A?": SimProblem("3", slip_rate=0.0)}


@pytest.mark.parametrize("prefix", ["", "sim-"])
def test_the_sim_flags_reach_the_model_and_default_to_the_fit(prefix: str) -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser, prefix)
    defaults = sim_settings(parser.parse_args([]), prefix)
    assert defaults == {
        "prm_discrimination": PRM_DISCRIMINATION,
        "prm_fooled_rate": PRM_FOOLED_RATE,
        "prm_persistence": PRM_PERSISTENCE,
        "step_correlation": STEP_CORRELATION,
    }
    flags = [
        *(f"--{prefix}prm-discrimination", "1.5", f"--{prefix}prm-persistence", "0.5"),
        *(f"--{prefix}step-correlation", "0.25"),
    ]
    server = SimulatedServer(**sim_settings(parser.parse_args(flags), prefix))
    sim = server.sim
    assert (sim.prm_discrimination, sim.prm_persistence, sim.step_correlation) == (1.5, 0.5, 0.25)
    assert server.sim.prm_fooled_rate == PRM_FOOLED_RATE


async def test_cli_serves_problems_from_a_jsonl_file(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"problem": PROBLEM, "answer": 42}) + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctts.testing.server",
        "--port",
        "0",
        "--problems",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            url = None
            while url is None:
                line = (await process.stdout.readline()).decode()
                assert line, "the server exited before it was ready"
                if found := re.search(r"base_url=(http://127\.0\.0\.1:\d+)/v1", line):
                    url = found[1]
        body = {"prompt": template(PROBLEM), "max_tokens": 500, "seed": 0}
        async with session.post(url + "/v1/completions", json=body) as r:
            payload = await r.json()
        text = payload["choices"][0]["text"]
        # the file's problem, as the same model in this process writes it with seed 0
        model = SimModel({PROBLEM: SimProblem("42")})
        assert text == model.sample(model.read(template(PROBLEM)), 0).text
        assert CONCLUSION_RE.search(text) is not None
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0
