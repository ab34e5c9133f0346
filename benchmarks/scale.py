"""Scale: 10,000 branches in flight in one process; peak RSS and event-loop lag.

A `SimulatedServer` in its own process holds every request for a few seconds: a continuous-
batching engine with room for all of them (`max_num_seqs` 16384) whose iterations last
`--iteration-ms` each (default 100), so a sample of ~40-70 tokens takes 4-7 s. That is longer
than the client needs to send 10,000 requests (~2-3 s of CPU here), so all of them are held
at once; at 25 ms (1-1.75 s) the first answers come back while the last are still being
sent. The client, in a fresh process of its own (so its peak RSS is its own), runs:

  (a) bare:       an aiohttp loop with 10,000 workers sending the same completions bodies;
  (b) solve_many: `solve_many` over `--problems` problems with `MajorityVote(per_request=1)`,
                  n=16, all problems in flight and `Endpoint(max_in_flight=10000)`: 10,000
                  branches, each one request, wait on the server at once (`--waves` times).

Measured in the client: peak RSS (`ru_maxrss`) and RSS after start-up (imports, session),
so the growth per branch in flight is shown; and the lag of a 10 ms ticker (how late each
tick wakes: max, p99, median), which is what every other coroutine of the program (a web
app's handlers, say) would wait. In the server: the most requests it held at once. Both GC
settings of benchmarks/overhead.py are run (the default's full collections of a heap this
size are the largest pauses). Targets: peak RSS < 1 GiB with 10,000 branches in flight.

    python benchmarks/scale.py [--branches 10000] [--waves 2] [--iteration-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson
from overhead import (
    GC_MODES,
    POLICY_MODEL,
    bare_bodies,
    gc_settings,
    make_problems,
    policy_endpoint,
    total,
)

from asynctts import MajorityVote, Solver
from asynctts.testing import LatencyModel

from harness import SimServerProcess, add_output_argument, quiet_logs, write_report

N = 16  # branches per problem
TICK_S = 0.010


def rss_mib() -> float:
    """The current resident set size."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Ticker:
    """Wakes every 10 ms and records how late each wake-up was."""

    def __init__(self) -> None:
        self.lags_s: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        due = time.perf_counter() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            self.lags_s.append(now - due)
            due = now + TICK_S


Items = list[tuple[str, str]]


async def bare(url: str, items: Items, c: int, ticker: Ticker) -> dict[str, float]:
    # built as they are sent, so memory holds what is in flight, not the whole batch
    queue = (body for item in items for body in bare_bodies([item], N))
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        headers = {"Content-Type": "application/json"}
        started_mib = rss_mib()

        async def worker() -> None:
            for body in queue:
                async with session.post(
                    url + "/v1/completions", data=orjson.dumps(body), headers=headers
                ) as reply:
                    raw = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"bare client: HTTP {reply.status}: {raw[:200]!r}")
                orjson.loads(raw)

        ticker.start()
        async with asyncio.TaskGroup() as tg:
            for _ in range(c):
                tg.create_task(worker())
    return {"started_rss_mib": started_mib}


async def solve_many(url: str, items: Items, c: int, ticker: Ticker) -> dict[str, float]:
    async with Solver(policy=policy_endpoint(url, c)) as solver:
        started_mib = rss_mib()
        ticker.start()
        async for solution in solver.solve_many(
            items,
            strategy=MajorityVote(per_request=1),
            n=N,
            seed=0,
            max_problems_in_flight=c // N,
        ):
            if not solution.ok or len(solution.candidates) != N:
                why = solution.error or [lost.reason for lost in solution.lost[:1]]
                raise RuntimeError(f"{solution.problem_id} did not finish cleanly: {why}")
    return {"started_rss_mib": started_mib}


CLIENTS: dict[str, Callable[[str, Items, int, Ticker], Coroutine[Any, Any, dict[str, float]]]] = {
    "bare": bare,
    "solve_many": solve_many,
}


