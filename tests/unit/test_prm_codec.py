"""Step scoring: pooling and logprob PRM codecs on JSON fixtures, charges of coalesced requests,
and the clients over a scripted `PostJson` (the protocol they are written against)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from asynctts.backends.context import ProblemContext
from asynctts.backends.prm import (
    COMPLETIONS_ROUTE,
    POOLING_ROUTE,
    LogprobPRM,
    PoolingPRM,
    ScoreJob,
    coalesced_charges,
    decode_logprob,
    decode_pooling,
    encode_logprob,
    encode_pooling,
    encode_pooling_messages,
)
from asynctts.backends.templates import PRM_SYSTEM_PROMPT, PromptRenderError
from asynctts.endpoint import Endpoint
from asynctts.errors import BadResponse, BranchLost, ConfigError, ServerError
from asynctts.ledger import Charge, Ledger
from asynctts.protocols import Path

from helpers_tokenizers import BOS, LLAMA_TEMPLATE, build_tokenizer
from helpers_transport import ScriptedTransport

LONG_WINDOW_S = 3600.0


def job(
    steps: int,
    *,
    key: tuple[int, ...] = (0, 1),
    prompt: str = "x",
    ledger: Ledger | None = None,
    positions: tuple[int, ...] = (),
) -> ScoreJob:
    path = Path(steps=tuple(f"s{i}\n\n" for i in range(steps)), key=key)
    return ScoreJob(ledger or Ledger(), "p1", path, prompt, positions)


def entry(**probabilities: tuple[float, int]) -> dict[str, Any]:
    """A prompt_logprobs entry from decoded token -> (probability, rank)."""
    return {
        str(i): {"logprob": math.log(p), "rank": rank, "decoded_token": token}
        for i, (token, (p, rank)) in enumerate(probabilities.items())
    }


# --- pooling codec --------------------------------------------------------------------------


def test_pooling_body() -> None:
    assert encode_pooling("prm", ["a", "b"]) == {"model": "prm", "input": ["a", "b"]}


def test_pooling_scores_are_p_pos_in_index_order() -> None:
    response = {
        "data": [
            {"index": 1, "data": [[0.9, 0.1]]},
            {"index": 0, "data": [[0.2, 0.8], [0.7, 0.3]]},
        ]
    }
    assert decode_pooling(response, [job(2), job(1)]) == [(0.8, 0.3), (0.1,)]


def test_pooling_wrong_row_count_fails_that_path_only() -> None:
    response = {"data": [{"index": 0, "data": [[0.5, 0.5]] * 3}, {"index": 1, "data": [[0, 1]]}]}
    first, second = decode_pooling(response, [job(4, key=(2, 0)), job(1)])
    assert isinstance(first, BadResponse)
    assert str(first).startswith("PRM returned 3 scores for 4 steps of branch 2.0 of problem p1")
    assert second == (1.0,)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (None, "no score rows for branch 0.1 of problem p1"),
        ([[0.5]], r"step 0 of branch 0.1 of problem p1 has row \[0.5\], expected \[p_neg, p_pos\]"),
        ([[0.5, 1.5]], r"has row \[0.5, 1.5\]"),
        ([[0.5, "x"]], r"has row \[0.5, 'x'\]"),
    ],
)
def test_pooling_bad_rows(rows: Any, message: str) -> None:
    (outcome,) = decode_pooling({"data": [{"index": 0, "data": rows}]}, [job(1)])
    assert isinstance(outcome, BadResponse)
    assert re.search(message, str(outcome))


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({}, "/pooling: 'data' is missing, expected a list"),
        ({"data": [{"index": 0, "data": [[0, 1]]}]}, "1 entries in 'data', expected 2"),
        ({"data": [{"index": 0, "data": []}, {"index": 0, "data": []}]},
         r"data\[1\].index 0 is repeated"),
        ({"data": [{"index": 0, "data": []}, "x"]}, r"data\[1\] is str"),
    ],
)  # fmt: skip
def test_pooling_bad_shapes_fail_the_batch(response: dict[str, Any], message: str) -> None:
    with pytest.raises(BadResponse, match=message):
        decode_pooling(response, [job(1), job(1)])


# --- logprob codec --------------------------------------------------------------------------


def test_logprob_body_single_prompt_is_a_string() -> None:
    assert encode_logprob("prm", ["P"], top_k=20) == {
        "model": "prm",
        "prompt": "P",
        "max_tokens": 1,
        "temperature": 0,
        "prompt_logprobs": 20,
    }
    assert encode_logprob("prm", ["P", "Q"], top_k=5)["prompt"] == ["P", "Q"]


def test_logprob_score_is_p_plus_over_p_plus_and_minus() -> None:
    logprobs = [None, entry(a=(0.5, 1)), entry(**{"+": (0.6, 1), " -": (0.2, 2)})]
    response = {"choices": [{"index": 0, "prompt_logprobs": logprobs}]}
    (scores,) = decode_logprob(response, [job(1, positions=(2,))], top_k=20)
    assert scores == pytest.approx((0.75,))


def test_missing_minus_is_bounded_by_the_kth_probability() -> None:
    # "-" is outside the top 2, so P(-) <= 0.3 (the 2nd best); the actual "+" ranks 5th and
    # must not serve as the bound
    low_plus = entry(A=(0.5, 1), B=(0.3, 2), **{"+": (0.01, 5)})
    high_plus = entry(**{"+": (0.9, 1), "x": (0.05, 2)})
    response = {"choices": [{"index": 0, "prompt_logprobs": [None, low_plus, high_plus]}]}
    (scores,) = decode_logprob(response, [job(2, positions=(1, 2))], top_k=2)
    assert scores == pytest.approx((0.01 / 0.31, 0.9 / 0.95))


def test_several_spellings_of_a_label_take_the_most_probable() -> None:
    logprobs = [None, entry(**{"+": (0.5, 1), " +": (0.1, 3), "-": (0.5, 2)})]
    (scores,) = decode_logprob(
        {"choices": [{"prompt_logprobs": logprobs}]}, [job(1, positions=(1,))], top_k=5
    )
    assert scores == pytest.approx((0.5,))


def test_logprob_choices_map_by_index() -> None:
    good = [None, entry(**{"+": (0.9, 1), "-": (0.1, 2)})]
    poor = [None, entry(**{"+": (0.2, 2), "-": (0.8, 1)})]
    response = {
        "choices": [{"index": 1, "prompt_logprobs": poor}, {"index": 0, "prompt_logprobs": good}]
    }
    outcomes = decode_logprob(response, [job(1, positions=(1,)), job(1, positions=(1,))], top_k=5)
    assert outcomes == [pytest.approx((0.9,)), pytest.approx((0.2,))]


def test_extreme_logprobs_do_not_overflow() -> None:
    logprobs = [None, {"1": {"logprob": 0.0, "rank": 1, "decoded_token": "+"},
                       "2": {"logprob": -5000.0, "rank": 2, "decoded_token": "-"}}]  # fmt: skip
    (scores,) = decode_logprob(
        {"choices": [{"prompt_logprobs": logprobs}]}, [job(1, positions=(1,))], top_k=5
    )
    assert scores == (1.0,)


@pytest.mark.parametrize(
    ("logprobs", "message"),
    [
        (None, "no prompt_logprobs for branch 0.1 of problem p1"),
        ([None], r"prompt_logprobs has 1 entries; the label of step 0 of branch 0.1 .* is at 1"),
        ([None, entry(a=(0.9, 1))], r"prompt_logprobs\[1\] \(step 0 of branch 0.1 of problem p1\) "
                                    r"has no '\+': the prompt token there is not the label"),
        ([None, None], r"prompt_logprobs\[1\] .* is NoneType, not an object"),
        ([None, {"5": {"logprob": "x", "decoded_token": "+"}}], r"\[1\].*\['5'\] is"),
    ],
)  # fmt: skip
def test_logprob_bad_entries_fail_that_path(logprobs: Any, message: str) -> None:
    response = {"choices": [{"index": 0, "prompt_logprobs": logprobs}]}
    (outcome,) = decode_logprob(response, [job(1, positions=(1,))], top_k=5)
    assert isinstance(outcome, BadResponse)
    assert re.search(message, str(outcome)), str(outcome)


def test_logprob_wrong_choice_count_fails_the_batch() -> None:
    with pytest.raises(BadResponse, match="/v1/completions: 0 entries in 'choices', expected 1"):
        decode_logprob({"choices": []}, [job(1, positions=(1,))], top_k=5)


# --- charges --------------------------------------------------------------------------------


def test_coalesced_charges_split_by_input_characters() -> None:
    a, b = Ledger(), Ledger()
    jobs = [
        job(1, key=(0,), prompt="x" * 30, ledger=a),
        job(1, key=(1,), prompt="x" * 50, ledger=b),
        job(1, key=(2,), prompt="x" * 20, ledger=a),
        job(1, key=(2,), prompt="x" * 0, ledger=a),  # the same branch twice: named once
    ]
    assert coalesced_charges(jobs) == [
        Charge(a, ("0", "2"), share=0.5),
        Charge(b, ("1",), share=0.5),
    ]


def test_a_single_problem_pays_the_whole_request() -> None:
    ledger = Ledger()
    assert coalesced_charges([job(1, prompt="ab", ledger=ledger)]) == [
        Charge(ledger, ("0.1",), share=1.0)
    ]


# --- pooling client -------------------------------------------------------------------------


def pooling_endpoint(**overrides: Any) -> Endpoint:
    settings: dict[str, Any] = {
        "base_url": "http://127.0.0.1:9/v1",
        "model": "prm",
        "prompt_format": "{problem}|{solution}",
        "step_tag": "<t>",
    }
    return Endpoint(**(settings | overrides))


def pooled(route: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One row per tag; p_pos = 0.1 * (number of the step) so scores name their step."""
    data = [
        {"index": i, "data": [[1 - 0.1 * s, 0.1 * s] for s in range(1, text.count("<t>") + 1)]}
        for i, text in enumerate(body["input"])
    ]
    return {"data": data}


