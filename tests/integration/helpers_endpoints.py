"""The policy and PRM endpoints of a `SimulatedServer`, as the integration tests build them,
and ports that never answer.

A plain module, imported by name like tests/unit's helpers_*.py: pytest advises against
importing from conftest.py, and the helpers take arguments or are context managers, so they
are not fixtures.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
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