def run_client(kind: str, mode: str, url: str, items: Items, c: int, conn: Connection) -> None:
    """One client in a fresh process: its peak RSS is its own."""
    quiet_logs()
    imported_mib = rss_mib()

    async def main() -> dict[str, float]:
        ticker = Ticker()
        wall = time.perf_counter()
        try:
            result = await CLIENTS[kind](url, items, c, ticker)
        finally:
            await ticker.stop()
        result["wall_s"] = time.perf_counter() - wall
        lags = sorted(ticker.lags_s)
        result["lag_max_ms"] = lags[-1] * 1e3
        result["lag_p99_ms"] = lags[int(0.99 * (len(lags) - 1))] * 1e3
        result["lag_median_ms"] = statistics.median(lags) * 1e3
        result["ticks"] = len(lags)
        return result

    with gc_settings(mode):
        result = asyncio.run(main())
    result["imported_rss_mib"] = imported_mib
    result["peak_rss_mib"] = peak_rss_mib()
    conn.send(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--branches", type=int, default=10_000, help="in flight at once")
    parser.add_argument("--waves", type=int, default=2, help="batches of --branches each")
    parser.add_argument("--iteration-ms", type=float, default=100.0)
    parser.add_argument("--gc", choices=GC_MODES, nargs="+", default=list(GC_MODES))
    add_output_argument(parser, "scale")
    args = parser.parse_args()
    quiet_logs()
    if args.branches % N:
        parser.error(f"--branches must be a multiple of {N}")
    problems = make_problems(args.waves * args.branches // N)
    items: Items = [(f"p{i}", text) for i, text in enumerate(problems)]
    context = multiprocessing.get_context("spawn")
    rows = []
    with SimServerProcess(
        model=POLICY_MODEL,
        problems=problems,
        latency=LatencyModel.constant(args.iteration_ms / 1000),
        max_num_seqs=16_384,
        keepalive_s=300.0,
    ) as server:
        for mode in args.gc:
            for kind in CLIENTS:
                before = server.reset()
                receive, send = context.Pipe(duplex=False)
                client = context.Process(
                    target=run_client, args=(kind, mode, server.url, items, args.branches, send)
                )
                client.start()
                result: dict[str, Any] = receive.recv()
                client.join()
                after = server.stats()
                row = {
                    "gc": mode,
                    "client": kind,
                    **result,
                    "branches": len(items) * N,
                    "server_peak_concurrent": after["peak_concurrent"],
                    "server_peak_running": after["peak_running"],
                    "requests": total(after["routes"]) - total(before["routes"]),
                    "completion_tokens": total(after["completion_tokens"]),
                }
                row["rss_growth_kib_per_branch"] = (
                    (row["peak_rss_mib"] - row["started_rss_mib"]) * 1024 / args.branches
                )
                rows.append(row)
                print(
                    f"gc={mode:<7} {kind:>10}: peak RSS {row['peak_rss_mib']:6.0f} MiB, "
                    f"{row['server_peak_concurrent']} in flight, lag max "
                    f"{row['lag_max_ms']:.0f} ms",
                    flush=True,
                )

    print()
    print(
        f"{args.waves} waves of {args.branches} branches in flight (majority, n={N}, "
        f"per_request=1); each request held ~{args.iteration_ms:g} ms x its tokens"
    )
    print(
        f"{'gc':<7} | {'client':>10} | {'in flight':>9} | {'wall s':>6} | "
        f"{'RSS MiB: imports, started, peak':>31} | {'KiB/branch':>10} | "
        f"{'lag ms: max, p99, median':>24}"
    )
    for row in rows:
        print(
            f"{row['gc']:<7} | {row['client']:>10} | {row['server_peak_concurrent']:>9} | "
            f"{row['wall_s']:>6.1f} | {row['imported_rss_mib']:>11.0f}, "
            f"{row['started_rss_mib']:>7.0f}, {row['peak_rss_mib']:>9.0f} | "
            f"{row['rss_growth_kib_per_branch']:>10.1f} | {row['lag_max_ms']:>10.0f}, "
            f"{row['lag_p99_ms']:>5.0f}, {row['lag_median_ms']:>6.1f}"
        )
    write_report(
        args.output,
        "scale",
        {
            "branches_in_flight": args.branches,
            "waves": args.waves,
            "n": N,
            "iteration_ms": args.iteration_ms,
            "tick_ms": TICK_S * 1e3,
        },
        {"aiohttp": aiohttp.__version__},
        rows,
    )


if __name__ == "__main__":
    main()
