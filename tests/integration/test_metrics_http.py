"""Prometheus metrics and progress events over real HTTP against the simulated server: every
counter scraped from /metrics equals the sum of the problems' ledgers; failures are counted
by the class of their error; a port in use is refused before any request; two Solvers never
share a metric; progress events come one per problem, in the order solutions are yielded."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_cli import NO_HANG_S, sim_argv, write_data
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from asynctts import BestOfN, ConfigError, Progress, Solution, Solver, Usage
from asynctts.testing import Fault, LatencyModel, SimProblem, SimulatedServer

from helpers_endpoints import closed_port, endpoints

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DOOMED = "What is the smallest positive multiple of $7$ that ends in the digit $9$?"


async def scrape(url: str) -> Samples:
    """Every sample of the exposition at `url`, by name and sorted labels."""
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = await reply.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of `name` by the value of `label` (the other labels all alike)."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


def usage_of(solutions: list[Solution], endpoint: str) -> Usage:
    return Usage.of(a for s in solutions for a in s.ledger.attempts if a.endpoint == endpoint)


def http_attempts(solutions: list[Solution], endpoint: str) -> int:
    """HTTP attempts sent to `endpoint`: a request charged to several problems is one."""
    return len(
        {
            (a.route, a.start_s, a.end_s)
            for s in solutions
            for a in s.ledger.attempts
            if a.endpoint == endpoint
        }
    )


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], slip_rate=0.0) for r in math500[:12]}


@pytest.fixture
async def server(problems: dict[str, SimProblem]) -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(model="sim-policy", prm_model="sim-prm", problems=problems) as s:
        yield s


async def test_every_counter_equals_the_sum_of_the_ledgers(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    async with Solver(**endpoints(server), metrics_port=0) as solver:
        assert solver.metrics_url is not None
        solutions = [
            s
            async for s in solver.solve_many(
                list(problems), strategy="weighted_best_of_n", n=4, seed=0
            )
        ]
        samples = await scrape(solver.metrics_url)
    assert len(solutions) == 12 and not any(s.error or s.lost for s in solutions)
    policy, prm = usage_of(solutions, "policy"), usage_of(solutions, "prm")
    assert policy.requests > 0 and prm.requests > 0 and policy.completion_tokens > 0
    assert labelled(samples, "asynctts_requests_total", "endpoint") == {
        "policy": policy.requests,
        "prm": prm.requests,
    }
    assert labelled(samples, "asynctts_retries_total", "endpoint") == {"policy": 0, "prm": 0}
    tokens = labelled(samples, "asynctts_tokens_total", "kind")
    assert tokens == {
        "prompt": policy.prompt_tokens,
        "cached": policy.cached_tokens,
        "completion": policy.completion_tokens,
        "prm": pytest.approx(prm.prm_tokens, rel=1e-12, abs=0),
    }
    # A PRM request scoring paths of several problems is charged to each its share of the
    # tokens: fractions, which the exporter adds in the order requests end and this test in
    # the order of the solutions, so their sums may differ in the last bit. The policy's
    # tokens are whole numbers: exact in any order.
    assert any(a.share < 1 for s in solutions for a in s.ledger.attempts)
    assert all(tokens[kind].is_integer() for kind in ("prompt", "cached", "completion"))
    assert labelled(samples, "asynctts_attempt_failures_total", "reason") == {}
    assert value(samples, "asynctts_problems_done_total") == 12
    assert labelled(samples, "asynctts_problems_failed_total", "reason") == {}
    for endpoint, route in (("policy", "/v1/completions"), ("prm", "/pooling")):
        count = "asynctts_request_duration_seconds_count"
        assert value(samples, count, endpoint=endpoint, route=route) == http_attempts(
            solutions, endpoint
        )
        buckets = "asynctts_request_duration_seconds_bucket"
        inf = value(samples, buckets, endpoint=endpoint, route=route, le="+Inf")
        assert inf == http_attempts(solutions, endpoint)
    # read from the transports when scraped: nothing in flight after the run, the fixed cap
    assert labelled(samples, "asynctts_in_flight", "endpoint") == {"policy": 0, "prm": 0}
    assert labelled(samples, "asynctts_max_in_flight", "endpoint") == {"policy": 512, "prm": 512}


async def faulted_run(
    server: SimulatedServer, problems: dict[str, SimProblem], **solve_many: Any
) -> tuple[list[Solution], Samples]:
    """Best-of-4 over the problems (one request per sample) while the server fails: every
    request of DOOMED is refused (that problem fails as a whole), then two 429s, one 400 and
    a 503 of the PRM land on the others."""
    assert DOOMED in problems
    doomed = Fault(
        route="/v1/completions",
        status=400,
        body='{"error": {"message": "refused"}}',
        times=100,
        match=lambda body: DOOMED in str(body.get("prompt", "")),
    )
    server.add_fault(doomed)  # first: the faults below never land on DOOMED
    server.add_fault(Fault(route="/v1/completions", status=429, times=2))
    server.add_fault(Fault(route="/v1/completions", status=400, body='{"error": "bad"}'))
    server.add_fault(Fault(route="/pooling", status=503))
    async with Solver(**endpoints(server, backoff_base_s=0.01), metrics_port=0) as solver:
        assert solver.metrics_url is not None
        solutions = [
            s
            async for s in solver.solve_many(
                list(problems), strategy=BestOfN(per_request=1), n=4, seed=0, **solve_many
            )
        ]
        return solutions, await scrape(solver.metrics_url)


async def test_failures_are_counted_by_the_class_of_their_error(
    server: SimulatedServer, math500: list[dict[str, Any]], problems: dict[str, SimProblem]
) -> None:
    chosen = {**dict(list(problems.items())[:3]), DOOMED: SimProblem(answer="49")}
    solutions, samples = await faulted_run(server, chosen)
    failed = [s for s in solutions if s.error is not None]
    assert [s.problem for s in failed] == [DOOMED]
    assert failed[0].error is not None and failed[0].error.startswith("SolveFailed")
    by_ledgers = Counter(
        (a.endpoint, a.error.partition(":")[0])
        for s in solutions
        for a in s.ledger.attempts
        if a.error is not None
    )
    scraped = {
        (dict(key)["endpoint"], dict(key)["reason"]): v
        for (name, key), v in samples.items()
        if name == "asynctts_attempt_failures_total"
    }
    assert scraped == by_ledgers
    assert by_ledgers[("policy", "RequestRejected")] == 5  # DOOMED's 4 requests and one more
    assert by_ledgers[("policy", "RateLimited")] == 2
    # one 503, charged to every problem whose paths that PRM request scored
    assert by_ledgers[("prm", "ServerError")] >= 1 and len(by_ledgers) == 3
    assert labelled(samples, "asynctts_branches_lost_total", "stage") == {"generating": 5}
    assert labelled(samples, "asynctts_branches_lost_total", "reason") == {"RequestRejected": 5}
    assert sum(len(s.lost) for s in solutions) == 5  # the solutions' side of the same count
    assert value(samples, "asynctts_problems_done_total") == 4
    assert labelled(samples, "asynctts_problems_failed_total", "reason") == {"SolveFailed": 1}
    for endpoint in ("policy", "prm"):
        totals = usage_of(solutions, endpoint)
        assert value(samples, "asynctts_requests_total", endpoint=endpoint) == totals.requests
        assert value(samples, "asynctts_retries_total", endpoint=endpoint) == totals.retries


async def test_progress_events_follow_the_solutions_one_each(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    chosen = {**dict(list(problems.items())[:5]), DOOMED: SimProblem(answer="49")}
    events: list[Progress] = []
    solutions, _ = await faulted_run(
        server, chosen, on_progress=events.append, max_problems_in_flight=2
    )
    assert [e.problem_id for e in events] == [s.problem_id for s in solutions]
    assert [e.done for e in events] == [1, 2, 3, 4, 5, 6]
    assert {e.total for e in events} == {6}
    failed_so_far = [sum(s.error is not None for s in solutions[: i + 1]) for i in range(6)]
    assert [e.failed for e in events] == failed_so_far and failed_so_far[-1] == 1
    assert events[-1].usage == reduce(add, (s.ledger.totals() for s in solutions), Usage())
    assert events[-1].usage.completion_tokens > 0


@pytest.mark.usefixtures("verbose_logging")
async def test_a_callback_that_raises_is_logged_and_the_run_goes_on(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    calls: list[str] = []

    def broken(event: Progress) -> None:
        calls.append(event.problem_id)
        raise RuntimeError(f"cannot draw {event.done}/{event.total}")

    with capture_logs() as logs:
        async with Solver(**endpoints(server)) as solver:
            solutions = [
                s
                async for s in solver.solve_many(
                    list(problems)[:4], strategy="majority", n=2, seed=0, on_progress=broken
                )
            ]
    assert len(solutions) == 4 and all(s.answer is not None for s in solutions)
    assert calls == [s.problem_id for s in solutions]
    failures = [e for e in logs if e["event"] == "progress callback failed"]
    assert [e["problem_id"] for e in failures] == calls
    assert all(e["log_level"] == "error" and e["exc_info"] is True for e in failures)


async def test_two_solvers_keep_their_own_metrics(
    server: SimulatedServer, problems: dict[str, SimProblem]
) -> None:
    texts = list(problems)
    async with (
        Solver(**endpoints(server), metrics_port=0) as first,
        Solver(**endpoints(server), metrics_port=0) as second,
    ):
        assert first.metrics_url is not None and second.metrics_url is not None
        assert first.metrics_url != second.metrics_url
        one = [s async for s in first.solve_many(texts[:2], strategy="majority", n=2, seed=0)]
        two = [s async for s in second.solve_many(texts[2:5], strategy="majority", n=2, seed=0)]
        seen = [await scrape(first.metrics_url), await scrape(second.metrics_url)]
    for samples, solutions in zip(seen, (one, two), strict=True):
        assert value(samples, "asynctts_problems_done_total") == len(solutions)
        assert (
            value(samples, "asynctts_requests_total", endpoint="policy")
            == usage_of(solutions, "policy").requests
        )


async def test_the_exporter_stops_with_the_solver(server: SimulatedServer) -> None:
    async with Solver(**endpoints(server), metrics_port=0) as solver:
        url = solver.metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert value(await scrape(url), "asynctts_problems_done_total") == 0
    assert solver.metrics_url is None
    with pytest.raises(aiohttp.ClientConnectorError):
        await scrape(url)


async def test_a_port_in_use_is_refused_before_any_request(server: SimulatedServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            async with Solver(**endpoints(server), metrics_port=port):
                pass
    assert str(raised.value) == (
        f"metrics port {port} on 127.0.0.1 is in use by another program: choose another port"
        " (metrics_port, --metrics-port), or 0 for any free port"
    )
    assert sum(server.stats.routes.values()) == 0


async def test_eval_serves_metrics_while_it_runs(
    tmp_path: Path, math500: list[dict[str, Any]]
) -> None:
    records = [r for r in math500 if r["answer"].isdigit()][:8]
    data = write_data(tmp_path / "data.jsonl", records)
    problems = {r["problem"]: SimProblem(answer=r["answer"], n_steps=3) for r in records}
    port = closed_port()
    url = f"http://127.0.0.1:{port}/metrics"
    # slow enough to be watched: every engine iteration takes 3 ms
    latency = LatencyModel.constant(0.003)
    async with SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency) as server:
        argv = sim_argv(
            "eval",
            server,
            data,
            tmp_path / "run",
            "--strategy",
            "weighted_best_of_n",
            "--n",
            "4",
            "--max-problems-in-flight",
            "2",
            "--metrics-port",
            str(port),
        )
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(NO_HANG_S):
            while True:
                assert proc.returncode is None, "the run ended before its metrics were read"
                try:
                    samples = await scrape(url)
                except aiohttp.ClientConnectorError:
                    samples = {}  # not serving yet
                if samples and value(samples, "asynctts_problems_done_total") >= 1:
                    break
                await asyncio.sleep(0.01)
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert value(samples, "asynctts_requests_total", endpoint="policy") >= 1
    with pytest.raises(aiohttp.ClientConnectorError):
        await scrape(url)
