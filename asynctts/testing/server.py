"""A simulated vLLM-shaped OpenAI-compatible server on loopback, for tests and benchmarks.

Rules:
- Real HTTP (aiohttp.web) on 127.0.0.1, an ephemeral port by default; ready once `start()`
  returns (the socket is listening). It speaks vLLM's wire format (docs/design.md, section 4):
  /v1/completions, /v1/chat/completions, /v1/models, /pooling, /tokenize, /health, /metrics,
  and vLLM's error bodies `{"error": {"message", "type", "param", "code"}}`.
- Text comes from `SimModel` (sim_model.py): deterministic given (prompt, seed, choice index);
  choice i of a request with `seed` samples with seed + i, as vLLM does; temperature 0 is
  greedy (every choice alike); without a seed the server's seeded RNG picks one per choice.
  Tokens are whitespace-separated words.
- Time comes from `LatencyModel`. Zero latency answers at once without the engine (fast path).
  Otherwise a continuous-batching engine: a request's n sequences queue FIFO, at most
  `max_num_seqs` run, one task advances every running sequence by one token per iteration and
  an iteration lasts `latency.iteration_s(running)` plus the prefill of newly admitted, uncached
  prompt tokens. A request answers when all its sequences have finished.
- Faults (`add_fault`) apply in the order they were added, each `times` times, at most one
  per request.
- `max_concurrent_requests` (settable while serving) answers 429 to a POST that arrives while
  that many requests are being handled already, like a remote API's concurrency limit.
- Every request is recorded in `stats`; status None means no response was sent (dropped, or the
  client went away first, which also aborts its sequences, as vLLM does).
- Stopping drops the requests in flight, like killing vLLM; `start()` again rebinds the same
  port (a server restart).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import heapq
import itertools
import math
import os
import random
import signal
import statistics
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, NamedTuple, Self

import orjson
import structlog
from aiohttp import web

from asynctts.testing.sim_model import (
    PrefixCache,
    Reading,
    Sample,
    SimModel,
    SimProblem,
    count_tokens,
)

log = structlog.get_logger("asynctts.testing.server")

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

DEFAULT_COMPLETIONS_MAX_TOKENS = 16  # vLLM's default for /v1/completions
_KEEPALIVE_S = 5.0  # uvicorn's (so vLLM's) keep-alive
_SHUTDOWN_GRACE_S = 0.05
# How far the engine's iterations may run behind their modelled ends and still catch up
# (see _Engine._run); beyond it (a stalled process) the lost time stays lost.
_MAX_CATCH_UP_S = 0.005
_MAX_BODY_BYTES = 64 * 2**20


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


_STANDARD_NORMAL = statistics.NormalDist()
_ZERO_LATENCY = LatencyModel.zero()
_NO_PROBLEMS: Mapping[str, SimProblem] = MappingProxyType({})


@dataclass(eq=False)
class Fault:
    """A fault injected into matching requests.

    Args:
        route: the path it applies to ("/v1/completions", "/pooling", ...), or "*" for any.
        status: answer with this status and an OpenAI-style error body (or `body`).
        retry_after_s: send a Retry-After header (needs `status`).
        delay_s: wait this long first (to trigger client timeouts).
        drop: close the connection without any response.
        truncate: send only the first half of the body (with a matching Content-Length), so a
            200 arrives whose JSON does not parse.
        close_mid_body: declare the full Content-Length, send half the body, close the
            connection (the client's read fails).
        times: how many requests it applies to before it is used up.
        match: applies only when this returns True for the parsed JSON body ({} when none).
        body: send this text instead (status defaults to 200), e.g. an HTML error page.
        content_type: of `body`; default "text/html" when it starts with "<", else
            "text/plain".
    """

    route: str
    status: int | None = None
    retry_after_s: float | None = None
    delay_s: float = 0.0
    drop: bool = False
    truncate: bool = False
    close_mid_body: bool = False
    times: int = 1
    match: Callable[[dict[str, Any]], bool] | None = None
    body: str | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.route != "*" and not self.route.startswith("/"):
            raise ValueError(
                f"Fault route={self.route!r}: use a path like '/v1/completions' or '*'"
            )
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"Fault status={self.status}: need 200..599")
        if self.retry_after_s is not None and (self.status is None or self.retry_after_s < 0):
            raise ValueError(
                f"Fault retry_after_s={self.retry_after_s}: needs a status and a value >= 0"
            )
        if self.delay_s < 0:
            raise ValueError(f"Fault delay_s={self.delay_s}: need >= 0")
        if self.times < 1:
            raise ValueError(f"Fault times={self.times}: need >= 1")
        if self.truncate and self.close_mid_body:
            raise ValueError("Fault: choose one of truncate and close_mid_body")
        if self.drop and (self.replaces_reply or self.truncate or self.close_mid_body):
            raise ValueError("Fault drop=True sends nothing: status/body/truncate do not apply")

    @property
    def replaces_reply(self) -> bool:
        """Whether the fault answers in the handler's place (a status or a body of its own)."""
        return self.status is not None or self.body is not None

    def applies_to(self, route: str, body: dict[str, Any]) -> bool:
        if self.route not in ("*", route):
            return False
        return self.match is None or self.match(body)


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


class _Job:
    __slots__ = ("done", "left", "prefill_tokens", "prefilled", "seq_ids")

    def __init__(self, n: int, prefill_tokens: int, done: asyncio.Future[None]) -> None:
        self.done = done
        self.left = n
        self.prefill_tokens = prefill_tokens
        self.prefilled = False
        self.seq_ids: list[int] = []


class _Engine:
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


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = MappingProxyType({})

    def response(self) -> web.Response:
        headers = {"Content-Type": self.content_type, **self.headers}
        return web.Response(status=self.status, body=self.body, headers=headers)


def _json(payload: Any, status: int = 200) -> _Reply:
    return _Reply(status, orjson.dumps(payload))


_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """vLLM's error JSON for `status`."""
    try:
        fallback = HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        fallback = "Error"
    err_type = _ERROR_TYPES.get(status, fallback)
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def reply(self) -> _Reply:
        return _json(error_body(self.status, self.message, param=self.param), self.status)


class _Exchange:
    """What one request did, filled in as it is handled; frozen into a `RequestRecord`."""

    __slots__ = (
        "cached_tokens",
        "disconnected",
        "fault",
        "finish_reasons",
        "jitter_s",
        "n",
        "problem",
        "prompt_tokens",
        "route",
        "seed",
        "start_s",
        "tokens",
    )

    def __init__(self, route: str) -> None:
        self.route = route
        self.start_s = time.monotonic()
        self.fault: Fault | None = None
        self.n = 0
        self.seed: int | None = None
        self.problem: str | None = None
        self.tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.jitter_s = 0.0
        self.disconnected = False
        self.finish_reasons: list[str] = []


@dataclass(frozen=True, slots=True)
class _Sampling:
    n: int
    max_tokens: int | None
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    include_stop_str_in_output: bool


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sampling(body: dict[str, Any], *, default_max_tokens: int | None) -> _Sampling:
    n = body.get("n", 1)
    if not _is_int(n) or n < 1:
        raise _HttpError(400, f"n must be an integer >= 1, got {n!r}", param="n")
    max_tokens = body.get("max_tokens", default_max_tokens)
    if body.get("max_completion_tokens") is not None:
        max_tokens = body["max_completion_tokens"]
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _HttpError(
            400, f"max_tokens must be at least 1, got {max_tokens!r}.", param="max_tokens"
        )
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not _is_number(temperature) or temperature < 0:
        raise _HttpError(
            400, f"temperature must be a number >= 0, got {temperature!r}.", param="temperature"
        )
    top_p = body.get("top_p", 1.0)
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise _HttpError(400, f"top_p must be in (0, 1], got {top_p!r}.", param="top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _HttpError(400, f"seed must be an integer, got {seed!r}", param="seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _HttpError(
            400, f"stop must be a string or a list of strings, got {stop!r}", param="stop"
        )
    include = body.get("include_stop_str_in_output", False)
    if not isinstance(include, bool):
        raise _HttpError(
            400,
            f"include_stop_str_in_output must be a boolean, got {include!r}",
            param="include_stop_str_in_output",
        )
    if body.get("stream"):
        raise _HttpError(400, "stream=true is not simulated by SimulatedServer", param="stream")
    return _Sampling(n, max_tokens, float(temperature), seed, stops, include)


def _message_text(messages: object) -> tuple[str, str | None]:
    """The text of chat `messages` (contents joined by "\\n\\n", so each message ends at a step
    boundary) and the role of the last one."""
    if not isinstance(messages, list) or not messages:
        raise _HttpError(400, "messages must be a non-empty list of messages", param="messages")
    texts: list[str] = []
    role: str | None = None
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _HttpError(
                400, f"messages[{position}] must be an object with a 'role'", param="messages"
            )
        role = message["role"]
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise _HttpError(
                    400,
                    f"messages[{position}].content parts must be {{'type': 'text', 'text': str}}",
                    param="messages",
                )
            content = "".join(p for p in parts if isinstance(p, str))
        elif not isinstance(content, str):
            raise _HttpError(
                400, f"messages[{position}].content must be a string or parts", param="messages"
            )
        texts.append(content)
    return "\n\n".join(texts), role


def _prometheus_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SimulatedServer:
    """A vLLM-shaped OpenAI-compatible HTTP server on loopback with a deterministic model.

    Args:
        model: served model name (/v1/models, checked on every request).
        prm_model: a second served name, for PRM requests (/pooling) on the same server;
            every route accepts either name.
        problems: problem text -> `SimProblem`; other problems get a hash-derived answer.
        latency: `LatencyModel.zero()` (default: answer at once) or an engine model.
        max_model_len: context length in tokens (words), enforced like vLLM.
        max_num_seqs: most sequences the engine runs at once; the rest wait FIFO.
        step_tag: the PRM step marker in /pooling inputs.
        prm_noise: half-width of the deterministic noise on PRM scores.
        prm_error_rate: chance that the PRM misjudges a step (see `SimModel`).
        seed: seeds the RNG for requests without a seed, and the latency jitter.
        host, port: where to bind (port 0: an ephemeral port, kept across restarts).
        keep_records: keep one `RequestRecord` per request in `stats.records` (turn off for
            long benchmarks to bound memory).
        max_concurrent_requests: answer 429 (no Retry-After) to a POST arriving while this
            many requests are in flight; None: no limit. Change it at any time.
        keepalive_s: idle connections are closed after this long (vLLM's 5 s). An overloaded
            server can fire that timer before reading a request already sent on the
            connection, which resets it; benchmarks that queue thousands of requests on one
            process raise it.

    Use as `async with SimulatedServer(...) as server:`; `server.base_url` is the /v1 URL.
    """

    def __init__(
        self,
        *,
        model: str = "sim-policy",
        prm_model: str | None = None,
        problems: Mapping[str, SimProblem] = _NO_PROBLEMS,
        latency: LatencyModel = _ZERO_LATENCY,
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
        step_tag: str = "<extra_0>",
        prm_noise: float = 0.1,
        prm_error_rate: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_records: bool = True,
        max_concurrent_requests: int | None = None,
        keepalive_s: float = _KEEPALIVE_S,
    ) -> None:
        if not model:
            raise ValueError("SimulatedServer model name is empty")
        if prm_model is not None and (not prm_model or prm_model == model):
            raise ValueError(f"SimulatedServer prm_model={prm_model!r}: must differ from model")
        if max_model_len < 1:
            raise ValueError(f"SimulatedServer max_model_len={max_model_len}: need >= 1")
        if max_num_seqs < 1:
            raise ValueError(f"SimulatedServer max_num_seqs={max_num_seqs}: need >= 1")
        if not 0 <= port <= 65535:
            raise ValueError(f"SimulatedServer port={port}: need 0..65535")
        if max_concurrent_requests is not None and max_concurrent_requests < 1:
            raise ValueError(
                f"SimulatedServer max_concurrent_requests={max_concurrent_requests}: "
                "need >= 1 or None"
            )
        self.max_concurrent_requests = max_concurrent_requests
        self.model = model
        self.prm_model = prm_model
        self.served_models = (model,) if prm_model is None else (model, prm_model)
        self.latency = latency
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.host = host
        self.keep_records = keep_records
        if keepalive_s <= 0:
            raise ValueError(f"SimulatedServer keepalive_s={keepalive_s}: need > 0")
        self.keepalive_s = keepalive_s
        self.sim = SimModel(
            problems, step_tag=step_tag, prm_noise=prm_noise, prm_error_rate=prm_error_rate
        )
        self._rng = random.Random(seed)
        self._jitter_rng = random.Random(f"jitter:{seed}")
        self._prefix_cache = PrefixCache()
        self._faults: list[list[Any]] = []  # [fault, uses left], in the order added
        self._stats = SimStats(max_num_seqs=max_num_seqs)
        self._port = port
        self._runner: web.AppRunner | None = None
        self._engine: _Engine | None = None
        self._ids = itertools.count()
        self._created = int(time.time())

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and listen; on return the server accepts connections."""
        if self._runner is not None:
            raise RuntimeError(f"SimulatedServer already running at {self.url}")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        routes: list[tuple[str, str, Callable[[dict[str, Any], _Exchange], Awaitable[_Reply]]]]
        routes = [
            ("POST", "/v1/completions", self._completions),
            ("POST", "/v1/chat/completions", self._chat),
            ("POST", "/pooling", self._pooling),
            ("POST", "/tokenize", self._tokenize),
            ("GET", "/v1/models", self._models),
            ("GET", "/health", self._health),
            ("GET", "/metrics", self._metrics),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._endpoint(path, handler))
        app.router.add_route("*", "/{tail:.*}", self._endpoint(None, self._not_found))
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,  # a client that goes away aborts its sequences (vLLM)
            keepalive_timeout=self.keepalive_s,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner
        self._prefix_cache.clear()  # a restarted vLLM starts cold
        if self.latency.uses_engine:
            self._engine = _Engine(self.latency, self.max_num_seqs, self._stats)
            self._engine.start()
        log.info(
            "simulated server started",
            url=self.url,
            models=list(self.served_models),
            problems=len(self.sim.problems),
            engine=self._engine is not None,
        )

    async def stop(self) -> None:
        """Close the listener and every connection; requests in flight get no response."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()
        if runner is not None:
            log.info("simulated server stopped", port=self._port)

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("SimulatedServer has no port yet: start it first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def stats(self) -> SimStats:
        return self._stats

    def reset_stats(self) -> SimStats:
        """Start fresh counters (gauges carry over); returns the old ones."""
        old = self._stats
        new = SimStats(max_num_seqs=self.max_num_seqs)
        new.in_flight, new.running, new.waiting = old.in_flight, old.running, old.waiting
        self._stats = new
        if self._engine is not None:
            self._engine.stats = new
        return old

    # -- faults ----------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Apply `fault` to the next `fault.times` matching requests (after earlier faults)."""
        self._faults.append([fault, fault.times])

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> list[tuple[Fault, int]]:
        """Faults not yet used up, with the uses they have left."""
        return [(fault, left) for fault, left in self._faults]

    def _take_fault(self, route: str, body: dict[str, Any]) -> Fault | None:
        for slot in self._faults:
            fault: Fault = slot[0]
            if fault.applies_to(route, body):
                slot[1] -= 1
                if slot[1] == 0:
                    self._faults.remove(slot)
                return fault
        return None

    # -- the HTTP layer --------------------------------------------------------------------

    def _endpoint(
        self,
        route: str | None,
        handler: Callable[[dict[str, Any], _Exchange], Awaitable[_Reply]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            ex = _Exchange(route or request.path)
            stats = self._stats
            stats.routes[ex.route] += 1
            stats.in_flight += 1
            stats.peak_concurrent = max(stats.peak_concurrent, stats.in_flight)
            status: int | None = None
            try:
                limit = self.max_concurrent_requests
                if limit is not None and request.method == "POST" and stats.in_flight > limit:
                    status = 429
                    message = f"Too many concurrent requests: the limit is {limit}"
                    return _json(error_body(429, message), 429).response()
                body: dict[str, Any] = {}
                body_error: str | None = None
                if request.method == "POST":
                    body, body_error = await _read_json(request)
                fault = ex.fault = self._take_fault(ex.route, body)
                if fault is not None and fault.delay_s > 0:
                    await asyncio.sleep(fault.delay_s)
                if fault is not None and fault.drop:
                    if request.transport is not None:
                        request.transport.abort()
                    return web.Response()  # cannot be written: the connection is gone
                if fault is not None and fault.replaces_reply:
                    reply = _fault_reply(fault)
                else:
                    reply = await _answer(handler, body, body_error, ex)
                status = reply.status
                if fault is not None and (fault.truncate or fault.close_mid_body):
                    return await _send_cut(request, reply, close=fault.close_mid_body)
                if status == 200:
                    self._count(ex)
                return reply.response()
            except asyncio.CancelledError:
                ex.disconnected = True
                status = None
                raise
            finally:
                self._finish(ex, status)

        return serve

    def _count(self, ex: _Exchange) -> None:
        stats = self._stats
        stats.prompt_tokens[ex.route] += ex.prompt_tokens
        stats.cached_tokens[ex.route] += ex.cached_tokens
        stats.completion_tokens[ex.route] += ex.tokens
        stats.finish_reasons.update(ex.finish_reasons)

    def _finish(self, ex: _Exchange, status: int | None) -> None:
        stats = self._stats
        stats.in_flight -= 1
        stats.statuses[status] += 1
        if self.keep_records:
            stats.records.append(
                RequestRecord(
                    route=ex.route,
                    start_s=ex.start_s,
                    end_s=time.monotonic(),
                    status=status,
                    fault=ex.fault,
                    n=ex.n,
                    seed=ex.seed,
                    problem=ex.problem,
                    tokens=ex.tokens,
                    prompt_tokens=ex.prompt_tokens,
                    cached_tokens=ex.cached_tokens,
                    jitter_s=ex.jitter_s,
                    disconnected=ex.disconnected,
                )
            )

    def _model_of(self, body: dict[str, Any]) -> str:
        name = body.get("model")
        if name is None:  # vLLM serves its first model when none is named
            return self.model
        if name not in self.served_models:
            raise _HttpError(404, f"The model `{name}` does not exist.", param="model")
        return str(name)

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """vLLM 0.32's context check; returns the effective max_tokens. A prompt that fills
        the context, or a max_tokens above the context itself, is a 400; otherwise max_tokens
        is shortened to what the prompt leaves (the completion then ends with "length")."""
        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise _HttpError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request "
                f"has {prompt_tokens} input tokens. Please reduce the length of the input.",
            )
        if max_tokens is not None and max_tokens > limit:
            raise _HttpError(
                400, f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}."
            )
        left = limit - prompt_tokens
        return left if max_tokens is None else min(max_tokens, left)

    async def _compute(self, ex: _Exchange, seq_tokens: Sequence[int], prefill: int) -> None:
        """Spend the simulated time of a request: engine iterations, then jitter."""
        if self._engine is not None:
            await self._engine.run(seq_tokens, prefill)
        if self.latency.per_request_jitter_s > 0:
            ex.jitter_s = self._jitter_rng.uniform(0.0, self.latency.per_request_jitter_s)
            await asyncio.sleep(ex.jitter_s)

    async def _generate(self, prompt: str, params: _Sampling, ex: _Exchange) -> list[Sample]:
        prompt_tokens = count_tokens(prompt)
        max_tokens = self._check_context(prompt_tokens, params.max_tokens)
        reading: Reading = self.sim.read(prompt)
        if params.temperature == 0:
            seeds = [0] * params.n  # greedy: every choice is the same
        elif params.seed is not None:
            seeds = [params.seed + i for i in range(params.n)]
        else:
            seeds = [self._rng.getrandbits(63) for _ in range(params.n)]
        samples = [
            self.sim.sample(
                reading,
                seed,
                stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output,
                max_tokens=max_tokens,
            )
            for seed in seeds
        ]
        _, cached = self._prefix_cache.lookup(prompt)
        ex.n, ex.seed, ex.problem = params.n, params.seed, reading.key
        ex.prompt_tokens, ex.cached_tokens = prompt_tokens, cached
        tokens = [self.latency.generated_tokens(s.text, s.tokens) for s in samples]
        ex.tokens = sum(tokens)
        ex.finish_reasons = [s.finish_reason for s in samples]
        await self._compute(ex, tokens, prompt_tokens - cached)
        return samples

    def _reply(self, id_prefix: str, kind: str, model: str, **fields: Any) -> _Reply:
        """A 200 with vLLM's response envelope (id, object, created, model) before `fields`."""
        return _json(
            {
                "id": f"{id_prefix}-{next(self._ids):x}",
                "object": kind,
                "created": self._created,
                "model": model,
                **fields,
            }
        )

    def _usage(self, ex: _Exchange) -> dict[str, Any]:
        return {
            "prompt_tokens": ex.prompt_tokens,
            "total_tokens": ex.prompt_tokens + ex.tokens,
            "completion_tokens": ex.tokens,
            "prompt_tokens_details": {"cached_tokens": ex.cached_tokens},
        }

    async def _completions(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        model = self._model_of(body)
        if "prompt" not in body:
            raise _HttpError(400, "Field required: 'prompt'", param="prompt")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise _HttpError(
                400,
                f"prompt must be a string (token ids and prompt lists are not simulated), "
                f"got {type(prompt).__name__}",
                param="prompt",
            )
        params = _sampling(body, default_max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS)
        samples = await self._generate(prompt, params, ex)
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "text": s.text,
                "logprobs": None,
                "finish_reason": s.finish_reason,
                "stop_reason": s.stop_reason,
                "prompt_logprobs": None,
            }
            for i, s in enumerate(samples)
        ]
        return self._reply("cmpl", "text_completion", model, choices=choices, usage=self._usage(ex))

    async def _chat(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        model = self._model_of(body)
        if "messages" not in body:
            raise _HttpError(400, "Field required: 'messages'", param="messages")
        continue_final = body.get("continue_final_message", False)
        add_generation_prompt = body.get("add_generation_prompt", True)
        for name, flag in (
            ("continue_final_message", continue_final),
            ("add_generation_prompt", add_generation_prompt),
        ):
            if not isinstance(flag, bool):
                raise _HttpError(400, f"{name} must be a boolean, got {flag!r}", param=name)
        if continue_final and add_generation_prompt:
            raise _HttpError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
        prompt, last_role = _message_text(body["messages"])
        if continue_final and last_role != "assistant":
            raise _HttpError(
                400,
                "continue_final_message=true needs the final message to be the assistant's, "
                f"got role {last_role!r}",
                param="messages",
            )
        params = _sampling(body, default_max_tokens=None)
        samples = await self._generate(prompt, params, ex)
        if continue_final and prompt[-1:].isspace():
            # Words are the tokens here, but a real tokenizer counts the whitespace this
            # template keeps at the end of a continued message (PolicyClient's trim probe).
            ex.prompt_tokens += 1
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": s.text,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": s.finish_reason,
                "stop_reason": s.stop_reason,
            }
            for i, s in enumerate(samples)
        ]
        return self._reply(
            "chatcmpl",
            "chat.completion",
            model,
            choices=choices,
            usage=self._usage(ex),
            prompt_logprobs=None,
        )

    async def _pooling(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        model = self._model_of(body)
        if "messages" in body:
            # One conversation, as on vLLM 0.32: a list of conversations is a 400 there, and
            # an `input` sent alongside is ignored.
            inputs = [_message_text(body["messages"])[0]]
        elif "input" not in body:
            raise _HttpError(400, "Field required: 'input'", param="input")
        elif isinstance(body["input"], str):
            inputs = [body["input"]]
        elif (
            isinstance(body["input"], list)
            and body["input"]
            and all(isinstance(text, str) for text in body["input"])
        ):
            inputs = list(body["input"])
        else:
            raise _HttpError(
                400, "input must be a string or a non-empty list of strings", param="input"
            )
        prompt_tokens = 0
        for text in inputs:
            tokens = count_tokens(text)
            if tokens > self.max_model_len:
                raise _HttpError(
                    400,
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, you requested {tokens} tokens in the input for pooling. Please "
                    "reduce the length of the input.",
                )
            prompt_tokens += tokens
        # only once every input fits: a rejected request leaves the prefix cache as it was
        cached = sum(self._prefix_cache.lookup(text)[1] for text in inputs)
        rows = [self.sim.score(text) for text in inputs]
        ex.n, ex.problem = len(inputs), self.sim.locate(inputs[0])
        ex.prompt_tokens, ex.cached_tokens = prompt_tokens, cached
        await self._compute(ex, [1] * len(inputs), prompt_tokens - cached)
        return self._reply(
            "pool",
            "list",
            model,
            data=[{"index": i, "object": "pooling", "data": data} for i, data in enumerate(rows)],
            usage={
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        )

    async def _tokenize(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        self._model_of(body)
        if "messages" in body:
            text = _message_text(body["messages"])[0]
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            raise _HttpError(
                400, "Field required: 'prompt' (a string) or 'messages'", param="prompt"
            )
        words = text.split()
        return _json(
            {
                "count": len(words),
                "max_model_len": self.max_model_len,
                "tokens": [zlib.crc32(w.encode()) % 100_000 for w in words],
                "token_strs": words if body.get("return_token_strs") else None,
            }
        )

    async def _models(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            for name in self.served_models
        ]
        return _json({"object": "list", "data": data})

    async def _health(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        return _Reply(200, b"", "text/plain")

    async def _metrics(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        stats = self._stats
        label = f'model_name="{_prometheus_label(self.model)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, values: dict[str, float]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{{{labels}}} {float(v)!r}" for labels, v in values.items())

        metric("vllm:num_requests_running", "gauge", "Sequences running.", {label: stats.running})
        metric("vllm:num_requests_waiting", "gauge", "Sequences waiting.", {label: stats.waiting})
        queries = sum(stats.prompt_tokens.values())
        hits = sum(stats.cached_tokens.values())
        metric(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in tokens.",
            {label: queries},
        )
        metric(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in tokens.",
            {label: hits},
        )
        metric("vllm:prompt_tokens_total", "counter", "Prompt tokens.", {label: queries})
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Generated tokens.",
            {label: sum(stats.completion_tokens.values())},
        )
        metric(
            "vllm:request_success_total",
            "counter",
            "Finished sequences by finish reason.",
            {
                f'finished_reason="{reason}",{label}': stats.finish_reasons[reason]
                for reason in ("stop", "length")
            },
        )
        return _Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def _not_found(self, body: dict[str, Any], ex: _Exchange) -> _Reply:
        return _json({"detail": "Not Found"}, 404)


async def _read_json(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """The request's JSON object, or ({}, why it is not one)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, f"JSON decode error: {exc}"
    if not isinstance(body, dict):
        return {}, f"the request body must be a JSON object, got {type(body).__name__}"
    return body, None


async def _answer(
    handler: Callable[[dict[str, Any], _Exchange], Awaitable[_Reply]],
    body: dict[str, Any],
    body_error: str | None,
    ex: _Exchange,
) -> _Reply:
    try:
        if body_error is not None:
            raise _HttpError(400, body_error)
        return await handler(body, ex)
    except _HttpError as exc:
        return exc.reply()


def _fault_reply(fault: Fault) -> _Reply:
    headers = {}
    if fault.retry_after_s is not None:
        headers["Retry-After"] = f"{fault.retry_after_s:g}"
    if fault.body is not None:
        content_type = fault.content_type or (
            "text/html" if fault.body.lstrip().startswith("<") else "text/plain"
        )
        return _Reply(fault.status or 200, fault.body.encode(), content_type, headers)
    assert fault.status is not None  # the caller checked
    status = fault.status
    try:
        message = f"Simulated fault: {status} {HTTPStatus(status).phrase}"
    except ValueError:
        message = f"Simulated fault: {status}"
    return _Reply(status, orjson.dumps(error_body(status, message)), headers=headers)


async def _send_cut(request: web.Request, reply: _Reply, *, close: bool) -> web.StreamResponse:
    cut = reply.body[: len(reply.body) // 2]
    if not close:
        return _Reply(reply.status, cut, reply.content_type, reply.headers).response()
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    response.content_type = reply.content_type.split(";")[0]
    response.content_length = len(reply.body)  # promises more than it sends
    await response.prepare(request)
    await response.write(cut)
    if request.transport is not None:
        request.transport.close()
    return response


def load_problems(path: str | os.PathLike[str]) -> dict[str, SimProblem]:
    """Problems from a JSONL file: fields "problem" and "answer" (optional "n_steps",
    "slip_rate"). Raises ValueError naming the line of a bad row."""
    problems: dict[str, SimProblem] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or not isinstance(row.get("problem"), str):
                raise ValueError(f"{path}:{number}: need a string field 'problem'")
            answer = row.get("answer")
            if _is_number(answer):
                answer = str(answer)
            if not isinstance(answer, str):
                raise ValueError(f"{path}:{number}: need a field 'answer' (string or number)")
            extra = {k: row[k] for k in ("n_steps", "slip_rate") if k in row}
            try:
                problems[row["problem"]] = SimProblem(answer=answer, **extra)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return problems


async def _serve_until_signalled(server: SimulatedServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        log.info("serving", url=server.url, base_url=server.base_url)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m asynctts.testing.server`: run a simulated server in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m asynctts.testing.server",
        description="A simulated vLLM-shaped OpenAI-compatible server (deterministic model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default="sim-policy", help="served policy name")
    parser.add_argument("--prm-model", default=None, help="also serve this name (for /pooling)")
    parser.add_argument("--problems", default=None, help="JSONL with fields problem, answer")
    parser.add_argument(
        "--latency",
        choices=("zero", "h200_1b", "h200_8b_prm"),
        default="zero",
        help="latency model: none, or measured H200 shapes",
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="latency multiplier")
    parser.add_argument("--max-model-len", type=int, default=4096, help="context length")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="sequences run at once")
    parser.add_argument("--prm-noise", type=float, default=0.1, help="PRM score noise")
    parser.add_argument(
        "--prm-error-rate", type=float, default=0.0, help="chance the PRM misjudges a step"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated model")
    args = parser.parse_args(argv)
    problems = load_problems(args.problems) if args.problems else {}
    if args.latency == "h200_1b":
        latency = LatencyModel.h200_1b(time_scale=args.time_scale)
    elif args.latency == "h200_8b_prm":
        latency = LatencyModel.h200_8b_prm(time_scale=args.time_scale)
    else:
        latency = LatencyModel.zero()
    server = SimulatedServer(
        model=args.model,
        prm_model=args.prm_model,
        problems=problems,
        latency=latency,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        prm_noise=args.prm_noise,
        prm_error_rate=args.prm_error_rate,
        seed=args.seed,
        host=args.host,
        port=args.port,
        keep_records=False,  # a long-running server must not grow without bound
    )
    asyncio.run(_serve_until_signalled(server))


__all__ = [
    "H200_1B_ITERATION_S",
    "Fault",
    "LatencyModel",
    "RequestRecord",
    "SimProblem",
    "SimStats",
    "SimulatedServer",
    "error_body",
    "load_problems",
    "main",
]

if __name__ == "__main__":
    main()
