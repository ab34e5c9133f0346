"""Adaptive concurrency against the simulated server: the cap backs off and recovers.

Three scenarios, each against a fresh `SimulatedServer` on loopback (real HTTP), with more
requests wanting a slot than the client's ceiling:

1. limit: the server answers 429 past `--limit` requests in flight (docs/design.md, section 8 used
   100 against a client allowed 1,000). Compared in the same run: adaptation started low (the
   default, 32), adaptation started at the ceiling, and a fixed cap at the ceiling. Reported:
   429s per attempt, the cap once settled (second half of the run), throughput.
2. lift: adaptation settles under the limit, then the limit is lifted mid-run; reported: the
   requests it took the cap to reach the ceiling, and the cap trajectory.
3. queue: no 429s, but the engine runs `--seqs` sequences and queues the rest; adaptation
   with `adaptive_max_waiting` against a fixed cap: the server's mean waiting queue, batch
   occupancy and throughput.

    python benchmarks/adaptive.py [--limit 100] [--ceiling 1000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from importlib.metadata import version
from typing import Any

import structlog

from asynctts import Endpoint
from asynctts.testing import LatencyModel, SimulatedServer
from asynctts.transport import Transport

from harness import add_output_argument, write_report

ROUTE = "/v1/completions"


async def drive(transport: Transport, successes: int, workers: int) -> list[int]:
    """Post until `successes` requests succeeded; the cap after each success."""
    caps: list[int] = []

    async def worker(index: int) -> None:
        sent = 0
        while len(caps) < successes:
            sent += 1
            body = {"model": "sim-policy", "prompt": f"q{index}", "max_tokens": 5, "seed": sent}
            await transport.post_json(ROUTE, body)
            caps.append(transport.statistics().max_in_flight)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return caps


def endpoint(server: SimulatedServer, **settings: Any) -> Endpoint:
    return Endpoint(base_url=server.base_url, model="sim-policy", max_attempts=20, **settings)


def settled(caps: list[int]) -> dict[str, float]:
    half = caps[len(caps) // 2 :]
    return {"cap_mean": statistics.mean(half), "cap_min": min(half), "cap_max": max(half)}


async def limited(args: argparse.Namespace, name: str, **settings: Any) -> dict[str, Any]:
    latency = LatencyModel.zero(per_request_jitter_s=args.service_s * 2)
    server = SimulatedServer(latency=latency, max_concurrent_requests=args.limit)
    async with server:
        transport = Transport(endpoint(server, max_in_flight=args.ceiling, **settings), name=name)
        async with transport as t:
            started = time.perf_counter()
            caps = await drive(t, args.requests, workers=args.ceiling + args.ceiling // 5)
            elapsed = time.perf_counter() - started
            stats = t.statistics()
    return {
        "scenario": "limit",
        "client": name,
        "attempts": stats.attempts,
        "rejected": server.stats.statuses[429],
        "rejected_share": server.stats.statuses[429] / stats.attempts,
        "successes_per_s": args.requests / elapsed,
        "cap_decreases": stats.cap_decreases,
        **settled(caps),
        "trajectory": caps[:: max(1, len(caps) // 40)],
    }


async def lift(args: argparse.Namespace) -> dict[str, Any]:
    latency = LatencyModel.zero(per_request_jitter_s=args.service_s * 2)
    async with SimulatedServer(latency=latency, max_concurrent_requests=args.limit) as server:
        settings = {"max_in_flight": args.ceiling, "adaptive_concurrency": True}
        async with Transport(endpoint(server, **settings), name="lift") as t:
            workers = args.ceiling + args.ceiling // 5
            before = await drive(t, args.requests // 2, workers)
            rejected = server.stats.statuses[429]
            server.max_concurrent_requests = None
            after = await drive(t, 2 * args.requests, workers)
    reached = after.index(args.ceiling) if args.ceiling in after else None
    return {
        "scenario": "lift",
        "client": "adaptive, start 32",
        "cap_before_lift": before[-1],
        **settled(before),
        "requests_to_ceiling": reached,
        "rejected_after_lift": server.stats.statuses[429] - rejected,
        "trajectory": (before + after)[:: max(1, (len(before) + len(after)) // 60)],
    }


async def queue(args: argparse.Namespace, name: str, **settings: Any) -> dict[str, Any]:
    latency = LatencyModel.constant(args.service_s / 5)  # five tokens a request
    async with SimulatedServer(latency=latency, max_num_seqs=args.seqs) as server:
        ceiling = args.seqs * 8
        async with Transport(endpoint(server, max_in_flight=ceiling, **settings), name=name) as t:
            waiting: list[int] = []

            async def sample() -> None:
                while True:
                    await asyncio.sleep(0.05)
                    waiting.append(server.stats.waiting)

            sampler = asyncio.create_task(sample())
            started = time.perf_counter()
            caps = await drive(t, args.requests, workers=ceiling + ceiling // 5)
            elapsed = time.perf_counter() - started
            sampler.cancel()
            stats = t.statistics()
    half = waiting[len(waiting) // 2 :]
    return {
        "scenario": "queue",
        "client": name,
        "waiting_mean": statistics.mean(half) if half else 0.0,
        "occupancy": server.stats.occupancy,
        "successes_per_s": args.requests / elapsed,
        "cap_decreases": stats.cap_decreases,
        **settled(caps),
        "trajectory": caps[:: max(1, len(caps) // 40)],
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [
        await limited(args, "adaptive, start 32", adaptive_concurrency=True),
        await limited(
            args,
            f"adaptive, start {args.ceiling}",
            adaptive_concurrency=True,
            adaptive_initial_in_flight=args.ceiling,
        ),
        await limited(args, f"fixed {args.ceiling}", adaptive_concurrency=False),
        await lift(args),
        await queue(
            args,
            f"adaptive, max_waiting {args.max_waiting}",
            adaptive_concurrency=True,
            adaptive_initial_in_flight=args.seqs * 8,
            adaptive_max_waiting=args.max_waiting,
            metrics_interval_s=0.1,
        ),
        await queue(args, f"fixed {args.seqs * 8}", adaptive_concurrency=False),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", type=int, default=100, help="the server's 429 limit")
    parser.add_argument("--ceiling", type=int, default=1000, help="Endpoint.max_in_flight")
    parser.add_argument("--requests", type=int, default=2000, help="successes per scenario")
    parser.add_argument("--service-s", type=float, default=0.2, help="mean seconds a request")
    parser.add_argument("--seqs", type=int, default=32, help="engine batch (queue scenario)")
    parser.add_argument("--max-waiting", type=int, default=8)
    add_output_argument(parser, "adaptive")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    rows = asyncio.run(run(args))

    print(f"limit {args.limit}, ceiling {args.ceiling}, {args.requests} successes per run")
    print(f"{'client':>24} | {'429/attempt':>11} | {'cap mean [min, max]':>20} | {'ok/s':>6}")
    for row in (r for r in rows if r["scenario"] == "limit"):
        span = f"{row['cap_mean']:.0f} [{row['cap_min']}, {row['cap_max']}]"
        print(
            f"{row['client']:>24} | {row['rejected_share']:>11.2%} | {span:>20} | "
            f"{row['successes_per_s']:>6.0f}"
        )
    (lifted,) = (r for r in rows if r["scenario"] == "lift")
    print(
        f"lift: settled at {lifted['cap_mean']:.0f} [{lifted['cap_min']}, {lifted['cap_max']}]; "
        f"after the limit was lifted the cap reached {args.ceiling} within "
        f"{lifted['requests_to_ceiling']} requests, {lifted['rejected_after_lift']} 429s"
    )
    print("  trajectory:", lifted["trajectory"])
    print(f"queue: engine runs {args.seqs} sequences")
    print(f"{'client':>24} | {'waiting':>7} | {'occupancy':>9} | {'cap mean':>8} | {'ok/s':>6}")
    for row in (r for r in rows if r["scenario"] == "queue"):
        print(
            f"{row['client']:>24} | {row['waiting_mean']:>7.1f} | {row['occupancy']:>9.2f} | "
            f"{row['cap_mean']:>8.1f} | {row['successes_per_s']:>6.0f}"
        )
    write_report(
        args.output,
        "adaptive",
        {
            "limit": args.limit,
            "ceiling": args.ceiling,
            "requests": args.requests,
            "service_s": args.service_s,
            "seqs": args.seqs,
            "max_waiting": args.max_waiting,
        },
        {"aiohttp": version("aiohttp")},
        rows,
    )


if __name__ == "__main__":
    main()
