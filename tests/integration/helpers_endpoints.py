"""The policy and PRM endpoints of a `SimulatedServer`, as the integration tests build them,
two simulated servers of one model with a beam search over both, and ports that never
answer.

A plain module, imported by name like tests/unit's helpers_*.py: pytest advises against
importing from conftest.py, and the helpers take arguments or are context managers, so they
are not fixtures.
"""

from __future__ import annotations

import contextlib
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from asynctts import Endpoint, Solution, Solver
from asynctts.equivalence import Equivalence
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer

POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"
COMPLETIONS = "/v1/completions"


def policy_of(server: SimulatedServer, model: str = "sim-policy", **kw: Any) -> Endpoint:
    """The server's policy endpoint; `kw` are further `Endpoint` settings."""
    return Endpoint(base_url=server.base_url, model=model, prompt_format=POLICY_FORMAT, **kw)


def prm_of(server: SimulatedServer, **kw: Any) -> Endpoint:
    """The server's PRM endpoint; `kw` are further `Endpoint` settings."""
    return Endpoint(base_url=server.base_url, model="sim-prm", prompt_format=PRM_FORMAT, **kw)


def endpoints(server: SimulatedServer, **kw: Any) -> dict[str, Endpoint]:
    """`policy=` and `prm=` for `solve`, `solve_many` or `Solver`, both with the settings `kw`."""
    return {"policy": policy_of(server, **kw), "prm": prm_of(server, **kw)}


def endpoints_at(base_url: str | Sequence[str], **kw: Any) -> dict[str, Endpoint]:
    """The same at a URL (a router) or a list of URLs (several servers of one model)."""
    return {
        "policy": Endpoint(
            base_url=base_url, model="sim-policy", prompt_format=POLICY_FORMAT, **kw
        ),
        "prm": Endpoint(base_url=base_url, model="sim-prm", prompt_format=PRM_FORMAT, **kw),
    }


@contextlib.asynccontextmanager
async def server_pair(
    problems: dict[str, SimProblem], *, jitter_s: float
) -> AsyncIterator[list[SimulatedServer]]:
    """Two simulated servers of one policy and PRM (seeds 1 and 2), no latency but a jitter."""
    latency = LatencyModel.zero(per_request_jitter_s=jitter_s)
    async with (
        SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency, seed=1) as a,
        SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency, seed=2) as b,
    ):
        yield [a, b]


def numbered(problems: dict[str, SimProblem]) -> list[tuple[str, str]]:
    """(problem id, text) pairs: q0, q1, ... in the problems' order."""
    return [(f"q{i}", text) for i, text in enumerate(problems)]


async def beam_search_all(
    base_url: str | Sequence[str],
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    **kw: Any,
) -> dict[str, Solution]:
    """Beam search (n=4, seed 0) over every problem at `base_url`, by problem id; `kw` are
    `Endpoint` settings."""
    ends = endpoints_at(base_url, **kw)
    async with Solver(policy=ends["policy"], prm=ends["prm"], equivalence=equivalence) as solver:
        solutions = solver.solve_many(numbered(problems), strategy="beam_search", n=4, seed=0)
        return {sol.problem_id: sol async for sol in solutions}


def servers_by_problem(servers: Sequence[SimulatedServer]) -> dict[str, set[int]]:
    """Problem text -> the servers (by index) that answered its generations. (A PRM batch may
    mix problems and goes where its main problem does.)"""
    seen: dict[str, set[int]] = defaultdict(set)
    for index, server in enumerate(servers):
        for record in server.stats.records:
            if record.route == COMPLETIONS and record.problem is not None:
                seen[record.problem].add(index)
    return seen


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose socket listens and never accepts: the kernel completes the TCP handshake,
    and no byte ever comes back (while the context is open)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
