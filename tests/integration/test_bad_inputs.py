"""Bad input, each with a clear error that names the problem, and never a hang."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from asynctts import (
    BestOfN,
    ConfigError,
    Endpoint,
    EndpointUnreachable,
    PromptTooLong,
    SolveFailed,
    Solver,
    solve,
    solve_many,
)
from asynctts.api import problem_key
from asynctts.backends.context import derive_seed
from asynctts.testing import Fault, SimProblem, SimulatedServer

from helpers_endpoints import endpoints, policy_of

PROBLEM = "What is $7 \\times 8$?"


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    problems = {PROBLEM: SimProblem(answer="56", slip_rate=0.0)}
    async with SimulatedServer(prm_model="sim-prm", problems=problems, max_model_len=4096) as s:
        yield s


@pytest.mark.parametrize(
    ("problem", "kwargs", "message"),
    [
        ("", {}, "problem is empty"),
        (" \t\n", {}, "problem is empty"),
        (b"bytes?", {}, "problem must be a str, got bytes"),
        (None, {}, "problem must be a str, got NoneType"),
        ("half a surrogate \udcff", {}, "problem is not valid Unicode text at character 17"),
        (PROBLEM, {"n": 0}, "n=0: the budget must be >= 1"),
        (PROBLEM, {"n": -3}, "n=-3: the budget must be >= 1"),
        (PROBLEM, {"n": 2.0}, "n must be an int, got 2.0"),
        (PROBLEM, {"n": True}, "n must be an int, got True"),
        (PROBLEM, {"seed": "0"}, "seed must be an int or None, got '0'"),
        (PROBLEM, {"strategy": "best_of_everything"}, "unknown strategy 'best_of_everything'"),
        (PROBLEM, {"strategy": 3}, "strategy 3 is neither a name nor a strategy object"),
        (PROBLEM, {"strategy": "dvts", "n": 6}, "'dvts': n=6 is not a multiple of width=4"),
        (PROBLEM, {"strategy": "beam_search", "n": 2}, "n=2 is not a multiple of width=4"),
    ],
)
async def test_bad_arguments(
    server: SimulatedServer, problem: Any, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"strategy": "best_of_n", "n": 4, **endpoints(server), **kwargs}
    with pytest.raises(ConfigError, match=message):
        await solve(problem, **args)
    assert sum(server.stats.routes.values()) == 0  # nothing was sent


async def test_one_bad_problem_in_a_batch_fails_the_batch_before_any_request(
    server: SimulatedServer,
) -> None:
    with pytest.raises(ConfigError, match="problem #1 has no 'problem' field"):
        async for _ in solve_many(
            [PROBLEM, {"question": "?"}], strategy="majority", n=2, **endpoints(server)
        ):
            pass
    assert server.stats.routes.get("/v1/completions", 0) == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:8000/v1", "needs a scheme and a host"),
        ("ftp://127.0.0.1/v1", "needs a scheme and a host"),
        ("http:///v1", "needs a scheme and a host"),
    ],
)
def test_endpoint_url_without_scheme(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Endpoint(base_url=url, model="m")


def test_endpoint_bad_limits() -> None:
    with pytest.raises(ConfigError, match="max_in_flight=0: need >= 1"):
        Endpoint(base_url="http://h/v1", model="m", max_in_flight=0)
    with pytest.raises(ConfigError, match="rate_per_s=-1: need > 0 or None"):
        Endpoint(base_url="http://h/v1", model="m", rate_per_s=-1)
    with pytest.raises(ConfigError, match="mode 'completion'"):
        Endpoint(base_url="http://h/v1", model="m", mode="completion")  # type: ignore[arg-type]


async def test_huge_problem_is_prompt_too_long(server: SimulatedServer) -> None:
    huge = "Compute " + "1 + " * 200_000 + "1."
    with pytest.raises(PromptTooLong, match="maximum context length is 4096"):
        await solve(huge, strategy="majority", n=2, policy=policy_of(server))


async def test_endpoint_that_answers_html(server: SimulatedServer) -> None:
    server.add_fault(
        Fault(route="/v1/models", body="<html><body>Welcome to nginx!</body></html>", times=9)
    )
    with pytest.raises(EndpointUnreachable, match="does not answer like an OpenAI-compatible"):
        await solve(PROBLEM, strategy="majority", n=1, policy=policy_of(server))


async def test_policy_html_mid_run_loses_the_branch_with_a_clear_reason(
    server: SimulatedServer,
) -> None:
    # the requests of branches 0 and 1 get an HTML page on both of their attempts
    seeds = {derive_seed(0, problem_key(PROBLEM), (g,)) for g in (0, 1)}
    server.add_fault(
        Fault(
            route="/v1/completions",
            body="<html>502 Bad Gateway</html>",
            times=4,
            match=lambda body: body["seed"] in seeds,
        )
    )
    sol = await solve(
        PROBLEM, strategy=BestOfN(per_request=1), n=4, seed=0, **endpoints(server, max_attempts=2)
    )
    assert [b.branch for b in sol.lost] == ["0.0", "1.0"]
    assert len(sol.candidates) == 2
    assert all("BadResponse" in b.reason for b in sol.lost)


async def test_prm_returning_the_wrong_number_of_scores(server: SimulatedServer) -> None:
    one_row = orjson.dumps(
        {
            "object": "list",
            "data": [{"index": 0, "object": "pooling", "data": [[0.4, 0.6]]}],
            "usage": {"prompt_tokens": 9, "total_tokens": 9},
        }
    ).decode()
    server.add_fault(Fault(route="/pooling", body=one_row, content_type="application/json"))
    with pytest.raises(SolveFailed, match=r"BadResponse: PRM returned 1 scores for \d+ steps"):
        await solve(PROBLEM, strategy="best_of_n", n=1, seed=0, **endpoints(server))


async def test_api_key_missing_for_a_remote_endpoint(
    server: SimulatedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMOTE_POLICY_KEY", raising=False)
    policy = policy_of(server, api_key_env="REMOTE_POLICY_KEY")
    with pytest.raises(ConfigError, match="API key variable REMOTE_POLICY_KEY is not set"):
        async with Solver(policy=policy):
            pass
    monkeypatch.setenv("REMOTE_POLICY_KEY", "sk-secret-123")
    sol = await solve(PROBLEM, strategy="majority", n=1, policy=policy)
    assert "sk-secret-123" not in repr(policy) and "sk-secret-123" not in repr(sol.to_dict())