def ctx(problem_id: str, ledger: Ledger) -> ProblemContext:
    return ProblemContext(problem_id, f"Q{problem_id}", None, None, ledger)


async def test_concurrent_problems_share_one_pooling_request() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, max_batch=3, window_s=LONG_WINDOW_S)
    a, b = Ledger(), Ledger()
    one = Path(steps=("a\n\n", "b\n\n"), key=(0,))
    two = Path(steps=("c\n\n",), key=(1,))
    three = Path(steps=("ddd\n\n",), key=(0,))
    first, second = await asyncio.gather(
        prm.score(ctx("1", a), [one, two]), prm.score(ctx("2", b), [three])
    )
    assert first == [one.with_scores((0.1, 0.2)), two.with_scores((0.1,))]
    assert second == [three.with_scores((0.1,))]
    (call,) = transport.calls
    assert call.route == POOLING_ROUTE
    assert call.body == {"model": "prm", "input": ["Q1|a<t>b<t>", "Q1|c<t>", "Q2|ddd<t>"]}
    total = len("Q1|a<t>b<t>") + len("Q1|c<t>") + len("Q2|ddd<t>")
    assert call.charges == (
        Charge(a, ("0", "1"), share=(total - len("Q2|ddd<t>")) / total),
        Charge(b, ("0",), share=len("Q2|ddd<t>") / total),
    )
    assert call.tokens_hint == total // 4
    assert call.affinity == "1"  # several servers: the batch goes with its largest problem
    await prm.aclose()


