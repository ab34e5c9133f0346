"""What the simulated server observed: one record per request, and live counters.

Rules:
- Every request is recorded; status None means no response was sent (dropped, or the client
  went away first).
- Token counters are per route and count only responses sent intact, so they equal what a
  client's usage ledger sums. Engine counters stay 0 on the zero-latency fast path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from asynctts.testing.faults import Fault


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it. Times are `time.monotonic()` seconds."""

    route: str
    start_s: float
    end_s: float
    status: int | None  # None: no response was sent
    fault: Fault | None
    n: int = 0  # sequences asked for: choices, or inputs of a /pooling request
    seed: int | None = None
    problem: str | None = None  # the registered problem matched, None when unregistered
    tokens: int = 0  # completion tokens, summed over choices
    prompt_tokens: int = 0
    cached_tokens: int = 0
    jitter_s: float = 0.0  # the per-request jitter this request waited
    disconnected: bool = False  # the connection closed first (client gone, or server stopped)


@dataclass(eq=False)
class SimStats:
    """Live counters; the server mutates them as requests come and go.

    Token counters are per route and count only responses sent intact (no fault cut them), so
    they equal what a client's usage ledger sums. Engine counters stay 0 on the zero-latency
    fast path.
    """

    max_num_seqs: int
    routes: Counter[str] = field(default_factory=Counter)  # requests per route
    statuses: Counter[int | None] = field(default_factory=Counter)  # responses per status
    in_flight: int = 0  # HTTP requests being handled
    peak_concurrent: int = 0
    running: int = 0  # engine sequences running
    peak_running: int = 0
    waiting: int = 0  # engine sequences queued (vllm:num_requests_waiting)
    peak_waiting: int = 0
    iterations: int = 0
    busy_s: float = 0.0  # engine time with at least one running sequence
    seq_s: float = 0.0  # integral of running sequences over busy time
    prompt_tokens: Counter[str] = field(default_factory=Counter)
    cached_tokens: Counter[str] = field(default_factory=Counter)
    completion_tokens: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)  # per choice
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def mean_running(self) -> float:
        """Time-weighted mean of running sequences while the engine was busy."""
        return self.seq_s / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def occupancy(self) -> float:
        """Batch occupancy: mean running sequences over `max_num_seqs`."""
        return self.mean_running / self.max_num_seqs


__all__ = ["RequestRecord", "SimStats"]
