"""Transport overhead against a bare aiohttp loop, at 64, 512 and 4096 concurrent requests.

A zero-latency aiohttp server runs in a separate process (so the client's CPU is measured
alone) and answers POST /v1/completions with a small fixed JSON body. The client, in this
process, sends a fixed number of requests with C concurrent workers in two ways:

  (a) bare:      one ClientSession with TCPConnector(limit=C); each request serialises the body
                 with orjson, posts it and parses the reply with orjson (the same work the
                 transport does, minus the orchestration);
  (b) transport: Transport.post_json with max_in_flight=C, billed to a ledger (one Charge), as
                 the backends call it.

Each (C, client) cell first warms up with C requests (one connection each), then times
`--requests` requests; cells are interleaved over `--repeats` rounds and the median is reported.
Target: (b)/(a) >= 0.75 at 512 and 4096.

    python benchmarks/transport_overhead.py [--requests 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from asynctts.endpoint import Endpoint
from asynctts.ledger import Charge, Ledger
from asynctts.transport import Transport

from harness import add_output_argument, write_report

ROUTE = "/v1/completions"
BODY = {"model": "bench", "prompt": "What is 1+1?", "max_tokens": 16, "n": 1, "temperature": 0.8}
REPLY = orjson.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "model": "bench",
        "choices": [{"index": 0, "text": " 2", "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }
)
CONCURRENCY = (64, 512, 4096)


def serve(port_out: Connection) -> None:
    """The zero-latency server (runs in its own process)."""

    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(ROUTE, completions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=8192)
        await site.start()
        port_out.send(runner.addresses[0][1])
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


async def drive(n: int, workers: int, send: Callable[[], Awaitable[None]]) -> None:
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    async with asyncio.TaskGroup() as tg:
        for _ in range(workers):
            tg.create_task(worker())


async def timed(n: int, workers: int, send: Callable[[], Awaitable[None]]) -> dict[str, float]:
    await drive(workers, workers, send)  # warm-up: one connection per worker
    wall, cpu = time.perf_counter(), time.process_time()
    await drive(n, workers, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rps": n / wall, "wall_s": wall, "cpu_us_per_request": cpu / n * 1e6}


async def bare(url: str, n: int, c: int) -> dict[str, float]:
    return await bare_loop(url, n, c, aiohttp.TCPConnector(limit=c), aiohttp.client.DEFAULT_TIMEOUT)


async def bare_configured(url: str, n: int, c: int) -> dict[str, float]:
    """The bare loop with the transport's session settings (keep-alive, and the read timeout
    whose per-chunk timer aiohttp reschedules), to separate their cost from the transport's."""
    endpoint = Endpoint(base_url=url, model="bench", max_in_flight=c)
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=0, keepalive_timeout=4.0)
    timeout = aiohttp.ClientTimeout(
        total=endpoint.total_timeout_s,
        connect=endpoint.connect_timeout_s,
        sock_read=endpoint.read_timeout_s,
    )
    return await bare_loop(url, n, c, connector, timeout)


async def bare_loop(
    url: str, n: int, c: int, connector: aiohttp.TCPConnector, limits: aiohttp.ClientTimeout
) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as session:
        headers = {"Content-Type": "application/json"}

        async def send() -> None:
            async with session.post(url + ROUTE, data=orjson.dumps(BODY), headers=headers) as r:
                raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"bare client: HTTP {r.status}")
            orjson.loads(raw)

        return await timed(n, c, send)


async def through_transport(url: str, n: int, c: int) -> dict[str, float]:
    endpoint = Endpoint(base_url=url, model="bench", max_in_flight=c)
    charges = (Charge(Ledger(), ("0",)),)
    async with Transport(endpoint, name="policy") as transport:

        async def send() -> None:
            await transport.post_json(ROUTE, BODY, charges=charges)

        result = await timed(n, c, send)
        stats = transport.statistics()
    if stats.retries or stats.failures:
        raise RuntimeError(f"transport run was not clean: {stats}")
    return result


CLIENTS: dict[str, Callable[[str, int, int], Coroutine[Any, Any, dict[str, float]]]] = {
    "bare": bare,
    "bare_configured": bare_configured,
    "transport": through_transport,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    add_output_argument(parser, "transport_overhead")
    args = parser.parse_args()
    # As an application would: debug lines (one per request) are filtered out cheaply.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    server = context.Process(target=serve, args=(send,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{receive.recv()}"
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for c in args.concurrency:
                for client, run in CLIENTS.items():
                    result = asyncio.run(run(url, args.requests, c))
                    runs.setdefault((c, client), []).append(result)
    finally:
        server.terminate()
        server.join()

    rows = []
    for c in args.concurrency:
        row: dict[str, Any] = {"concurrency": c}
        for client in CLIENTS:
            cell = runs[(c, client)]
            row[f"{client}_rps"] = statistics.median(r["rps"] for r in cell)
            row[f"{client}_cpu_us_per_request"] = statistics.median(
                r["cpu_us_per_request"] for r in cell
            )
            row[f"{client}_rps_runs"] = [round(r["rps"], 1) for r in cell]
        row["ratio"] = row["transport_rps"] / row["bare_rps"]
        # Each round runs the clients back to back, so a per-round ratio cancels slow drifts
        # of a shared machine.
        paired = [
            t["rps"] / b["rps"]
            for t, b in zip(runs[(c, "transport")], runs[(c, "bare")], strict=True)
        ]
        row["ratio_paired_median"] = statistics.median(paired)
        row["ratio_vs_bare_configured"] = row["transport_rps"] / row["bare_configured_rps"]
        row["cpu_ratio"] = row["bare_cpu_us_per_request"] / row["transport_cpu_us_per_request"]
        rows.append(row)

    print(f"{args.requests} requests per cell, median of {args.repeats} interleaved rounds")
    print(
        "(a) bare aiohttp loop; (a') the same with the transport's session settings; "
        "(b) Transport.post_json"
    )
    print(
        f"{'C':>5} | {'(a) req/s':>9} | {'(a′) req/s':>10} | {'(b) req/s':>9} | {'b/a':>5} | "
        f"{'b/a paired':>10} | {'b/a′':>5} | {'CPU us/req a | a′ | b':>21} | {'CPU a/b':>7}"
    )
    for row in rows:
        cpu = "{:>5.0f} | {:>4.0f} | {:>4.0f}".format(
            *(row[f"{k}_cpu_us_per_request"] for k in CLIENTS)
        )
        print(
            f"{row['concurrency']:>5} | {row['bare_rps']:>9.0f} | "
            f"{row['bare_configured_rps']:>10.0f} | {row['transport_rps']:>9.0f} | "
            f"{row['ratio']:>5.2f} | "
            f"{row['ratio_paired_median']:>10.2f} | {row['ratio_vs_bare_configured']:>5.2f} | "
            f"{cpu:>21} | {row['cpu_ratio']:>7.2f}"
        )
    write_report(
        args.output,
        "transport_overhead",
        {"requests_per_cell": args.requests, "repeats": args.repeats},
        {"aiohttp": aiohttp.__version__},
        rows,
    )


if __name__ == "__main__":
    main()