async def test_nothing_to_score_sends_nothing() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, window_s=0)
    assert await prm.score(ctx("1", Ledger()), []) == []
    root = Path(key=(3,))
    assert await prm.score(ctx("1", Ledger()), [root]) == [root.with_scores(())]
    assert transport.calls == []


async def test_a_failed_request_loses_the_branch() -> None:
    error = ServerError("502", 502)
    prm = PoolingPRM(pooling_endpoint(), ScriptedTransport(lambda r, b: error), window_s=0)
    with pytest.raises(BranchLost) as caught:
        await prm.score(ctx("1", Ledger()), [Path(steps=("a",), key=(4, 2))])
    assert caught.value.key == (4, 2)
    assert caught.value.stage == "scoring"
    assert caught.value.cause is error


async def test_a_wrong_answer_for_one_path_spares_the_other_problem() -> None:
    def reply(route: str, body: Mapping[str, Any]) -> dict[str, Any]:
        answer = pooled(route, body)
        answer["data"][0]["data"] = []  # the first input gets no rows
        return answer

    prm = PoolingPRM(
        pooling_endpoint(), ScriptedTransport(reply), max_batch=2, window_s=LONG_WINDOW_S
    )
    bad, good = Path(steps=("a",), key=(1,)), Path(steps=("b",), key=(2,))
    outcomes = await asyncio.gather(
        prm.score(ctx("1", Ledger()), [bad]),
        prm.score(ctx("2", Ledger()), [good]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], BranchLost)
    assert "PRM returned 0 scores for 1 steps of branch 1 of problem 1" in str(outcomes[0])
    assert outcomes[1] == [good.with_scores((0.1,))]


