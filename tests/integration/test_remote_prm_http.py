"""A PRM endpoint with nothing local, over real HTTP against the simulated server: with neither
`tokenizer=` nor `prompt_format=` and no tokenizer to be had (HF_HUB_OFFLINE), a pooling PRM
sends chat `messages`, one conversation per request, and the server renders; a logprob PRM is
refused before any request. The server's /pooling takes and refuses `messages` as vLLM 0.32
does (checked against it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asynctts import ConfigError, Endpoint, Solver
from asynctts.answers import normalize
from asynctts.testing import SimProblem, SimulatedServer

from helpers_endpoints import policy_of, prm_of


@pytest.fixture
async def server(math500: list[dict[str, Any]]) -> AsyncIterator[SimulatedServer]:
    problems = {r["problem"]: SimProblem(answer=r["answer"], slip_rate=0.0) for r in math500[:5]}
    async with SimulatedServer(model="sim-policy", prm_model="sim-prm", problems=problems) as s:
        yield s


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bare_prm(server: SimulatedServer, **fields: Any) -> Endpoint:
    return Endpoint(base_url=server.base_url, model="sim-prm", **fields)


async def test_a_pooling_prm_without_tokenizer_is_rendered_by_the_server(
    server: SimulatedServer, math500: list[dict[str, Any]]
) -> None:
    record = math500[2]
    async with Solver(policy=policy_of(server), prm=bare_prm(server)) as solver:
        assert solver.prm_rendering == "server"
        sol = await solver.solve(record["problem"], strategy="best_of_n", n=4, seed=3)
    assert sol.answer == normalize(record["answer"]) and not sol.lost
    assert all(len(c.scores) == len(c.steps) > 0 for c in sol.candidates)
    pooling = [r for r in server.stats.records if r.route == "/pooling"]
    # one conversation per request: one request per distinct candidate
    assert len(pooling) == len({c.text for c in sol.candidates})
    assert all(r.n == 1 and r.status == 200 for r in pooling)


async def test_server_and_client_rendering_score_alike(
    server: SimulatedServer, math500: list[dict[str, Any]]
) -> None:
    # the simulated PRM judges the steps it finds before each tag, however they are wrapped
    problem = math500[2]["problem"]
    scores = {}
    for name, prm in (("server", bare_prm(server)), ("client", prm_of(server))):
        async with Solver(policy=policy_of(server), prm=prm) as solver:
            assert solver.prm_rendering == name
            sol = await solver.solve(problem, strategy="best_of_n", n=4, seed=3)
        scores[name] = [c.scores for c in sol.candidates]
    assert scores["server"] == scores["client"]


async def test_a_logprob_prm_without_tokenizer_fails_before_any_request(
    server: SimulatedServer,
) -> None:
    with pytest.raises(ConfigError, match=r"pass `tokenizer=` a local directory") as caught:
        async with Solver(policy=policy_of(server), prm=bare_prm(server, scoring="logprob")):
            pass
    assert "HF_HUB_OFFLINE is set" in str(caught.value)
    assert server.stats.records == []


# --- /pooling with `messages` on the simulated server, as on vLLM 0.32 --------------------------

CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": "a<extra_0>b<extra_0>"},
]


async def pooling(server: SimulatedServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = server.url + "/pooling"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


async def test_pooling_messages_are_one_conversation_with_a_row_per_tag(
    server: SimulatedServer,
) -> None:
    status, reply = await pooling(server, {"model": "sim-prm", "messages": CONVERSATION})
    assert status == 200
    (entry,) = reply["data"]
    assert entry["index"] == 0 and len(entry["data"]) == 2
    # vLLM 0.32 ignores an `input` sent alongside `messages`
    _, both = await pooling(
        server, {"model": "sim-prm", "messages": CONVERSATION, "input": ["x<extra_0>"] * 3}
    )
    assert both["data"] == reply["data"]


@pytest.mark.parametrize(
    "messages", [[CONVERSATION, CONVERSATION], [], "a<extra_0>"], ids=["several", "empty", "str"]
)
async def test_pooling_messages_that_vllm_rejects_are_a_400(
    server: SimulatedServer, messages: Any
) -> None:
    status, reply = await pooling(server, {"model": "sim-prm", "messages": messages})
    assert status == 400
    assert reply["error"]["code"] == 400
