"""Prometheus metrics of one `Solver`, served over HTTP while it is open (`metrics_port=`).

Rules:
- Optional: needs prometheus_client (`pip install 'asynctts[metrics]'`). Only `Solver` imports
  this module, and only when it is given a metrics port, so `import asynctts` works without it.
- One source of truth: the counters of requests, retries, failed attempts and tokens add up
  the very `Attempt` records the transports write into the problems' ledgers (`observe`), so
  each equals the sum of the ledgers' `Usage` totals: a PRM request coalesced over k problems
  counts once for each of them, its tokens apportioned by their shares, as in their ledgers
  and the eval report. The latency histogram observes each HTTP attempt once.
- In-flight, waiting and the in-flight cap (which adaptive concurrency moves) are read from
  the transports' statistics when Prometheus scrapes, so they are never stale.
- Every label has a bounded set of values: endpoint ("policy", "prm"), route, token kind, an
  error's class name, a branch's stage. Never a problem id, a URL or a message.
- Each `SolverMetrics` has its own `CollectorRegistry`: two Solvers in one process never
  share or collide on a metric.
- The exporter is aiohttp (already a dependency) in the Solver's event loop: no thread reads
  counters while they change. It listens on 127.0.0.1 unless told otherwise; a port that is
  taken is a `ConfigError` naming the host and port, raised before any request is sent.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from asynctts.errors import ConfigError, SolveFailed
from asynctts.ledger import Attempt
from asynctts.solution import LostBranch
from asynctts.transport import TransportStatistics

__all__ = [
    "DEFAULT_METRICS_HOST",
    "LATENCY_BUCKETS_S",
    "MetricsServer",
    "SolverMetrics",
    "check_listenable",
]

DEFAULT_METRICS_HOST: Final = "127.0.0.1"
ENDPOINTS: Final = ("policy", "prm")
# token kind (label value) -> the `Attempt` field it sums, as `Usage` names them
TOKEN_KINDS: Final = {
    "prompt": "prompt_tokens",
    "cached": "cached_tokens",
    "completion": "completion_tokens",
    "prm": "prm_tokens",
}
# A PRM call on a small model answers in milliseconds, a long generation under load takes
# minutes (the total timeout is 600 s by default).
LATENCY_BUCKETS_S: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


def error_class(error: str) -> str:
    """The class name that starts an error as ledgers and lost branches record it
    ("TimedOut: ..." -> "TimedOut")."""
    return error.partition(":")[0]


class SolverMetrics:
    """The metrics of one Solver, in a registry of their own.

    Args:
        statistics: the Solver's transport statistics by endpoint name, read at each scrape.
    """

    def __init__(self, statistics: Callable[[], Mapping[str, TransportStatistics]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "asynctts_requests",
            "Requests charged to problems (first attempts), summed over their ledgers",
            ["endpoint"],
            registry=registry,
        )
        self.retries = Counter(
            "asynctts_retries",
            "Attempts after the first of their request, summed over the problems' ledgers",
            ["endpoint"],
            registry=registry,
        )
        self.attempt_failures = Counter(
            "asynctts_attempt_failures",
            "Attempts that ended in an error, by the error's class",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "asynctts_tokens",
            "Tokens by kind: policy prompt, its part served from the prefix cache, policy"
            " completion, PRM prompt (shared requests apportioned as in the ledgers)",
            ["kind"],
            registry=registry,
        )
        self.latency = Histogram(
            "asynctts_request_duration_seconds",
            "Duration of each HTTP attempt, failed ones included",
            ["endpoint", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.problems_done = Counter(
            "asynctts_problems_done",
            "Problems finished, solved or failed as a whole",
            registry=registry,
        )
        self.problems_failed = Counter(
            "asynctts_problems_failed",
            "Problems that failed as a whole, by the error's class",
            ["reason"],
            registry=registry,
        )
        self.branches_lost = Counter(
            "asynctts_branches_lost",
            "Branches whose requests failed for good, by stage and the error's class",
            ["stage", "reason"],
            registry=registry,
        )
        for endpoint in ENDPOINTS:  # present at 0 from the start, so rates are defined
            self.requests.labels(endpoint)
            self.retries.labels(endpoint)
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind)
        registry.register(_TransportGauges(statistics))

    def observe(self, records: Sequence[Attempt]) -> None:
        """One HTTP attempt: the ledger records written for it, one per problem charged."""
        for record in records:
            endpoint = record.endpoint
            if record.attempt == 1:
                self.requests.labels(endpoint).inc()
            else:
                self.retries.labels(endpoint).inc()
            if record.error is not None:
                self.attempt_failures.labels(endpoint, error_class(record.error)).inc()
            if endpoint == "prm":
                self._add_tokens("prm", record.prompt_tokens)
            else:
                self._add_tokens("prompt", record.prompt_tokens)
                self._add_tokens("cached", record.cached_tokens)
                self._add_tokens("completion", record.completion_tokens)
        if records:
            first = records[0]
            self.latency.labels(first.endpoint, first.route).observe(first.end_s - first.start_s)

    def problem_solved(self, lost: Iterable[LostBranch]) -> None:
        """A problem finished with an answer; `lost` are the branches it lost on the way."""
        self.problems_done.inc()
        for branch in lost:
            self.branches_lost.labels(branch.stage, error_class(branch.reason)).inc()

    def problem_failed(self, error: BaseException) -> None:
        """A problem failed as a whole; a `SolveFailed` brings the branches it lost."""
        self.problems_done.inc()
        self.problems_failed.labels(type(error).__name__).inc()
        if isinstance(error, SolveFailed):
            for branch in error.lost:
                self.branches_lost.labels(branch.stage, type(branch.cause).__name__).inc()

    def _add_tokens(self, kind: str, count: float) -> None:
        if count:  # most attempts add nothing to some kinds: skip the counter's lock
            self.tokens.labels(kind).inc(count)


class _TransportGauges(Collector):
    """In flight, waiting and the in-flight cap per endpoint, read at scrape time."""

    def __init__(self, statistics: Callable[[], Mapping[str, TransportStatistics]]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "asynctts_in_flight", "Requests holding an in-flight slot", labels=["endpoint"]
        )
        waiting = GaugeMetricFamily(
            "asynctts_waiting",
            "Requests waiting for a pause, a rate or an in-flight slot",
            labels=["endpoint"],
        )
        cap = GaugeMetricFamily(
            "asynctts_max_in_flight",
            "The in-flight cap (moved by adaptive concurrency)",
            labels=["endpoint"],
        )
        for name, stats in self._statistics().items():
            in_flight.add_metric([name], stats.in_flight)
            waiting.add_metric([name], stats.waiting)
            cap.add_metric([name], stats.max_in_flight)
        yield in_flight
        yield waiting
        yield cap


class MetricsServer:
    """Serves a registry as Prometheus text at http://HOST:PORT/metrics, inside `async with`.

    Args:
        registry: what to serve.
        port: the TCP port; 0 picks a free one (`port` then tells which, once open).
        host: the address to listen on.
    """

    def __init__(
        self, registry: CollectorRegistry, *, port: int, host: str = DEFAULT_METRICS_HOST
    ) -> None:
        self._registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def __aenter__(self) -> MetricsServer:
        try:
            sock = socket.create_server((self.host, self.port))
        except OSError as error:
            raise ConfigError(_bind_failure(self.host, self.port, error)) from None
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def check_listenable(host: str, port: int) -> None:
    """Check now that `MetricsServer` could listen on host:port (a command checks its
    flags before it writes or sends anything; the server binds again when it starts).

    Raises:
        ConfigError: the port is in use, or the address is not this machine's.
    """
    try:
        socket.create_server((host, port)).close()
    except OSError as error:
        raise ConfigError(_bind_failure(host, port, error)) from None


def _bind_failure(host: str, port: int, error: OSError) -> str:
    where = f"metrics port {port} on {host}"
    if error.errno == errno.EADDRINUSE:
        return (
            f"{where} is in use by another program: choose another port (metrics_port,"
            " --metrics-port), or 0 for any free port"
        )
    return f"cannot serve {where}: {error.strerror or error}"