async def test_a_step_holding_the_tag_is_lost_before_any_request() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, window_s=0)
    with pytest.raises(BranchLost) as caught:
        await prm.score(ctx("1", Ledger()), [Path(steps=("a<t>b",), key=(7,))])
    assert isinstance(caught.value.cause, PromptRenderError)
    assert transport.calls == []


async def test_max_batch_is_a_knob() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, max_batch=2, window_s=LONG_WINDOW_S)
    paths = [Path(steps=(f"{i}",), key=(i,)) for i in range(4)]
    await prm.score(ctx("1", Ledger()), paths)
    assert [len(call.body["input"]) for call in transport.calls] == [2, 2]


async def test_score_after_aclose_is_an_error() -> None:
    prm = PoolingPRM(pooling_endpoint(), ScriptedTransport(pooled), window_s=0)
    await prm.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await prm.score(ctx("1", Ledger()), [Path(steps=("a",))])


def test_clients_check_the_endpoint_scoring() -> None:
    with pytest.raises(ConfigError, match="PoolingPRM serves scoring='pooling'"):
        PoolingPRM(pooling_endpoint(scoring="logprob"), ScriptedTransport(pooled))
    with pytest.raises(ConfigError, match="LogprobPRM serves scoring='logprob'"):
        LogprobPRM(pooling_endpoint(), ScriptedTransport(pooled))
    with pytest.raises(ConfigError, match="prompt_format is not supported"):
        LogprobPRM(pooling_endpoint(scoring="logprob"), ScriptedTransport(pooled))


# --- logprob client over a local tokenizer --------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    root = tmp_path_factory.mktemp("tok")
    return build_tokenizer(root, template=LLAMA_TEMPLATE, adds_bos=True, name="llama-prm")


