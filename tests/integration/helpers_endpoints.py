"""The policy and PRM endpoints of a `SimulatedServer`, as the integration tests build them.

A plain module, imported by name like tests/unit's helpers_*.py: pytest advises against
importing from conftest.py, and the helpers take arguments, so they are not fixtures.
"""

from __future__ import annotations

from typing import Any

from asynctts import Endpoint
from asynctts.testing import SimulatedServer

POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"


def policy_of(server: SimulatedServer, model: str = "sim-policy", **kw: Any) -> Endpoint:
    """The server's policy endpoint; `kw` are further `Endpoint` settings."""
    return Endpoint(base_url=server.base_url, model=model, prompt_format=POLICY_FORMAT, **kw)


def prm_of(server: SimulatedServer, **kw: Any) -> Endpoint:
    """The server's PRM endpoint; `kw` are further `Endpoint` settings."""
    return Endpoint(base_url=server.base_url, model="sim-prm", prompt_format=PRM_FORMAT, **kw)


def endpoints(server: SimulatedServer, **kw: Any) -> dict[str, Endpoint]:
    """`policy=` and `prm=` for `solve`, `solve_many` or `Solver`, both with the settings `kw`."""
    return {"policy": policy_of(server, **kw), "prm": prm_of(server, **kw)}
