"""The one place that talks to the network: one `Transport` per endpoint (policy, PRM).

Rules:
- One long-lived `aiohttp.ClientSession` per `Transport`, opened and closed by `async with`;
  its connector limit is explicit (aiohttp's default of 100 would silently serialise thousands
  of branches) and its keep-alive (4 s) is below vLLM's (5 s), so we never reuse a connection
  the server is closing. Use before open or after close raises `RuntimeError`.
- Admission, per attempt, in this order: an endpoint-wide pause (set by a 429/503 carrying
  Retry-After), the optional request and token rates (aiolimiter; token admission is FIFO
  because aiolimiter favours small weights), then a slot of the resizable in-flight cap. No
  slot is held while a request sleeps before its retry.
- Foreign exceptions never escape: every failure becomes a `TransportError` whose message names
  the URL, route and status and summarises the library's error (which is therefore not chained:
  aiohttp's internals add lines, not information). Only transient ones are retried (tenacity,
  built per call, bounded by `Endpoint.max_attempts`), and the final error says how many
  attempts were made; `Retry-After` is honoured exactly, otherwise exponential backoff with
  full jitter. A host name that does not resolve and a failed TLS handshake or certificate
  check are final: they fail at once. Cancellation always propagates and frees the slot.
- Timeouts: the endpoint's connect, read (silence) and total timeouts bound every attempt. A
  call can instead carry its own per-attempt timeout and a deadline for all its attempts and
  the waits between them (the model check at open): no attempt outlives the deadline, and no
  retry starts whose wait would end past it.
- Every attempt, successful or not, is recorded in the ledger of every `Charge` of the call;
  those records, and nothing else, go to the `observe` hook (metrics) when there is one.
- Adaptive concurrency (`Endpoint.adapts_concurrency`): every attempt's status is reported to
  an `AIMDController` (concurrency.py) as its slot is released, and the gate is resized to the
  controller's cap. The server's queue is read from `/metrics` by one background task, at most
  every `Endpoint.metrics_interval_s` and only when `adaptive_max_waiting` is set; that read
  takes no slot, is never retried or billed, stops for good on a server without the metric,
  and ends when the transport closes. With a fixed cap the hot path pays one `is None` test.
- Several URLs (`Endpoint.base_url=[...]`): each attempt of a call carrying an affinity key
  (the problem id) goes to the URL `url_pool.UrlPool` picks: the key's rendezvous choice
  among the URLs that are up, so a problem stays on one server and a retry after a
  connection failure goes to its next one. The cap, the rates, adaptation and pauses stay
  endpoint-wide (simplest, and a safe bound: no server gets more than the cap). The health
  check of a down URL is a GET /v1/models off the request path: no slot, no retry, no
  ledger. With one URL there is no pool and no per-attempt cost.
- Affinity for a router: a POST carrying an affinity key sends it in the header
  `Endpoint.affinity_header` names (X-Session-ID by default), whatever the number of URLs,
  so vllm-router keeps a problem on one server. No other per-request id header is sent: the
  router would hash a changing one and scatter the problem.
- The API key goes into the Authorization header and nowhere else: not in logs, reprs, errors
  or the ledger.
- Nothing here knows what a step, a path or a model is: bodies are opaque JSON.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)
from tenacity.stop import stop_base
from yarl import URL

from asynctts.concurrency import AIMDController, controller_for, queue_length, signal_of
from asynctts.endpoint import Endpoint
from asynctts.errors import (
    BadResponse,
    ConfigError,
    ConnectFailed,
    ContextLengthExceeded,
    HostNotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    TimedOut,
    TLSFailed,
    TransportError,
)
from asynctts.ledger import Attempt, Charge
from asynctts.url_pool import UrlPool

__all__ = ["FifoLimiter", "Transport", "TransportStatistics"]

_LOGGER_NAME: Final = "asynctts.transport"
KEEPALIVE_TIMEOUT_S: Final = 4.0  # below vLLM's 5 s keep-alive (docs/design.md, section 8)
BACKOFF_CAP_S: Final = 30.0
RETRY_AFTER_CAP_S: Final = 120.0
_MESSAGE_FALLBACK_CHARS: Final = 300
# aiohttp reads a timeout of 0 as "no timeout": an attempt at its deadline still gets this much
_SHORTEST_TIMEOUT_S: Final = 0.001
_HEALTH_CHECK_TIMEOUT: Final = aiohttp.ClientTimeout(total=4.0)
_CONTEXT_LENGTH_MARKERS: Final = ("maximum context length", "max_model_len", "context length")
_JSON_HEADERS: Final = {"Content-Type": "application/json"}

# What to make of a 2xx body.
_OBJECT: Final = 0  # a JSON object (post_json)
_ANY_JSON: Final = 1  # any JSON value (get_json)
_TEXT: Final = 2  # text (get_text)


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of one transport's counters."""

    in_flight: int  # requests holding a slot now
    waiting: int  # requests waiting for a pause, a rate or a slot
    peak_in_flight: int
    requests: int  # calls of post_json / get_json / get_text
    attempts: int  # HTTP attempts sent
    retries: int  # attempts after the first of their call
    failures: int  # calls that raised a TransportError
    max_in_flight: int  # the current cap
    adaptive: bool = False  # whether the cap adapts to the server
    cap_decreases: int = 0  # cuts by adaptation (one at the floor changes nothing)
    lowest_max_in_flight: int = 0  # the lowest cap so far
    server_waiting: int | None = None  # the server's queue at the last /metrics read


