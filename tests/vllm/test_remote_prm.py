"""A PRM endpoint with nothing local, against real vLLM 0.32 on the CPU: no `tokenizer=`, no
`prompt_format=`, a served name that is neither a directory nor in the Hugging Face cache, and
HF_HUB_OFFLINE set. A pooling PRM then sends chat `messages` and vLLM renders the model's
template; a logprob PRM is refused before any request."""

from __future__ import annotations

import asyncio

import pytest

from asynctts import ConfigError, Endpoint, Path, Solver
from asynctts.backends.context import ProblemContext
from asynctts.backends.prm import PoolingPRM
from asynctts.backends.templates import bare_step
from asynctts.ledger import Ledger
from asynctts.protocols import STEP_DELIMITER
from asynctts.transport import Transport

from helpers_vllm import Fleet

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

PROBLEM = "What is 12 + 7 - 3?"
SOLVE_TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def remote(fleet: Fleet, role: str, model: str, **fields: str) -> Endpoint:
    """The endpoint as a user elsewhere would write it: a URL and the served name."""
    base_url: str = fleet.server(role).base_url
    return Endpoint(base_url=base_url, model=model, **fields)  # type: ignore[arg-type]


async def test_server_rendering_solves_and_scores_as_client_rendering(
    fleet: Fleet, policy: Endpoint, prm: Endpoint
) -> None:
    bare = remote(fleet, "prm", prm.model, scoring="pooling", step_tag=fleet.models.step_tag)
    assert bare.tokenizer is None and bare.prompt_format is None
    async with Solver(policy=policy, prm=bare) as solver:
        assert solver.prm_rendering == "server"
        sol = await asyncio.wait_for(
            solver.solve(PROBLEM, strategy="best_of_n", n=4, seed=3), SOLVE_TIMEOUT_S
        )
        prm_requests = solver.statistics()["prm"].requests
    assert sol.ok and sol.answer is not None and not sol.lost
    assert all(len(c.scores) == len(c.steps) > 0 for c in sol.candidates)
    # GET /v1/models, then one /pooling request per distinct conversation
    conversations = {tuple(bare_step(s, STEP_DELIMITER) for s in c.steps) for c in sol.candidates}
    assert prm_requests == 1 + len(conversations)

    # the same paths rendered here with the PRM's tokenizer (several per request) score alike
    assert prm.tokenizer is not None
    paths = [Path(steps=c.steps, key=(i,)) for i, c in enumerate(sol.candidates)]
    ctx = ProblemContext("p0", PROBLEM, None, None, Ledger())
    async with Transport(prm, name="prm") as transport:
        client = PoolingPRM(prm, transport)
        assert client.rendering == "client"
        rescored = await client.score(ctx, paths)
        await client.aclose()
    for candidate, path in zip(sol.candidates, rescored, strict=True):
        assert path.scores == pytest.approx(candidate.scores, abs=1e-5)


async def test_server_rendering_scores_only_the_new_steps(fleet: Fleet, prm: Endpoint) -> None:
    bare = remote(fleet, "prm", prm.model, step_tag=fleet.models.step_tag)
    steps = ("Step 1: 12 + 7 = 19.\n\n", "Step 2: 19 - 3 = 16.\n\n", "The answer is 16.")
    ctx = ProblemContext("p0", PROBLEM, None, None, Ledger())
    async with Transport(bare, name="prm") as transport:
        scorer = PoolingPRM(bare, transport)
        (whole,) = await scorer.score(ctx, [Path(steps=steps)])
        kept = Path(steps=steps, scores=(0.125, 0.25))  # a prefix scored before
        (extended,) = await scorer.score(ctx, [kept])
        await scorer.aclose()
        requests = transport.statistics().requests
    assert len(whole.scores) == 3 and all(0 < s < 1 for s in whole.scores)
    assert extended.scores == (0.125, 0.25, pytest.approx(whole.scores[2], abs=1e-5))
    assert requests == 2


async def test_a_logprob_prm_without_tokenizer_fails_before_any_request(
    fleet: Fleet, policy: Endpoint
) -> None:
    judge = remote(fleet, "policy", "tiny-policy", scoring="logprob")
    solver = Solver(policy=policy, prm=judge)
    with pytest.raises(ConfigError) as caught:
        async with solver:
            pass
    message = str(caught.value)
    assert "scoring='logprob' needs the PRM's tokenizer here" in message
    assert "pass `tokenizer=` a local directory holding the tokenizer files of 'tiny-policy'" in (
        message
    )
    assert message.endswith("the hub cannot be asked (HF_HUB_OFFLINE is set)")
    assert {name: s.attempts for name, s in solver.statistics().items()} == {"policy": 0, "prm": 0}
