"""The simulated server's optional step-length model: each generated step stands for a
log-normal number of tokens, fixed by its text, in both engine time and usage."""

from __future__ import annotations

import math
import statistics

import aiohttp
import pytest

from asynctts.testing.server import LatencyModel, SimulatedServer

PROMPT = "<|user|>What is 6 times 7?<|assistant|>"


def test_without_a_median_a_choice_costs_its_words() -> None:
    model = LatencyModel()
    assert model.generated_tokens("Step 1: a b c (001a2b).\n\nStep 2: d", 9) == 9


def test_each_step_costs_a_deterministic_draw_and_a_choice_the_sum() -> None:
    model = LatencyModel(step_tokens_median=40, step_tokens_sigma=0.8)
    one = model.generated_tokens("Step 1: add both sides.\n\n", 4)
    two = model.generated_tokens("Step 2: divide.\n\n", 3)
    assert one >= 1 and two >= 1
    assert model.generated_tokens("Step 1: add both sides.\n\n", 4) == one  # same text, same cost
    assert model.generated_tokens("Step 1: add both sides.\n\nStep 2: divide.\n\n", 7) == one + two
    assert model.generated_tokens("   \n\n", 0) == 0  # no step, no cost


def test_step_lengths_follow_the_median_and_sigma() -> None:
    model = LatencyModel(step_tokens_median=40, step_tokens_sigma=0.8)
    lengths = [model.generated_tokens(f"Step {i}: text {i * 7919}.\n\n", 4) for i in range(4000)]
    logs = [math.log(x) for x in lengths]
    assert statistics.median(lengths) == pytest.approx(40, rel=0.08)
    assert statistics.pstdev(logs) == pytest.approx(0.8, rel=0.08)
    assert LatencyModel(step_tokens_median=40).generated_tokens("Step 9: x.\n\n", 3) == 40


@pytest.mark.parametrize(
    ("field", "value"), [("step_tokens_median", 0.5), ("step_tokens_sigma", -0.1)]
)
def test_bad_step_length_settings_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field}={value}"):
        LatencyModel(**{field: value})  # type: ignore[arg-type]


async def test_usage_and_stats_count_the_modelled_tokens() -> None:
    latency = LatencyModel(step_tokens_median=25, step_tokens_sigma=0.5)
    body = {"model": "sim-policy", "prompt": PROMPT, "n": 3, "seed": 5, "max_tokens": 500}
    async with SimulatedServer(latency=latency) as server, aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/completions", json=body) as reply:
            data = await reply.json()
        expected = [
            latency.generated_tokens(c["text"], len(c["text"].split())) for c in data["choices"]
        ]
        assert data["usage"]["completion_tokens"] == sum(expected)
        assert server.stats.completion_tokens["/v1/completions"] == sum(expected)
        words = sum(len(c["text"].split()) for c in data["choices"])
        assert sum(expected) != words  # the model, not the word count, was charged