def simulated_prompt_logprobs(tokenizer: PreTrainedTokenizerBase) -> Callable[..., dict[str, Any]]:
    """Answer like vLLM: one choice per prompt, prompt_logprobs aligned with the prompt's tokens
    (BOS included, null first). Every "+" token gets P(+) = 0.9 when the prompt mentions alpha
    and 0.3 otherwise, with "-" as the alternative. Choices come back in reverse order."""

    def reply(route: str, body: Mapping[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for index, prompt in enumerate(prompts):
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            p_plus = 0.9 if "alpha" in prompt else 0.3
            logprobs: list[dict[str, Any] | None] = [None]
            for token_id in ids[1:]:
                text = tokenizer.decode([token_id])
                if text == "+":
                    logprobs.append(entry(**{"+": (p_plus, 1), "-": (1 - p_plus, 2)}))
                else:
                    logprobs.append(
                        {str(token_id): {"logprob": -0.1, "rank": 1, "decoded_token": text}}
                    )
            choices.append({"index": index, "text": "x", "prompt_logprobs": logprobs})
        return {"choices": choices[::-1]}

    return reply


async def test_logprob_prm_scores_every_label_and_batches_prompts(
    llama: PreTrainedTokenizerBase,
) -> None:
    endpoint = Endpoint(
        base_url="http://127.0.0.1:9/v1",
        model="prm",
        scoring="logprob",
        tokenizer=llama.name_or_path,
        prompt_logprobs=7,
    )
    transport = ScriptedTransport(simulated_prompt_logprobs(llama))
    prm = LogprobPRM(endpoint, transport, max_batch=2, window_s=LONG_WINDOW_S)
    one = Path(steps=("alpha 1 + 1.\n\n", "So 2.\n\n"), key=(0,))
    two = Path(steps=("beta.\n\n",), key=(1,))
    first, second = await asyncio.gather(
        prm.score(ctx("1", Ledger()), [one]), prm.score(ctx("2", Ledger()), [two])
    )
    assert [p.key for p in first + second] == [(0,), (1,)]
    assert first[0].steps == one.steps
    assert first[0].scores == pytest.approx((0.9, 0.9))
    assert second[0].scores == pytest.approx((0.3,))
    (call,) = transport.calls
    assert call.route == COMPLETIONS_ROUTE
    assert isinstance(call.body["prompt"], list) and len(call.body["prompt"]) == 2
    assert call.body["prompt_logprobs"] == 7
    assert call.body["max_tokens"] == 1
    assert not call.body["prompt"][0].startswith(BOS)  # vLLM adds it


# --- incremental scoring ----------------------------------------------------------------------


async def test_scored_paths_are_not_sent_again() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, window_s=0)
    done = Path(steps=("a\n\n", "b"), scores=(0.7, 0.8), key=(1,))
    assert await prm.score(ctx("1", Ledger()), [done]) == [done]
    assert transport.calls == []
    await prm.aclose()


async def test_a_scored_prefix_keeps_its_scores_and_takes_the_new_ones() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, window_s=0)
    child = Path(steps=("a\n\n", "b\n\n", "c"), scores=(0.55, 0.65), key=(1, 0))
    (scored,) = await prm.score(ctx("1", Ledger()), [child])
    # the server scores all three steps (0.1, 0.2, 0.3); only the new one is taken
    assert scored.scores == (0.55, 0.65, pytest.approx(0.3))
    (call,) = transport.calls
    assert call.body["input"] == ["Q1|a<t>b<t>c<t>"]  # the whole conversation, every tag
    await prm.aclose()


async def test_the_prm_never_reads_earlier_turns() -> None:
    """A prompted revision is scored as a solution of the problem: its own steps only, the
    earlier solution and the critique request nowhere in the input."""
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, window_s=0)
    turns = ("old\n\nwrong", "Check your solution.")
    revision = Path(steps=("a\n\n", "b"), key=(0, 0, 1, 0), turns=turns)
    (scored,) = await prm.score(ctx("1", Ledger()), [revision])
    (call,) = transport.calls
    assert call.body["input"] == ["Q1|a<t>b<t>"]
    assert scored.scores == pytest.approx((0.1, 0.2))
    assert (scored.steps, scored.key, scored.turns) == (revision.steps, revision.key, turns)
    await prm.aclose()


async def test_identical_prompts_are_sent_once() -> None:
    transport = ScriptedTransport(pooled)
    prm = PoolingPRM(pooling_endpoint(), transport, max_batch=4, window_s=LONG_WINDOW_S)
    ledger = Ledger()
    twins = [Path(steps=("same\n\n",), key=(0, i)) for i in range(3)]
    other = Path(steps=("other\n\n",), key=(1, 0))
    scored = await prm.score(ctx("1", ledger), [*twins, other])
    assert [p.scores for p in scored] == [(pytest.approx(0.1),)] * 4
    assert [p.key for p in scored] == [p.key for p in [*twins, other]]
    (call,) = transport.calls
    assert call.body["input"] == ["Q1|same<t>", "Q1|other<t>"]
    assert call.charges == (Charge(ledger, ("0.0", "0.1", "0.2", "1.0"), share=1.0),)
    await prm.aclose()


# --- pooling rendered on the server (no tokenizer here) ---------------------------------------


