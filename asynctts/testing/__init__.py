"""Test helpers for asynctts and for applications built on it.

- `FakePolicy`, `FakePRM`: in-memory implementations of the two protocols.
- `SimulatedServer`: a real HTTP server on 127.0.0.1 that speaks vLLM's OpenAI-compatible
  wire format, with a deterministic step-by-step model, a PRM, a continuous-batching latency
  model and fault injection.
- `SimPolicy`, `SimPRM`: the two protocols over the same simulated model in this process, for
  statistical runs of whole strategies; `math500_problem`: a problem with the difficulty of a
  MATH level, as fitted in asynctts/testing/README.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asynctts.testing.cli import load_problems
    from asynctts.testing.fakes import FakePolicy, FakePRM
    from asynctts.testing.faults import Fault
    from asynctts.testing.latency import LatencyModel
    from asynctts.testing.server import SimulatedServer
    from asynctts.testing.sim_model import SimProblem, math500_problem
    from asynctts.testing.sim_protocols import SimPolicy, SimPRM
    from asynctts.testing.stats import RequestRecord, SimStats

_EXPORTS = {
    "FakePolicy": "asynctts.testing.fakes",
    "FakePRM": "asynctts.testing.fakes",
    "Fault": "asynctts.testing.faults",
    "LatencyModel": "asynctts.testing.latency",
    "RequestRecord": "asynctts.testing.stats",
    "SimProblem": "asynctts.testing.sim_model",
    "SimPolicy": "asynctts.testing.sim_protocols",
    "SimPRM": "asynctts.testing.sim_protocols",
    "math500_problem": "asynctts.testing.sim_model",
    "SimStats": "asynctts.testing.stats",
    "SimulatedServer": "asynctts.testing.server",
    "load_problems": "asynctts.testing.cli",
}

__all__ = [
    "FakePRM",
    "FakePolicy",
    "Fault",
    "LatencyModel",
    "RequestRecord",
    "SimPRM",
    "SimPolicy",
    "SimProblem",
    "SimStats",
    "SimulatedServer",
    "load_problems",
    "math500_problem",
]


def __getattr__(name: str) -> Any:
    # imported lazily so `python -m asynctts.testing.server` does not import itself twice
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asynctts.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
