"""Rate limiters under asyncio: asyncio-throttle vs aiolimiter vs our FIFO token gate.

Why the transport uses aiolimiter (with a FIFO turn for token weights) rather than
asyncio-throttle, which the design card names. Two measurements, in one run:

1. Idle cost: 5,000 tasks wait at a low rate (50 admissions/s) for `--window` seconds. We
   report the client CPU seconds burnt while they wait (asyncio-throttle polls every waiter
   every 10 ms; aiolimiter parks waiters on futures and sets one timer).
2. Fairness: a bucket of 1,000 tokens refilling at 1,000 tokens/s, drained at the start. A flood
   of small requests (10 tokens every 10 ms: exactly the refill rate) runs for `--flood`
   seconds; 0.5 s in, one 500-token request arrives. We report how long it waited. aiolimiter
   serves the smallest waiter first, so the large request starves until the flood ends; the
   FIFO gate serves it in arrival order. asyncio-throttle counts requests and has no weights, so
   it cannot express a tokens-per-minute limit at all (reported as n/a).

    python benchmarks/rate_limiters.py [--waiters 5000] [--window 3] [--flood 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any

from aiolimiter import AsyncLimiter
from asyncio_throttle.throttler import Throttler

from asynctts.transport import FifoLimiter

from harness import add_output_argument, write_report

Acquire = Callable[[float], Coroutine[Any, Any, None]]


def throttle_acquire(rate_per_s: float) -> Acquire:
    throttler = Throttler(rate_limit=int(rate_per_s), period=1.0)

    async def acquire(amount: float) -> None:
        await throttler.acquire()  # type: ignore[no-untyped-call]  # one request; no weights

    return acquire


def aiolimiter_acquire(rate_per_s: float, bucket: float | None = None) -> Acquire:
    size = bucket if bucket is not None else rate_per_s
    limiter = AsyncLimiter(size, size / rate_per_s)
    return limiter.acquire


def fifo_acquire(rate_per_s: float, bucket: float | None = None) -> Acquire:
    size = bucket if bucket is not None else rate_per_s
    limiter = FifoLimiter(size, size / rate_per_s)
    return limiter.acquire


async def idle_cost(acquire: Acquire, waiters: int, window_s: float) -> dict[str, float]:
    admitted = 0

    async def waiter() -> None:
        nonlocal admitted
        await acquire(1)
        admitted += 1

    tasks = [asyncio.create_task(waiter()) for _ in range(waiters)]
    await asyncio.sleep(0)  # let every waiter queue
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(window_s)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu_s": cpu, "wall_s": wall, "cpu_share": cpu / wall, "admitted": admitted}


async def large_behind_flood(acquire: Acquire, flood_s: float) -> dict[str, float]:
    """Seconds one 500-token request waits while 10-token requests arrive every 10 ms."""
    await acquire(1000)  # drain the bucket: every later request waits for refill
    small: list[asyncio.Task[None]] = []
    start = time.perf_counter()

    async def flood() -> None:
        tick = 0
        while time.perf_counter() - start < flood_s:
            small.append(asyncio.create_task(acquire(10)))
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.01 - time.perf_counter()))

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.5)
    arrived = time.perf_counter()
    await acquire(500)
    waited = time.perf_counter() - arrived
    await flooding
    for task in small:
        task.cancel()
    await asyncio.gather(*small, return_exceptions=True)
    return {"large_wait_s": waited, "flood_s": flood_s, "small_requests": len(small)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--waiters", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0, help="admissions/s in the idle test")
    parser.add_argument("--window", type=float, default=3.0, help="seconds of idle measurement")
    parser.add_argument("--flood", type=float, default=4.0, help="seconds of small requests")
    add_output_argument(parser, "rate_limiters")
    args = parser.parse_args()

    limiters: dict[str, tuple[Callable[..., Acquire], bool]] = {
        "asyncio-throttle": (throttle_acquire, False),
        "aiolimiter": (aiolimiter_acquire, True),
        "FIFO token gate (aiolimiter + lock)": (fifo_acquire, True),
    }
    rows: list[dict[str, Any]] = []
    for name, (make, weighted) in limiters.items():
        idle = asyncio.run(idle_cost(make(args.rate), args.waiters, args.window))
        fair = (
            asyncio.run(large_behind_flood(make(1000.0, 1000.0), args.flood)) if weighted else None
        )
        rows.append(
            {"limiter": name, **idle, "large_wait_s": fair["large_wait_s"] if fair else None}
        )

    print(
        f"{args.waiters} waiters at {args.rate:g}/s for {args.window:g} s; "
        f"one 500-token request behind a {args.flood:g} s flood of 10-token requests "
        "(bucket 1,000 tokens, 1,000 tokens/s)"
    )
    print(
        f"{'limiter':<36} | {'CPU s while waiting':>19} | {'CPU share':>9} | {'admitted':>8} | "
        f"{'large request wait s':>20}"
    )
    for row in rows:
        wait = "n/a (no weights)" if row["large_wait_s"] is None else f"{row['large_wait_s']:.2f}"
        print(
            f"{row['limiter']:<36} | {row['cpu_s']:>19.2f} | {row['cpu_share']:>9.0%} | "
            f"{row['admitted']:>8} | {wait:>20}"
        )
    write_report(
        args.output,
        "rate_limiters",
        {
            "waiters": args.waiters,
            "rate_per_s": args.rate,
            "window_s": args.window,
            "flood_s": args.flood,
        },
        {p: version(p) for p in ("aiolimiter", "asyncio-throttle")},
        rows,
    )


if __name__ == "__main__":
    main()