def server_rendered(
    monkeypatch: pytest.MonkeyPatch, transport: ScriptedTransport, *, max_batch: int = 1
) -> PoolingPRM:
    """A pooling PRM with neither tokenizer nor prompt_format, offline: the server renders.
    A batch leaves when it holds `max_batch` paths."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model="my-prm", step_tag="<t>")
    return PoolingPRM(endpoint, transport, max_batch=max_batch, window_s=LONG_WINDOW_S)


def pooled_conversation(route: str, body: Mapping[str, Any]) -> dict[str, Any] | BaseException:
    """One conversation per request, as vLLM takes `messages`: one data entry, one row per tag
    of the assistant message; p_pos = 0.1 * step. A step "fail" makes the request a 502."""
    assert "input" not in body
    solution = body["messages"][-1]["content"]
    if "fail" in solution:
        return ServerError("502 from the PRM", 502)
    rows = [[1 - 0.1 * s, 0.1 * s] for s in range(1, solution.count("<t>") + 1)]
    return {"data": [{"index": 0, "object": "pooling", "data": rows}]}


def test_encode_pooling_messages() -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a<t>"}]
    assert encode_pooling_messages("prm", messages) == {"model": "prm", "messages": messages}


async def test_server_rendering_sends_one_conversation_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = ScriptedTransport(pooled_conversation)
    prm = server_rendered(monkeypatch, transport, max_batch=2)  # both paths in one batch
    assert prm.rendering == "server"
    a, b = Ledger(), Ledger()
    one = Path(steps=("a\n\n", "b\n\n"), key=(0,))
    two = Path(steps=("c\n\n",), key=(1,))
    first, second = await asyncio.gather(
        prm.score(ctx("1", a), [one]), prm.score(ctx("2", b), [two])
    )
    assert first == [one.with_scores((pytest.approx(0.1), pytest.approx(0.2)))]
    assert second == [two.with_scores((pytest.approx(0.1),))]
    assert [call.route for call in transport.calls] == [POOLING_ROUTE, POOLING_ROUTE]
    assert transport.calls[0].body == {
        "model": "my-prm",
        "messages": [
            {"role": "system", "content": PRM_SYSTEM_PROMPT},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "a<t>b<t>"},
        ],
    }
    # each request is charged to its own problem alone
    assert [call.charges for call in transport.calls] == [
        (Charge(a, ("0",), share=1.0),),
        (Charge(b, ("1",), share=1.0),),
    ]
    await prm.aclose()


async def test_server_rendering_fails_a_failed_request_s_path_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prm = server_rendered(monkeypatch, ScriptedTransport(pooled_conversation), max_batch=2)
    bad, good = Path(steps=("fail\n\n",), key=(1,)), Path(steps=("ok\n\n",), key=(2,))
    outcomes = await asyncio.gather(
        prm.score(ctx("1", Ledger()), [bad]),
        prm.score(ctx("2", Ledger()), [good]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], BranchLost)
    assert outcomes[0].key == (1,)
    assert isinstance(outcomes[0].cause, ServerError)
    assert outcomes[1] == [good.with_scores((pytest.approx(0.1),))]
    await prm.aclose()


async def test_server_rendering_keeps_scored_prefixes_and_sends_twins_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = ScriptedTransport(pooled_conversation)
    prm = server_rendered(monkeypatch, transport, max_batch=3)  # the three unscored paths
    ledger = Ledger()
    done = Path(steps=("a\n\n",), scores=(0.9,), key=(0,))
    child = Path(steps=("a\n\n", "b\n\n"), scores=(0.55,), key=(0, 0))
    twins = [Path(steps=("same\n\n",), key=(1, i)) for i in range(2)]
    scored = await prm.score(ctx("1", ledger), [done, child, *twins])
    assert scored[0] is done  # nothing new: not sent
    assert scored[1].scores == (0.55, pytest.approx(0.2))
    assert [p.scores for p in scored[2:]] == [(pytest.approx(0.1),)] * 2
    solutions = [call.body["messages"][-1]["content"] for call in transport.calls]
    assert sorted(solutions) == ["a<t>b<t>", "same<t>"]
    (twin_call,) = [c for c in transport.calls if c.body["messages"][-1]["content"] == "same<t>"]
    assert twin_call.charges == (Charge(ledger, ("1.0", "1.1"), share=1.0),)
    await prm.aclose()


async def test_server_rendering_after_aclose_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    prm = server_rendered(monkeypatch, ScriptedTransport(pooled_conversation))
    await prm.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await prm.score(ctx("1", Ledger()), [Path(steps=("a",))])


def test_a_logprob_prm_without_tokenizer_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model="judge", scoring="logprob")
    transport = ScriptedTransport(pooled)
    with pytest.raises(ConfigError, match=r"scoring='logprob' needs the PRM's tokenizer here"):
        LogprobPRM(endpoint, transport)
    assert transport.calls == []
