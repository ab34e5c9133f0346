"""Time in the simulated server: what each request costs, and the engine that spends it.

Rules:
- `LatencyModel` says what things cost; it is pure and frozen. A model whose iterations and
  prefill are free (`uses_engine` False) answers at once without the engine (the fast path).
- Otherwise a continuous-batching `Engine`: a request's n sequences queue FIFO, at most
  `max_num_seqs` run, one task advances every running sequence by one token per iteration and
  an iteration lasts `latency.iteration_s(running)` plus the prefill of newly admitted, uncached
  prompt tokens. A request returns when all its sequences have finished; cancelling it aborts
  its sequences, as vLLM does.
- The engine keeps its gauges and counters in the `SimStats` it is given.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import heapq
import itertools
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from asynctts.testing.stats import SimStats

# Decode-iteration time of a Llama-3.2-1B-shaped model on one H200 (bf16, context 1024), by
# running sequences (docs/design.md, section 7).
H200_1B_ITERATION_S: tuple[tuple[int, float], ...] = (
    (1, 0.0026),
    (16, 0.0057),
    (64, 0.0147),
    (256, 0.050),
    (1024, 0.194),
)
H200_8B_PREFILL_TOKENS_PER_S = 34_000.0  # a Llama-3.1-8B-shaped PRM on one H200

# How far the engine's iterations may run behind their modelled ends and still catch up
# (see Engine._run); beyond it (a stalled process) the lost time stays lost.
_MAX_CATCH_UP_S = 0.005

_STANDARD_NORMAL = statistics.NormalDist()


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyModel:
    """How long the simulated engine takes.

    Args:
        iteration_points: (running sequences, seconds) points of one decode iteration,
            interpolated linearly between points, constant below the first and extrapolated
            along the last segment beyond the last. Empty: iterations are free.
        time_scale: multiplies every duration (0.01 runs a benchmark 100x faster).
        prefill_tokens_per_s: prefill rate of uncached prompt tokens; None: prefill is free.
        per_request_jitter_s: each request waits an extra uniform(0, this) seconds, drawn from
            the server's seeded RNG, so latency varies per request.
        step_tokens_median, step_tokens_sigma: when a median is set, each generated step
            ("\\n\\n"-delimited piece of a choice) stands for a log-normal number of tokens
            (this median, this sigma of the log) instead of its word count: decode iterations
            and usage both count them. Drawn from a hash of the step's text, so a step costs
            the same in every run and schedule. The simulated model writes short steps of
            similar length (7-12 words); real models' steps are longer and heavy-tailed, which
            is what makes a branch wait for its slowest sibling (benchmarks/scheduling.py).
    """

    iteration_points: tuple[tuple[int, float], ...] = ()
    time_scale: float = 1.0
    prefill_tokens_per_s: float | None = None
    per_request_jitter_s: float = 0.0
    step_tokens_median: float | None = None
    step_tokens_sigma: float = 0.0

    def __post_init__(self) -> None:
        running = [r for r, _ in self.iteration_points]
        if any(r < 1 for r in running) or running != sorted(set(running)):
            raise ValueError(
                f"LatencyModel iteration_points={self.iteration_points}: running counts must be"
                " >= 1 and strictly increasing"
            )
        if any(s < 0 for _, s in self.iteration_points):
            raise ValueError(
                f"LatencyModel iteration_points={self.iteration_points}: seconds must be >= 0"
            )
        if self.time_scale <= 0:
            raise ValueError(f"LatencyModel time_scale={self.time_scale}: need > 0")
        if self.prefill_tokens_per_s is not None and self.prefill_tokens_per_s <= 0:
            raise ValueError(
                f"LatencyModel prefill_tokens_per_s={self.prefill_tokens_per_s}: need > 0 or None"
            )
        if self.per_request_jitter_s < 0:
            raise ValueError(
                f"LatencyModel per_request_jitter_s={self.per_request_jitter_s}: need >= 0"
            )
        if self.step_tokens_median is not None and self.step_tokens_median < 1:
            raise ValueError(
                f"LatencyModel step_tokens_median={self.step_tokens_median}: need >= 1 or None"
            )
        if self.step_tokens_sigma < 0:
            raise ValueError(f"LatencyModel step_tokens_sigma={self.step_tokens_sigma}: need >= 0")

    @classmethod
    def zero(cls, *, per_request_jitter_s: float = 0.0) -> LatencyModel:
        """Respond at once (no engine), optionally after a per-request jitter."""
        return cls(per_request_jitter_s=per_request_jitter_s)

    @classmethod
    def constant(
        cls,
        iteration_s: float,
        *,
        prefill_tokens_per_s: float | None = None,
        per_request_jitter_s: float = 0.0,
    ) -> LatencyModel:
        """Every iteration lasts `iteration_s`, however many sequences run."""
        return cls(
            iteration_points=((1, iteration_s),),
            prefill_tokens_per_s=prefill_tokens_per_s,
            per_request_jitter_s=per_request_jitter_s,
        )

    @classmethod
    def h200_1b(
        cls,
        *,
        time_scale: float = 1.0,
        prefill_tokens_per_s: float | None = None,
        per_request_jitter_s: float = 0.0,
    ) -> LatencyModel:
        """A Llama-3.2-1B-shaped policy on one H200 (docs/design.md, section 7)."""
        return cls(
            iteration_points=H200_1B_ITERATION_S,
            time_scale=time_scale,
            prefill_tokens_per_s=prefill_tokens_per_s,
            per_request_jitter_s=per_request_jitter_s,
        )

    @classmethod
    def h200_8b_prm(
        cls, *, time_scale: float = 1.0, per_request_jitter_s: float = 0.0
    ) -> LatencyModel:
        """A Llama-3.1-8B-shaped PRM on one H200: scoring is prefill, ~34k tokens/s."""
        return cls(
            time_scale=time_scale,
            prefill_tokens_per_s=H200_8B_PREFILL_TOKENS_PER_S,
            per_request_jitter_s=per_request_jitter_s,
        )

    @property
    def uses_engine(self) -> bool:
        """False when requests cost no time, so the server skips the engine entirely."""
        timed = any(s > 0 for _, s in self.iteration_points)
        return timed or self.prefill_tokens_per_s is not None

    def iteration_s(self, running: int) -> float:
        """Seconds of one iteration with `running` sequences, time_scale applied."""
        points = self.iteration_points
        if not points or running < 1:
            return 0.0
        xs = [r for r, _ in points]
        i = bisect.bisect_left(xs, running)  # xs[i - 1] < running <= xs[i]
        if i < len(xs) and xs[i] == running:
            seconds = points[i][1]
        elif i == 0 or len(points) == 1:
            seconds = points[0][1] if i == 0 else points[-1][1]
        else:
            i = min(i, len(points) - 1)  # past the last point: extend the last segment
            (x0, y0), (x1, y1) = points[i - 1], points[i]
            seconds = y0 + (running - x0) * (y1 - y0) / (x1 - x0)
        return max(0.0, seconds) * self.time_scale

    def generated_tokens(self, text: str, words: int) -> int:
        """The tokens a choice with `text` (of `words` words) costs and reports."""
        median = self.step_tokens_median
        if median is None:
            return words
        tokens = 0
        for step in text.split("\n\n"):
            if step.strip():
                digest = hashlib.blake2b(step.encode(), digest_size=8).digest()
                unit = (int.from_bytes(digest, "big") + 0.5) / 2.0**64  # in (0, 1)
                z = _STANDARD_NORMAL.inv_cdf(unit)
                tokens += max(1, round(median * math.exp(self.step_tokens_sigma * z)))
        return tokens

    def prefill_s(self, tokens: int) -> float:
        """Seconds to prefill `tokens` uncached prompt tokens, time_scale applied."""
        if self.prefill_tokens_per_s is None or tokens <= 0:
            return 0.0
        return tokens / self.prefill_tokens_per_s * self.time_scale


class _Job:
    __slots__ = ("done", "left", "prefill_tokens", "prefilled", "seq_ids")

    def __init__(self, n: int, prefill_tokens: int, done: asyncio.Future[None]) -> None:
        self.done = done
        self.left = n
        self.prefill_tokens = prefill_tokens
        self.prefilled = False
        self.seq_ids: list[int] = []


class Engine:
    """Continuous batching: admit FIFO up to `max_num_seqs`, one token per running sequence
    per iteration, finished sequences leave at once and waiting ones take their places."""

    def __init__(self, latency: LatencyModel, max_num_seqs: int, stats: SimStats) -> None:
        self.latency = latency
        self.max_num_seqs = max_num_seqs
        self.stats = stats
        self._waiting: deque[tuple[_Job, int]] = deque()
        self._running: dict[int, _Job] = {}
        self._finishing: list[tuple[int, int]] = []  # heap of (finish iteration, sequence id)
        self._iteration = 0
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        for job in {job for job, _ in self._waiting} | set(self._running.values()):
            job.done.cancel()
        self._waiting.clear()
        self._running.clear()
        self._finishing.clear()
        self.stats.running = self.stats.waiting = 0

    async def run(self, seq_tokens: Sequence[int], prefill_tokens: int) -> None:
        """Run one request's sequences (each needs max(1, tokens) iterations) to the end."""
        job = _Job(len(seq_tokens), prefill_tokens, asyncio.get_running_loop().create_future())
        self._waiting.extend((job, max(1, tokens)) for tokens in seq_tokens)
        self._gauge()
        self._wake.set()
        try:
            await job.done
        except asyncio.CancelledError:
            self._abort(job)
            raise

    def _abort(self, job: _Job) -> None:
        self._waiting = deque(entry for entry in self._waiting if entry[0] is not job)
        for seq_id in job.seq_ids:
            self._running.pop(seq_id, None)  # its heap entry is skipped when it comes up
        self._gauge()

    def _gauge(self) -> None:
        stats = self.stats
        stats.running = len(self._running)
        stats.waiting = len(self._waiting)
        stats.peak_running = max(stats.peak_running, stats.running)
        stats.peak_waiting = max(stats.peak_waiting, stats.waiting)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Iterations end on a clock that advances by each iteration's modelled time, rather
        # than each sleeping its own: the event loop wakes up to 1 ms late (epoll's resolution)
        # plus its own work, which would stretch a 2.6 ms iteration by ~20% and a 50 ms one by
        # ~1%, making small batches look slower than the model says. A late iteration is made
        # up by shorter sleeps after it.
        clock = loop.time()  # the modelled end of the last iteration
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()  # idle time is not made up
                continue
            prefill_tokens = 0
            while self._waiting and len(self._running) < self.max_num_seqs:
                job, tokens = self._waiting.popleft()
                seq_id = next(self._ids)
                self._running[seq_id] = job
                job.seq_ids.append(seq_id)
                heapq.heappush(self._finishing, (self._iteration + tokens, seq_id))
                if not job.prefilled:
                    job.prefilled = True
                    prefill_tokens += job.prefill_tokens
            self._gauge()
            running = len(self._running)
            delay = self.latency.iteration_s(running) + self.latency.prefill_s(prefill_tokens)
            started = loop.time()
            clock = max(clock, started - _MAX_CATCH_UP_S) + delay
            await asyncio.sleep(clock - started)
            elapsed = loop.time() - started
            stats = self.stats
            stats.iterations += 1
            stats.busy_s += elapsed
            stats.seq_s += running * elapsed
            self._iteration += 1
            while self._finishing and self._finishing[0][0] <= self._iteration:
                _, seq_id = heapq.heappop(self._finishing)
                finished = self._running.pop(seq_id, None)
                if finished is None:  # aborted
                    continue
                finished.left -= 1
                if finished.left == 0 and not finished.done.done():
                    finished.done.set_result(None)
            self._gauge()


__all__ = ["H200_1B_ITERATION_S", "H200_8B_PREFILL_TOKENS_PER_S", "Engine", "LatencyModel"]