@dataclass(slots=True)
class _Request:
    """What every attempt of one call sends and bills (built once per call)."""

    method: str
    route: str
    url: URL
    data: bytes | None
    headers: Mapping[str, str] | None
    charges: Sequence[Charge]
    tokens_hint: int
    expect: int  # _OBJECT, _ANY_JSON or _TEXT
    timeout: aiohttp.ClientTimeout  # per attempt
    deadline: float | None  # clock() time by which every attempt has ended, if any
    affinity: str | None  # several URLs: the key that picks one per attempt
    root: str | None  # several URLs: the one every attempt goes to (the model check)


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class _Gate:
    """A FIFO cap on concurrent holders that can be resized at runtime. A released slot is
    handed straight to the longest waiter, so late arrivals cannot barge past the queue."""

    __slots__ = ("_waiters", "in_use", "limit", "peak")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def saturated(self) -> bool:
        """Whether the cap is what holds requests back: all slots taken, or a queue."""
        return self.in_use >= self.limit or bool(self._waiters)

    def try_take(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self._hold()
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            elif waiter in self._waiters:  # `_wake` may have dropped it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit  # shrinking takes effect as holders release
        self._wake()

    def _hold(self) -> None:
        self.in_use += 1
        if self.in_use > self.peak:
            self.peak = self.in_use

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip waiters cancelled before their task ran
                self._hold()
                waiter.set_result(None)


class FifoLimiter:
    """aiolimiter's leaky bucket, admitting strictly first come, first served.

    aiolimiter wakes its waiters smallest amount first, so under a steady flood of small
    requests a large one waits until the flood ends (docs/design.md, section 8;
    benchmarks/rate_limiters.py measures it). Here one waiter at a time queues at the bucket,
    behind an `asyncio.Lock` (itself FIFO), so nobody is served before an earlier arrival.
    Amounts above the bucket's size are clamped to it: the request then waits for a full bucket.
    """

    __slots__ = ("_bucket", "_turn")

    def __init__(self, max_rate: float, time_period: float = 60.0) -> None:
        self._bucket = AsyncLimiter(max_rate, time_period)
        self._turn = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._turn:
            await self._bucket.acquire(min(amount, self._bucket.max_rate))


def _is_transient(error: BaseException) -> bool:
    # A positive predicate: CancelledError and foreign exceptions are never retried.
    return isinstance(error, TransportError) and error.transient


_RETRY_TRANSIENT: Final = retry_if_exception(_is_transient)


class _StopAtDeadline(stop_base):
    """Stop retrying when the wait before the next attempt would end at or past `deadline`."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + (retry_state.upcoming_sleep or 0.0) >= self._deadline


class Transport:
    """HTTP to one endpoint with limits, rates, retries, timeouts and the ledger.

    Args:
        endpoint: where to send requests and the limits to respect there.
        name: "policy" or "prm"; recorded as `Attempt.endpoint` in ledgers.
        clock: time source for ledgers and the endpoint-wide pause (inject for tests).
        sleep: how to wait for a retry or a pause (inject for tests).
        rng: source of backoff jitter (inject for tests).
        observe: called after each attempt of a charged request with the ledger records
            written for it (one per charge), e.g. to export metrics (asynctts/metrics.py).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        observe: Callable[[Sequence[Attempt]], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._observe = observe
        self._name = name
        self._roots = roots = endpoint.root_urls
        self._url = roots[0] if len(roots) == 1 else ", ".join(roots)
        self._pool = None
        if len(roots) > 1:
            self._pool = UrlPool(
                roots, cooldown_s=endpoint.down_cooldown_s, check=self._healthy, clock=clock
            )
        self._pool_urls: dict[tuple[str, str], URL] = {}
        self._affinity_header = endpoint.affinity_header
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._state = _State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=endpoint.total_timeout_s,
            connect=endpoint.connect_timeout_s,
            sock_read=endpoint.read_timeout_s,
        )
        self._log: Any = structlog.get_logger(_LOGGER_NAME)
        self._urls: dict[str, URL] = {}
        self._controller = controller_for(endpoint)
        self._gate = _Gate(
            endpoint.max_in_flight if self._controller is None else self._controller.cap
        )
        self._lowest_cap = self._gate.limit
        self._metrics_task: asyncio.Task[None] | None = None
        self._server_waiting: int | None = None
        self._stop = stop_after_attempt(endpoint.max_attempts)
        self._paused_until = 0.0  # clock() time before which no request is admitted
        self._request_limiter = _request_limiter(endpoint.rate_per_s)
        self._token_limiter = (
            FifoLimiter(endpoint.tokens_per_min, 60.0) if endpoint.tokens_per_min else None
        )
        self._rate_limited = self._request_limiter is not None or self._token_limiter is not None
        self._waiting = 0
        self._requests = 0
        self._attempts = 0
        self._retries = 0
        self._failures = 0

    def __repr__(self) -> str:
        return f"<Transport {self._name} {self._url} {self._state.value}>"

    @property
    def url(self) -> str:
        """The endpoint's root URL (routes are appended to it); several are joined by ", "."""
        return self._url

    @property
    def urls(self) -> tuple[str, ...]:
        """The root URL of each server of the endpoint."""
        return self._roots

    def skip_url(self, root: str, reason: str) -> None:
        """Mark one of several URLs down (it failed its check at open) until a health check
        brings it back."""
        if self._pool is None:
            raise ValueError(f"{root}: only an endpoint with several URLs can skip one")
        self._pool.failed(root)
        self._log.warning("url skipped", url=root, reason=reason, cooldown_s=self._pool.cooldown_s)

    async def __aenter__(self) -> Transport:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(
                f"Transport {self._name} for {self._url} is {self._state.value}; "
                "a transport is opened once"
            )
        endpoint = self._endpoint
        key = endpoint.api_key()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=endpoint.max_in_flight,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            ),
            timeout=self._timeout,
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )
        self._state = _State.OPEN
        # A fresh logger at open: it follows the logging configuration of that moment, even
        # when structlog caches loggers on first use.
        self._log = structlog.get_logger(_LOGGER_NAME).bind(endpoint=self._name, url=self._url)
        self._log.info(
            "transport open",
            max_in_flight=endpoint.max_in_flight,
            rate_per_s=endpoint.rate_per_s,
            tokens_per_min=endpoint.tokens_per_min,
            connect_timeout_s=endpoint.connect_timeout_s,
            read_timeout_s=endpoint.read_timeout_s,
            total_timeout_s=endpoint.total_timeout_s,
            keepalive_timeout_s=KEEPALIVE_TIMEOUT_S,
            max_attempts=endpoint.max_attempts,
            authorized=key is not None,
            adaptive=self._controller is not None,
            **self._adaptive_settings(),
        )
        controller = self._controller
        if controller is not None and controller.max_waiting is not None:
            self._metrics_task = asyncio.get_running_loop().create_task(
                self._watch_queue(controller), name=f"asynctts-metrics-{self._name}"
            )
        return self

    def _adaptive_settings(self) -> dict[str, Any]:
        controller = self._controller
        if controller is None:
            return {}
        return {
            "initial_in_flight": controller.cap,
            "min_in_flight": controller.floor,
            "max_waiting": controller.max_waiting,
            "metrics_interval_s": self._endpoint.metrics_interval_s
            if controller.max_waiting is not None
            else None,
        }

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; later calls raise `RuntimeError`. Closing twice is harmless."""
        self._state = _State.CLOSED
        if self._pool is not None:
            await self._pool.aclose()
        task, self._metrics_task = self._metrics_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.result()  # the reader stopped by itself; an error in it surfaces here
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            self._log.info("transport closed", **_counters(self.statistics()))

    def statistics(self) -> TransportStatistics:
        gate = self._gate
        return TransportStatistics(
            in_flight=gate.in_use,
            waiting=self._waiting,
            peak_in_flight=gate.peak,
            requests=self._requests,
            attempts=self._attempts,
            retries=self._retries,
            failures=self._failures,
            max_in_flight=gate.limit,
            adaptive=self._controller is not None,
            cap_decreases=0 if self._controller is None else self._controller.decreases,
            lowest_max_in_flight=self._lowest_cap,
            server_waiting=self._server_waiting,
        )

    def set_max_in_flight(self, n: int) -> None:
        """Resize the in-flight cap by hand. Waiters are admitted at once when it grows; when
        it shrinks, requests in flight finish and no new one starts until the count is below
        `n`. With adaptive concurrency the controller goes on from `n`.

        Raises:
            ConfigError: `n` is not in 1..endpoint.max_in_flight (the connection limit), or
                below `Endpoint.adaptive_min_in_flight` when the cap adapts.
        """
        floor = 1 if self._controller is None else self._controller.floor
        if not floor <= n <= self._endpoint.max_in_flight:
            raise ConfigError(
                f"max_in_flight={n} for {self._url}: need {floor}..{self._endpoint.max_in_flight}"
                " (Endpoint.adaptive_min_in_flight..max_in_flight; max_in_flight is the "
                "connection limit)"
            )
        if self._controller is not None:
            self._controller.reset(n)
        self._resize(n)

    def _resize(self, n: int) -> None:
        self._gate.resize(n)
        if n < self._lowest_cap:
            self._lowest_cap = n

    def post_json(
        self,
        route: str,
        body: Mapping[str, Any],
        *,
        charges: Sequence[Charge] = (),
        tokens_hint: int = 0,
        affinity: str | None = None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """POST `body` as JSON to `route` ("/v1/completions", "/pooling", ...): awaits to the
        response's JSON object.

        A plain method that encodes the body at once and returns the request's coroutine, so
        no coroutine of its own stays alive while the request is in flight (one object less
        per request for the garbage collector to walk; benchmarks/README.md, overhead.py).

        Args:
            route: an absolute path under the endpoint's root URL.
            body: the JSON object to send.
            charges: the ledgers billed for every attempt, with their shares of the usage.
            tokens_hint: the request's expected token count for the tokens-per-minute rate.
            affinity: an endpoint with several URLs sends every request with the same key
                (a problem id) to the same server while it is up; None: to each in turn. The
                key also goes in the `Endpoint.affinity_header` header, for a router.

        Returns:
            The response's JSON object.

        Raises:
            RequestRejected: a 4xx other than 408/409/429 (not retried);
                ContextLengthExceeded when the prompt does not fit the context.
            ConnectFailed, TimedOut, RateLimited, ServerError, BadResponse: the last failure,
                once `Endpoint.max_attempts` attempts are spent.
            RuntimeError: the transport is not open.
            TypeError: `body` is not JSON-serialisable (at once, before anything is awaited).
        """
        try:
            data = orjson.dumps(body if type(body) is dict else dict(body))
        except TypeError as error:
            raise TypeError(f"{self._url}{route}: request body is not JSON: {error}") from error
        headers: Mapping[str, str] = _JSON_HEADERS
        if affinity is not None and self._affinity_header is not None:
            headers = _affinity_headers(self._affinity_header, affinity)
        call: Coroutine[Any, Any, dict[str, Any]] = self._call(
            "POST",
            route,
            data,
            headers,
            charges,
            tokens_hint,
            _OBJECT,
            self._timeout,
            None,
            affinity,
        )
        return call

    async def get_json(
        self,
        route: str,
        *,
        attempt_timeout_s: float | None = None,
        deadline_s: float | None = None,
        root: str | None = None,
    ) -> Any:
        """GET `route` ("/v1/models") and return its JSON; retried like `post_json`, charged to
        no ledger.

        Args:
            route: an absolute path under the endpoint's root URL.
            attempt_timeout_s: each attempt's whole time (connect, send, answer) instead of the
                endpoint's timeouts.
            deadline_s: give up this many seconds from now, attempts and the waits between
                them included: the attempt running then is cut short, and no retry starts
                whose wait would end past it.
            root: one of `urls` that every attempt goes to, whether up or down (the model
                check of each server); None: as `post_json` without a key.
        """
        if root is not None and root not in self._roots:
            raise ValueError(f"root {root!r} is not one of this endpoint's URLs {self._roots}")
        timeout = self._timeout
        if attempt_timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=attempt_timeout_s)
        deadline = None if deadline_s is None else self._clock() + deadline_s
        return await self._call(
            "GET", route, None, None, (), 0, _ANY_JSON, timeout, deadline, None, root
        )

    async def get_text(self, route: str) -> str:
        """GET `route` ("/metrics") and return its body as text; retried like `post_json`."""
        text: str = await self._call("GET", route, None, None, (), 0, _TEXT, self._timeout, None)
        return text

    async def _call(
        self,
        method: str,
        route: str,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        charges: Sequence[Charge],
        tokens_hint: int,
        expect: int,
        attempt_timeout: aiohttp.ClientTimeout,
        deadline: float | None,
        affinity: str | None = None,
        root: str | None = None,
    ) -> Any:
        url = self._urls.get(route)
        if url is None:
            if not route.startswith("/"):
                raise ValueError(f"route {route!r} for {self._url}: must start with '/'")
            # several URLs: the attempts pick theirs, this one is not used
            url = self._urls[route] = URL(self._roots[0] + route)
        request = _Request(
            method,
            route,
            url,
            data,
            headers,
            charges,
            tokens_hint,
            expect,
            attempt_timeout,
            deadline,
            affinity,
            root,
        )
        self._requests += 1
        try:
            # The first attempt runs without tenacity: building a retrying object per call
            # costs ~40 us and leaves reference cycles for the garbage collector, which at
            # thousands of requests in flight halved throughput (benchmarks/transport_overhead.py).
            result = await self._attempt(request, 1)
        except TransportError as error:
            if not error.transient or self._endpoint.max_attempts == 1:
                self._fail(route, 1, error)
                raise
            result = await self._retry(request, error)
        else:
            self._log.debug("request done", route=route, attempts=1)
        return result

    async def _retry(self, request: _Request, first_error: TransportError) -> Any:
        """Attempts 2..max_attempts after a transient first failure, under tenacity."""
        pending: TransportError | None = first_error
        attempt = 1

        async def once() -> Any:
            nonlocal attempt, pending
            if pending is not None:  # tenacity's first attempt is the one already made
                error, pending = pending, None
                raise error
            attempt += 1
            return await self._attempt(request, attempt)

        stop: stop_base = self._stop
        if request.deadline is not None:
            stop = self._stop | _StopAtDeadline(request.deadline, self._clock)
        # Built per call: tenacity's retrying objects keep per-call state.
        retrying = AsyncRetrying(
            stop=stop,
            wait=self._wait,
            retry=_RETRY_TRANSIENT,
            reraise=True,
            sleep=self._sleep,
            before_sleep=self._log_retry,
        )
        try:
            result: Any = await retrying(once)
        except TransportError as error:
            self._fail(request.route, attempt, error)
            raise
        self._log.debug("request done", route=request.route, attempts=attempt)
        return result

    def _fail(self, route: str, attempts: int, error: TransportError) -> None:
        self._failures += 1
        error.attempts = attempts
        self._log.debug("request failed", route=route, attempts=attempts, error=str(error))

    async def _attempt(self, request: _Request, attempt: int) -> Any:
        if self._session is None:
            raise self._not_open()
        if self._paused_until or self._rate_limited or not self._gate.try_take():
            await self._admit(request.tokens_hint)
        session = self._session
        if session is None:  # closed while this request waited
            self._gate.release()
            raise self._not_open()
        self._attempts += 1
        if attempt > 1:
            self._retries += 1
        route = request.route
        base, url, pool = self._url, request.url, self._pool
        if pool is not None:  # chosen as the attempt starts: the URLs' health is current
            base = request.root or pool.choose(request.affinity)
            url = self._pool_url(base, route)
        controller = self._controller
        ticket = 0 if controller is None else controller.started()
        start_s = self._clock()
        status: int | None = None
        timeout = request.timeout
        if request.deadline is not None:  # cut the attempt short at the deadline
            left = max(request.deadline - start_s, _SHORTEST_TIMEOUT_S)
            if timeout.total is None or left < timeout.total:
                timeout = aiohttp.ClientTimeout(total=left)
        try:
            retry_after: str | None = None
            try:
                try:
                    async with session.request(
                        request.method,
                        url,
                        data=request.data,
                        headers=request.headers,
                        timeout=timeout,
                    ) as reply:
                        status = reply.status
                        raw = await reply.read()
                    if status == 429 or status == 503:
                        retry_after = reply.headers.get("Retry-After")
                finally:
                    if controller is not None:  # before the release: it measures saturation
                        self._adapt(controller, ticket, status)
                    self._gate.release()
            # The messages summarise aiohttp's error, so it is not chained (`from None`).
            # TimeoutError first: aiohttp's timeout errors are also connection errors; DNS and
            # TLS errors before the connection errors they derive from.
            except TimeoutError as error:
                raise TimedOut(f"{base}{route}: {_timed_out(error, timeout)}") from None
            except aiohttp.ClientConnectorDNSError as error:
                raise HostNotFound(
                    f"{base}{route}: cannot resolve host {error.host!r} "
                    f"({error.strerror}); check the host name in the URL"
                ) from None
            except aiohttp.ClientSSLError as error:  # raised by the handshake only
                raise TLSFailed(f"{base}{route}: {_tls_failure(error)}") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
                raise ConnectFailed(
                    f"{base}{route}: connection failed "
                    f"{'before' if status is None else 'during'} the response: {_describe(error)}"
                ) from None
            except aiohttp.ClientError as error:  # e.g. a response that is not valid HTTP
                raise BadResponse(f"{base}{route}: {_describe(error)}") from error
            if 200 <= status < 300:
                result = self._decode(base, route, status, raw, request.expect)
            else:
                raise self._status_error(base, route, status, raw, retry_after)
        except TransportError as error:
            if pool is not None and request.root is None:
                self._url_failed(pool, base, error)
            self._record(request, attempt, start_s, status, _describe(error), None)
            retry_after_s = getattr(error, "retry_after_s", None)
            if retry_after_s is not None:
                self._pause(retry_after_s)
            raise
        except asyncio.CancelledError:
            self._record(request, attempt, start_s, status, "CancelledError", None)
            raise
        if pool is not None and request.root is None and pool.succeeded(base):
            self._log.info("url back", url=base)
        if request.charges:
            self._record(request, attempt, start_s, status, None, result)
        return result

    def _pool_url(self, base: str, route: str) -> URL:
        url = self._pool_urls.get((base, route))
        if url is None:
            url = self._pool_urls[base, route] = URL(base + route)
        return url

    def _url_failed(self, pool: UrlPool, base: str, error: TransportError) -> None:
        """Tell the pool how `base` failed: at the connection, with a 5xx, or not its fault."""
        if isinstance(error, ConnectFailed | TimedOut | HostNotFound | TLSFailed):
            down = pool.failed(base)
        elif isinstance(error, ServerError) and error.status >= 500:
            down = pool.failed(base, server_error=True)
        else:
            return
        if down:
            self._log.warning(
                "url down", url=base, reason=_describe(error), cooldown_s=pool.cooldown_s
            )

    async def _healthy(self, root: str) -> bool:
        """The health check of a down URL: whether GET /v1/models answers 200 (no slot, no
        retry, no ledger)."""
        session = self._session
        if session is None:
            return False
        try:
            async with session.get(
                self._pool_url(root, "/v1/models"), timeout=_HEALTH_CHECK_TIMEOUT
            ) as reply:
                status = reply.status
                await reply.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._log.debug("health check failed", url=root, reason=_describe(error))
            return False
        if status != 200:
            self._log.debug("health check failed", url=root, status=status)
            return False
        self._log.info("url back", url=root)
        return True

    def _adapt(self, controller: AIMDController, ticket: int, status: int | None) -> None:
        before = controller.cap
        if controller.finished(ticket, signal_of(status), saturated=self._gate.saturated):
            self._resize(controller.cap)
            if controller.cap < before:
                self._log.debug(
                    "concurrency cap lowered", cap=controller.cap, previous=before, status=status
                )

    async def _watch_queue(self, controller: AIMDController) -> None:
        """Read the server's waiting queue from /metrics every `metrics_interval_s` and feed
        it to the controller, until the transport closes or the server has no such metric."""
        interval = self._endpoint.metrics_interval_s
        url = URL(self._url + "/metrics")
        # a slow read is stale by the time it arrives: give up on it and read again later
        timeout = aiohttp.ClientTimeout(total=max(interval, 1.0))
        while True:
            await self._sleep(interval)
            session = self._session
            if session is None:
                return
            try:
                async with session.get(url, timeout=timeout) as reply:
                    status = reply.status
                    raw = await reply.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self._log.debug("metrics read failed", error=_describe(error))
                continue  # a restarting server: try again next time
            if status == 404:
                self._log.info("no /metrics on this server: queue length not watched")
                return
            if status != 200:
                self._log.debug("metrics read failed", status=status)
                continue
            waiting = queue_length(raw.decode("utf-8", errors="replace"))
            if waiting is None:
                self._log.info("/metrics has no vllm:num_requests_waiting: queue not watched")
                return
            self._server_waiting = waiting
            before = controller.cap
            if controller.observe_waiting(waiting):
                self._resize(controller.cap)
                self._log.debug(
                    "concurrency cap lowered", cap=controller.cap, previous=before, waiting=waiting
                )

    def _not_open(self) -> RuntimeError:
        return RuntimeError(
            f"Transport {self._name} for {self._url} is {self._state.value}: "
            "use it inside `async with`"
        )

    async def _admit(self, tokens_hint: int) -> None:
        """Wait for the pause, the rates and a slot; return holding a slot."""
        self._waiting += 1
        try:
            if self._request_limiter is not None:
                await self._request_limiter.acquire()
            if self._token_limiter is not None and tokens_hint > 0:
                await self._token_limiter.acquire(tokens_hint)
            while True:
                honoured = await self._wait_out_pause()
                await self._gate.take()
                if self._paused_until == honoured:
                    return
                # A new pause began while we queued for the slot: wait it out without the slot.
                self._gate.release()
        finally:
            self._waiting -= 1

    async def _wait_out_pause(self) -> float:
        """Sleep until the endpoint-wide pause is over; return the deadline honoured."""
        while True:
            until = self._paused_until
            delay = until - self._clock()
            if delay <= 0:
                self._paused_until = 0.0  # back on the fast path of `_attempt`
                return 0.0
            await self._sleep(delay)
            if self._paused_until == until:
                return until  # not extended while we slept

    def _pause(self, retry_after_s: float) -> None:
        until = self._clock() + min(retry_after_s, RETRY_AFTER_CAP_S)
        if until > self._paused_until:
            self._paused_until = until
            self._log.warning("endpoint paused", retry_after_s=retry_after_s)

    def _wait(self, state: RetryCallState) -> float:
        """Retry-After when the server sent one, else exponential backoff with full jitter."""
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after_s = getattr(error, "retry_after_s", None)
        if retry_after_s is not None:
            return float(min(retry_after_s, RETRY_AFTER_CAP_S))
        base_s = self._endpoint.backoff_base_s
        ceiling = min(BACKOFF_CAP_S, base_s * 2 ** (state.attempt_number - 1))
        return self._rng.uniform(0.0, ceiling)

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self._log.warning(
            "retrying request",
            attempt=state.attempt_number,
            max_attempts=self._endpoint.max_attempts,
            wait_s=state.upcoming_sleep,
            reason=_describe(error) if error is not None else None,
        )

    def _decode(self, base: str, route: str, status: int, raw: bytes, expect: int) -> Any:
        if expect == _TEXT:
            return raw.decode("utf-8", errors="replace")
        try:
            result = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise BadResponse(
                f"{base}{route}: HTTP {status}: the body is not JSON ({error}): {_excerpt(raw)!r}"
            ) from error
        if expect == _OBJECT and not isinstance(result, dict):
            raise BadResponse(
                f"{base}{route}: HTTP {status}: expected a JSON object, got "
                f"{type(result).__name__}: {_excerpt(raw)!r}"
            )
        return result

    def _status_error(
        self, base: str, route: str, status: int, raw: bytes, retry_after: str | None
    ) -> TransportError:
        message = f"{base}{route}: HTTP {status}: {_server_message(raw)}"
        retry_after_s = _parse_retry_after(retry_after) if retry_after else None
        if status == 429:
            return RateLimited(message, retry_after_s)
        if status in (408, 409) or status >= 500:
            return ServerError(message, status, retry_after_s)
        if status == 400 and any(m in message.lower() for m in _CONTEXT_LENGTH_MARKERS):
            return ContextLengthExceeded(message, status)
        return RequestRejected(message, status)  # other 4xx, or a status we cannot act on

    def _record(
        self,
        request: _Request,
        attempt: int,
        start_s: float,
        status: int | None,
        error: str | None,
        result: Any,
    ) -> None:
        end_s = self._clock()
        prompt, cached, completion = _usage(result)
        observe = self._observe
        records: list[Attempt] = []
        for charge in request.charges:
            share = charge.share
            record = Attempt(
                endpoint=self._name,
                route=request.route,
                branches=charge.branches,
                attempt=attempt,
                start_s=start_s,
                end_s=end_s,
                status=status,
                error=error,
                prompt_tokens=prompt * share,
                cached_tokens=cached * share,
                completion_tokens=completion * share,
                share=share,
            )
            charge.ledger.record(record)
            if observe is not None:
                records.append(record)
        if observe is not None and records:
            observe(records)  # the very records the ledgers hold: metrics cannot drift from them


@functools.lru_cache(maxsize=4096)
def _affinity_headers(name: str, key: str) -> Mapping[str, str]:
    """The headers of a POST carrying affinity `key` (cached: a problem sends many). A key that
    is not printable ASCII, which a header cannot carry as is, is percent-encoded."""
    value = key if key.isascii() and key.isprintable() else quote(key, safe="")
    return MappingProxyType({**_JSON_HEADERS, name: value})


def _request_limiter(rate_per_s: float | None) -> AsyncLimiter | None:
    if rate_per_s is None:
        return None
    # aiolimiter's bucket holds max_rate; it must hold at least one request.
    bucket = max(rate_per_s, 1.0)
    return AsyncLimiter(bucket, bucket / rate_per_s)


def _usage(result: Any) -> tuple[float, float, float]:
    """OpenAI-style usage: prompt, cached prompt and completion tokens (0 when absent)."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0.0, 0.0, 0.0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return (
        _number(usage.get("prompt_tokens")),
        _number(cached),
        _number(usage.get("completion_tokens")),
    )


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _server_message(raw: bytes) -> str:
    """The error message of a vLLM/OpenAI error body, else the start of the body."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(doc.get("message"), str):
            return str(doc["message"])
    return _excerpt(raw) or "(empty body)"


def _excerpt(raw: bytes) -> str:
    return raw[: _MESSAGE_FALLBACK_CHARS * 4].decode("utf-8", errors="replace")[
        :_MESSAGE_FALLBACK_CHARS
    ]


def _parse_retry_after(value: str) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date (RFC 9110 10.2.3); None if unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _timed_out(error: TimeoutError, timeout: aiohttp.ClientTimeout) -> str:
    """Which timeout fired, and the timeouts in force."""
    if isinstance(error, aiohttp.SocketTimeoutError):
        what = f"the server sent nothing for {timeout.sock_read} s"
    elif isinstance(error, aiohttp.ConnectionTimeoutError):
        what = f"no connection within {timeout.connect} s"
    else:
        what = f"no complete answer within {timeout.total} s"
    limits = (("connect", timeout.connect), ("read", timeout.sock_read), ("total", timeout.total))
    in_force = ", ".join(f"{name} {value} s" for name, value in limits if value is not None)
    return f"timed out ({what}; timeouts: {in_force})"


def _tls_failure(error: aiohttp.ClientSSLError) -> str:
    """What went wrong in the TLS handshake, and what to check."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        rejected = error.certificate_error
        reason = getattr(rejected, "verify_message", None) or str(rejected)
        return (
            f"TLS handshake failed: the certificate of {error.host}:{error.port} was rejected "
            f"({reason}); check the host name, or trust the server's CA (SSL_CERT_FILE)"
        )
    return (
        f"TLS handshake failed with {error.host}:{error.port} ({error.os_error}); if the "
        "server speaks plain HTTP, use an http:// URL"
    )


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _counters(stats: TransportStatistics) -> dict[str, int]:
    counters = {
        "requests": stats.requests,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "failures": stats.failures,
        "peak_in_flight": stats.peak_in_flight,
    }
    if stats.adaptive:
        counters["max_in_flight"] = stats.max_in_flight
        counters["lowest_max_in_flight"] = stats.lowest_max_in_flight
        counters["cap_decreases"] = stats.cap_decreases
    return counters
