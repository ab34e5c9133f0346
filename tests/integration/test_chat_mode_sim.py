"""Chat mode through a tree search over HTTP against the simulated server, whose "template"
keeps a continued message's trailing whitespace: the client's trim probe must say so, and the
continuations then go out exactly as before (tests/vllm/test_chat_trimming.py covers a
template that trims, on real vLLM)."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from asynctts import solve
from asynctts.testing import SimProblem, SimulatedServer

from helpers_endpoints import policy_of, prm_of


@pytest.mark.usefixtures("verbose_logging")
async def test_a_tree_search_in_chat_mode_probes_once_and_keeps_its_steps(
    math500: list[dict[str, Any]],
) -> None:
    record = math500[3]
    problems = {record["problem"]: SimProblem(answer=record["answer"], slip_rate=0.0)}
    async with SimulatedServer(model="sim-policy", prm_model="sim-prm", problems=problems) as s:
        with capture_logs() as logs:
            sol = await solve(
                record["problem"],
                strategy="dvts",
                n=4,
                policy=policy_of(s, mode="chat"),
                prm=prm_of(s),
                seed=1,
            )
    verdicts = [e["event"] for e in logs if e["event"].startswith("chat_template_")]
    assert verdicts == ["chat_template_keeps_delimiter"]
    assert sol.answer is not None and not sol.lost
    assert max(len(c.steps) for c in sol.candidates) >= 2
    for candidate in sol.candidates:
        assert all(step.endswith("\n\n") for step in candidate.steps[:-1])
        assert not any(step.startswith("\n") for step in candidate.steps)
