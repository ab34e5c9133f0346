"""A simulated vLLM-shaped OpenAI-compatible server on loopback, for tests and benchmarks.

Rules:
- Real HTTP (aiohttp.web) on 127.0.0.1, an ephemeral port by default; ready once `start()`
  returns (the socket is listening). Routes: /v1/completions, /v1/chat/completions,
  /v1/models, /pooling, /tokenize, /health, /metrics; bodies are read and written as vLLM does
  (wire.py), and every route checks the model name.
- Text comes from `SimModel` (sim_model.py): deterministic given (prompt, seed, choice index);
  choice i of a request with `seed` samples with seed + i, as vLLM does; temperature 0 is
  greedy (every choice alike); without a seed the server's seeded RNG picks one per choice.
  Tokens are whitespace-separated words.
- Time comes from the `LatencyModel` and its engine (latency.py); faults from `add_fault`
  (faults.py); prompt tokens already seen are counted as cached by a `PrefixCache`
  (prefix_cache.py), which a restart empties.
- `max_concurrent_requests` (settable while serving) answers 429 to a POST that arrives while
  that many requests are being handled already, like a remote API's concurrency limit.
- Every request is recorded in `stats` (stats.py); a client that goes away aborts its
  sequences, as vLLM does.
- Stopping drops the requests in flight, like killing vLLM; `start()` again rebinds the same
  port (a server restart).
- `python -m asynctts.testing.server` runs one from the command line (cli.py).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Self

import structlog
from aiohttp import web

from asynctts.testing import cli
from asynctts.testing.cli import load_problems
from asynctts.testing.faults import Fault, FaultSchedule, fault_reply, send_cut
from asynctts.testing.latency import H200_1B_ITERATION_S, Engine, LatencyModel
from asynctts.testing.prefix_cache import PrefixCache
from asynctts.testing.sim_model import (
    PRM_DISCRIMINATION,
    PRM_FOOLED_RATE,
    PRM_PERSISTENCE,
    STEP_CORRELATION,
    Reading,
    Sample,
    SimModel,
    SimProblem,
    count_tokens,
)
from asynctts.testing.stats import RequestRecord, SimStats
from asynctts.testing.wire import (
    DEFAULT_COMPLETIONS_MAX_TOKENS,
    HttpError,
    Reply,
    SamplingParams,
    error_body,
    json_reply,
    message_text,
    parse_sampling,
    prometheus_label,
    read_json,
)

log = structlog.get_logger("asynctts.testing.server")

_KEEPALIVE_S = 5.0  # uvicorn's (so vLLM's) keep-alive
_SHUTDOWN_GRACE_S = 0.05
_MAX_BODY_BYTES = 64 * 2**20
_ZERO_LATENCY = LatencyModel.zero()
_NO_PROBLEMS: Mapping[str, SimProblem] = MappingProxyType({})


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
        prm_discrimination: d' between the PRM's scores of right and wrong paths (see
            `SimModel`; the default is fitted to a Qwen2.5-Math-PRM-7B-like PRM).
        prm_fooled_rate: how often a wrong path fools the PRM (see `SimModel`).
        prm_persistence: share of the PRM's noise a path inherits step to step (see
            `SimModel`).
        step_correlation: share of the steps sampled after one prefix that take its modal
            outcome (see `SimModel`).
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
        prm_discrimination: float = PRM_DISCRIMINATION,
        prm_fooled_rate: float = PRM_FOOLED_RATE,
        prm_persistence: float = PRM_PERSISTENCE,
        step_correlation: float = STEP_CORRELATION,
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
            problems,
            step_tag=step_tag,
            prm_discrimination=prm_discrimination,
            prm_fooled_rate=prm_fooled_rate,
            prm_persistence=prm_persistence,
            step_correlation=step_correlation,
        )
        self._rng = random.Random(seed)
        self._jitter_rng = random.Random(f"jitter:{seed}")
        self._prefix_cache = PrefixCache()
        self._faults = FaultSchedule()
        self._stats = SimStats(max_num_seqs=max_num_seqs)
        self._port = port
        self._runner: web.AppRunner | None = None
        self._engine: Engine | None = None
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
        routes: list[tuple[str, str, Callable[[dict[str, Any], _Exchange], Awaitable[Reply]]]]
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
            self._engine = Engine(self.latency, self.max_num_seqs, self._stats)
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
        self._faults.add(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> list[tuple[Fault, int]]:
        """Faults not yet used up, with the uses they have left."""
        return self._faults.pending()

    # -- the HTTP layer --------------------------------------------------------------------

    def _endpoint(
        self,
        route: str | None,
        handler: Callable[[dict[str, Any], _Exchange], Awaitable[Reply]],
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
                    return json_reply(error_body(429, message), 429).response()
                body: dict[str, Any] = {}
                body_error: str | None = None
                if request.method == "POST":
                    body, body_error = await read_json(request)
                fault = ex.fault = self._faults.take(ex.route, body)
                if fault is not None and fault.delay_s > 0:
                    await asyncio.sleep(fault.delay_s)
                if fault is not None and fault.drop:
                    if request.transport is not None:
                        request.transport.abort()
                    return web.Response()  # cannot be written: the connection is gone
                if fault is not None and fault.replaces_reply:
                    reply = fault_reply(fault)
                else:
                    reply = await _answer(handler, body, body_error, ex)
                status = reply.status
                if fault is not None and (fault.truncate or fault.close_mid_body):
                    return await send_cut(request, reply, close=fault.close_mid_body)
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
            raise HttpError(404, f"The model `{name}` does not exist.", param="model")
        return str(name)

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """vLLM 0.32's context check; returns the effective max_tokens. A prompt that fills
        the context, or a max_tokens above the context itself, is a 400; otherwise max_tokens
        is shortened to what the prompt leaves (the completion then ends with "length")."""
        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise HttpError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request "
                f"has {prompt_tokens} input tokens. Please reduce the length of the input.",
            )
        if max_tokens is not None and max_tokens > limit:
            raise HttpError(
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

    async def _generate(self, prompt: str, params: SamplingParams, ex: _Exchange) -> list[Sample]:
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

    def _reply(self, id_prefix: str, kind: str, model: str, **fields: Any) -> Reply:
        """A 200 with vLLM's response envelope (id, object, created, model) before `fields`."""
        return json_reply(
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

    async def _completions(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        model = self._model_of(body)
        if "prompt" not in body:
            raise HttpError(400, "Field required: 'prompt'", param="prompt")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise HttpError(
                400,
                f"prompt must be a string (token ids and prompt lists are not simulated), "
                f"got {type(prompt).__name__}",
                param="prompt",
            )
        params = parse_sampling(body, default_max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS)
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

    async def _chat(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        model = self._model_of(body)
        if "messages" not in body:
            raise HttpError(400, "Field required: 'messages'", param="messages")
        continue_final = body.get("continue_final_message", False)
        add_generation_prompt = body.get("add_generation_prompt", True)
        for name, flag in (
            ("continue_final_message", continue_final),
            ("add_generation_prompt", add_generation_prompt),
        ):
            if not isinstance(flag, bool):
                raise HttpError(400, f"{name} must be a boolean, got {flag!r}", param=name)
        if continue_final and add_generation_prompt:
            raise HttpError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
        prompt, last_role = message_text(body["messages"])
        if continue_final and last_role != "assistant":
            raise HttpError(
                400,
                "continue_final_message=true needs the final message to be the assistant's, "
                f"got role {last_role!r}",
                param="messages",
            )
        params = parse_sampling(body, default_max_tokens=None)
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

    async def _pooling(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        model = self._model_of(body)
        if "messages" in body:
            # One conversation, as on vLLM 0.32: a list of conversations is a 400 there, and
            # an `input` sent alongside is ignored.
            inputs = [message_text(body["messages"])[0]]
        elif "input" not in body:
            raise HttpError(400, "Field required: 'input'", param="input")
        elif isinstance(body["input"], str):
            inputs = [body["input"]]
        elif (
            isinstance(body["input"], list)
            and body["input"]
            and all(isinstance(text, str) for text in body["input"])
        ):
            inputs = list(body["input"])
        else:
            raise HttpError(
                400, "input must be a string or a non-empty list of strings", param="input"
            )
        prompt_tokens = 0
        for text in inputs:
            tokens = count_tokens(text)
            if tokens > self.max_model_len:
                raise HttpError(
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

    async def _tokenize(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        self._model_of(body)
        if "messages" in body:
            text = message_text(body["messages"])[0]
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            raise HttpError(
                400, "Field required: 'prompt' (a string) or 'messages'", param="prompt"
            )
        words = text.split()
        return json_reply(
            {
                "count": len(words),
                "max_model_len": self.max_model_len,
                "tokens": [zlib.crc32(w.encode()) % 100_000 for w in words],
                "token_strs": words if body.get("return_token_strs") else None,
            }
        )

    async def _models(self, body: dict[str, Any], ex: _Exchange) -> Reply:
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
        return json_reply({"object": "list", "data": data})

    async def _health(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        return Reply(200, b"", "text/plain")

    async def _metrics(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        stats = self._stats
        label = f'model_name="{prometheus_label(self.model)}"'
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
        return Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def _not_found(self, body: dict[str, Any], ex: _Exchange) -> Reply:
        return json_reply({"detail": "Not Found"}, 404)


async def _answer(
    handler: Callable[[dict[str, Any], _Exchange], Awaitable[Reply]],
    body: dict[str, Any],
    body_error: str | None,
    ex: _Exchange,
) -> Reply:
    try:
        if body_error is not None:
            raise HttpError(400, body_error)
        return await handler(body, ex)
    except HttpError as exc:
        return exc.reply()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m asynctts.testing.server`: run a simulated server in the foreground."""
    cli.run(SimulatedServer, argv)


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
