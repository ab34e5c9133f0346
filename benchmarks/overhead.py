"""Orchestration overhead: `solve_many` against a bare aiohttp loop sending the same requests.

A zero-latency `SimulatedServer` runs in its own process (so the client's CPU is measured
alone). The client, in this process, sends the same requests at the same concurrency C two
ways:

  (a) bare:       one aiohttp session with TCPConnector(limit=C) and C workers; each request
                  serialises its body with orjson, posts it, reads and parses the reply;
  (b) solve_many: `Solver.solve_many` over `--problems` problems with `MajorityVote(
                  per_request=1)` (or `BestOfN(per_request=1)` with `--prm`), budget n, so each
                  branch is one request; `Endpoint(max_in_flight=C)` and enough problems in
                  flight (1.25 C/n) that C requests are always wanted.

The bodies of (a) are built with the library's own encoder and the same per-branch seeds, so
the server computes the same completions: the table checks that both sent the same number of
requests and that the server generated the same number of tokens.

With `--prm` both clients get C requests in flight per route, C completions and C scorings:
solve_many's two endpoints each have max_in_flight=C, and the bare loop runs C completion
workers that hand each sample to C scoring workers, which score it with its own /pooling
request (solve_many coalesces a problem's samples into fewer requests), over 2C connections.
Rates count branches: completions + scoring per second.

Each cell (C, client) warms up first (one round of C requests, so connections are open and
caches warm) and then times the whole batch; cells run in interleaved rounds (`--repeats`,
client order alternating) and the median is reported, with the per-round ratio, since this
machine is shared. Also reported: client and server CPU per request. When the server's CPU per
second of wall time approaches 1.0 the server is the bottleneck and both clients wait on it.
Target: (b)/(a) >= 0.75 at 512 and 4096.

    python benchmarks/overhead.py [--problems 1000] [--n 16] [--repeats 3] [--prm]

The server process is `harness.SimServerProcess`, shared with the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from asynctts import (
    DEFAULT_SYSTEM_PROMPT,
    BestOfN,
    Endpoint,
    MajorityVote,
    Sampling,
    Solver,
    throughput_gc,
)
from asynctts.backends.context import derive_seed
from asynctts.backends.policy import encode_completions
from asynctts.backends.prm import encode_pooling
from asynctts.gc_tuning import THROUGHPUT_GC_THRESHOLDS
from asynctts.testing import SimProblem

from harness import SimServerProcess, add_output_argument, quiet_logs, write_report

POLICY_MODEL = "sim-policy"
PRM_MODEL = "sim-prm"
POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"
STEP_TAG = "<extra_0>"
CONCURRENCY = (64, 512, 4096)
SEED = 0


def make_problems(count: int, *, slip_rate: float = 0.0, n_steps: int = 4) -> dict[str, SimProblem]:
    """`count` distinct problem texts of MATH-like length, each with a known answer."""
    return {
        (
            f"Problem {i}: Let $f(x) = x^2 + {i}x + {i % 7}$. The function is evaluated at the "
            f"integers $1, 2, \\dots, {i % 50 + 3}$ and the values are summed. Find the sum of "
            "the digits of that total, and express your answer as an integer."
        ): SimProblem(answer=str(i), slip_rate=slip_rate, n_steps=n_steps)
        for i in range(count)
    }


def total(counts: Mapping[str, float]) -> float:
    return float(sum(counts.values()))


# -- the two clients -----------------------------------------------------------------------

Items = list[tuple[str, str]]
Cell = dict[str, float]


def policy_endpoint(url: str, c: int) -> Endpoint:
    return Endpoint(
        base_url=url + "/v1", model=POLICY_MODEL, prompt_format=POLICY_FORMAT, max_in_flight=c
    )


def prm_endpoint(url: str, c: int) -> Endpoint:
    return Endpoint(
        base_url=url + "/v1", model=PRM_MODEL, prompt_format=PRM_FORMAT, max_in_flight=c
    )


def bare_bodies(items: Items, n: int) -> list[dict[str, Any]]:
    """The completions bodies solve_many sends for `items`: branch g of a problem is the root's
    fork g, whose request seed derives from (seed, problem id, (g,))."""
    sampling = Sampling()
    return [
        encode_completions(
            model=POLICY_MODEL,
            prompt=POLICY_FORMAT.format(system=DEFAULT_SYSTEM_PROMPT, problem=problem),
            sampling=sampling,
            n=1,
            to_end=True,
            seed=derive_seed(SEED, pid, (g,)),
        )
        for pid, problem in items
        for g in range(n)
    ]


def pooling_body(problem: str, text: str) -> dict[str, Any]:
    """One sample scored alone: its steps as the PRM client renders them."""
    steps = [step.strip() for step in text.split("\n\n") if step.strip()]
    solution = "".join(step + STEP_TAG for step in steps)
    return encode_pooling(PRM_MODEL, [PRM_FORMAT.format(problem=problem, solution=solution)])


async def run_bare(
    url: str, warmup: Items, items: Items, n: int, c: int, prm: bool, mark: Callable[[], None]
) -> Cell:
    # Each route gets C requests in flight (and C connections), as solve_many's two endpoints
    # do with max_in_flight=C each.
    routes = 2 if prm else 1
    connector = aiohttp.TCPConnector(limit=routes * c, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Content-Type": "application/json"}

        async def post(route: str, body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(url + route, data=orjson.dumps(body), headers=headers) as r:
                raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"bare client: HTTP {r.status} on {route}: {raw[:200]!r}")
            reply: dict[str, Any] = orjson.loads(raw)
            return reply

        async def drive(jobs: list[tuple[str, dict[str, Any]]]) -> None:
            queue = iter(jobs)
            to_score: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()

            async def generate() -> None:
                for problem, body in queue:
                    reply = await post("/v1/completions", body)
                    if prm:
                        to_score.put_nowait((problem, reply["choices"][0]["text"]))

            async def score() -> None:
                while (sample := await to_score.get()) is not None:
                    await post("/pooling", pooling_body(*sample))

            async with asyncio.TaskGroup() as scoring:
                scorers = [scoring.create_task(score()) for _ in range(c if prm else 0)]
                async with asyncio.TaskGroup() as generating:
                    for _ in range(c):
                        generating.create_task(generate())
                for _ in scorers:
                    to_score.put_nowait(None)  # generation is over: each scorer stops

        def jobs_of(batch: Items) -> list[tuple[str, dict[str, Any]]]:
            problems = [problem for _, problem in batch for _ in range(n)]
            return list(zip(problems, bare_bodies(batch, n), strict=True))

        await drive(jobs_of(warmup))
        jobs = jobs_of(items)
        mark()
        return await timed(lambda: drive(jobs))


async def run_solve_many(
    url: str, warmup: Items, items: Items, n: int, c: int, prm: bool, mark: Callable[[], None]
) -> Cell:
    strategy = BestOfN(per_request=1) if prm else MajorityVote(per_request=1)
    # Enough problems that C requests are wanted (a quarter more, so finishing problems leave
    # no gap), without queueing thousands more branches than the bare loop has workers.
    in_flight = max(1, -(-5 * c // (4 * n)))
    async with Solver(
        policy=policy_endpoint(url, c), prm=prm_endpoint(url, c) if prm else None
    ) as solver:

        async def drive(batch: Items) -> None:
            async for solution in solver.solve_many(
                batch, strategy=strategy, n=n, seed=SEED, max_problems_in_flight=in_flight
            ):
                if not solution.ok or len(solution.candidates) != n:
                    why = solution.error or [lost.reason for lost in solution.lost[:1]]
                    raise RuntimeError(f"{solution.problem_id} did not finish cleanly: {why}")

        await drive(warmup)
        mark()
        return await timed(lambda: drive(items))


class GcMeter:
    """CPU time spent in CPython's cyclic garbage collector while active."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.cpu_s += time.process_time() - self._started
            self.collections[info["generation"]] += 1


async def timed(work: Callable[[], Coroutine[Any, Any, None]]) -> Cell:
    with GcMeter() as collector:
        wall, cpu = time.perf_counter(), time.process_time()
        await work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "gc_cpu_s": collector.cpu_s,
        "full_collections": collector.collections[2],
    }


Client = Callable[
    [str, Items, Items, int, int, bool, Callable[[], None]], Coroutine[Any, Any, Cell]
]
CLIENTS: dict[str, Client] = {
    "bare": run_bare,
    "solve_many": run_solve_many,
}


GC_MODES = ("default", "tuned")


@contextmanager
def gc_settings(mode: str) -> Iterator[None]:
    """CPython's defaults, or `asynctts.throughput_gc()` (both clients get the same)."""
    if mode == "default":
        yield
        return
    with throughput_gc():
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=1000, help="problems per timed batch")
    parser.add_argument("--n", type=int, default=16, help="branches (one request each) per problem")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--gc", choices=GC_MODES, nargs="+", default=list(GC_MODES))
    parser.add_argument("--prm", action="store_true", help="best_of_n: also score every branch")
    add_output_argument(parser, "overhead")
    args = parser.parse_args()
    quiet_logs()

    # Warm-up problems are distinct from the timed ones, so both clients see a cold
    # problem-to-answer lookup on the server for every timed problem.
    warm_count = max(1, -(-max(args.concurrency) // args.n))
    problems = make_problems(args.problems + warm_count)
    texts = list(problems)
    items: Items = [(f"p{i}", text) for i, text in enumerate(texts[: args.problems])]
    branches = args.problems * args.n
    runs: dict[tuple[str, int, str], list[Cell]] = {}
    # At 4096 concurrent the server queues seconds of requests; vLLM's 5 s keep-alive would
    # then reset connections whose next request is already sent (see SimulatedServer).
    with SimServerProcess(
        model=POLICY_MODEL,
        prm_model=PRM_MODEL,
        problems=problems,
        step_tag=STEP_TAG,
        keepalive_s=300.0,
    ) as server:
        for round_ in range(args.repeats):
            for mode in args.gc:
                for c in args.concurrency:
                    warm_items: Items = [
                        (f"w{c}-{i}", texts[args.problems + i]) for i in range(-(-c // args.n))
                    ]
                    order = list(CLIENTS) if round_ % 2 == 0 else list(reversed(CLIENTS))
                    for client in order:
                        marks: list[dict[str, Any]] = []

                        def mark() -> None:
                            # between warm-up and the timed batch (nothing is in flight then)
                            marks.append(server.reset())  # noqa: B023  # called in this cell

                        with gc_settings(mode):
                            cell = asyncio.run(
                                CLIENTS[client](
                                    server.url, warm_items, items, args.n, c, args.prm, mark
                                )
                            )
                        (before,) = marks
                        after = server.stats()
                        server_cpu_s = after["cpu_s"] - before["cpu_s"]
                        cell["rps"] = branches / cell["wall_s"]
                        cell["client_cpu_us"] = cell["cpu_s"] / branches * 1e6
                        cell["gc_share"] = cell["gc_cpu_s"] / cell["cpu_s"]
                        cell["server_cpu_us"] = server_cpu_s / branches * 1e6
                        cell["server_load"] = server_cpu_s / (after["clock_s"] - before["clock_s"])
                        cell["requests"] = total(after["routes"])
                        cell["completion_tokens"] = total(after["completion_tokens"])
                        runs.setdefault((mode, c, client), []).append(cell)
                        print(
                            f"round {round_} gc={mode:<7} C={c:>5} {client:>10}: "
                            f"{cell['rps']:6.0f} branches/s, client {cell['client_cpu_us']:4.0f}"
                            f" us, server {cell['server_cpu_us']:4.0f} us per branch",
                            flush=True,
                        )

    rows = [summarise(runs, mode, c) for mode in args.gc for c in args.concurrency]
    print()
    print(
        f"{args.problems} problems x n={args.n} = {branches} branches per cell "
        f"({'best_of_n + PRM' if args.prm else 'majority'}, per_request=1), median of "
        f"{args.repeats} interleaved rounds; 'bare' is the aiohttp loop, 'sm' solve_many"
    )
    print(
        f"{'gc':<7} | {'C':>5} | {'bare /s':>7} | {'sm /s':>6} | {'sm/bare':>7} | "
        f"{'paired':>6} | {'client us/branch bare, sm':>25} | {'in GC bare, sm':>14} | "
        f"{'server load bare, sm':>20} | same tokens"
    )
    for row in rows:
        print(
            f"{row['gc']:<7} | {row['concurrency']:>5} | {row['bare_rps']:>7.0f} | "
            f"{row['solve_many_rps']:>6.0f} | {row['ratio']:>7.2f} | "
            f"{row['ratio_paired_median']:>6.2f} | {row['bare_client_cpu_us']:>12.0f}, "
            f"{row['solve_many_client_cpu_us']:>10.0f} | {row['bare_gc_share']:>6.0%}, "
            f"{row['solve_many_gc_share']:>5.0%} | {row['bare_server_load']:>9.2f}, "
            f"{row['solve_many_server_load']:>8.2f} | {row['same_tokens']}"
        )
    write_report(
        args.output,
        "overhead",
        {
            "problems": args.problems,
            "n": args.n,
            "repeats": args.repeats,
            "strategy": "best_of_n" if args.prm else "majority",
            "per_request": 1,
            "tuned_gc_threshold": THROUGHPUT_GC_THRESHOLDS,
        },
        {"aiohttp": aiohttp.__version__, "orjson": orjson.__version__},
        rows,
    )


def summarise(runs: Mapping[tuple[str, int, str], list[Cell]], mode: str, c: int) -> dict[str, Any]:
    row: dict[str, Any] = {"gc": mode, "concurrency": c}
    for client in CLIENTS:
        cells = runs[(mode, c, client)]
        for key in ("rps", "client_cpu_us", "gc_share", "server_cpu_us", "server_load"):
            row[f"{client}_{key}"] = statistics.median(cell[key] for cell in cells)
        row[f"{client}_rps_runs"] = [round(cell["rps"], 1) for cell in cells]
        row[f"{client}_requests"] = cells[-1]["requests"]
        row[f"{client}_completion_tokens"] = cells[-1]["completion_tokens"]
    row["ratio"] = row["solve_many_rps"] / row["bare_rps"]
    # Each round runs the two clients back to back: a per-round ratio cancels slow drifts of
    # a shared machine.
    row["ratio_paired_median"] = statistics.median(
        s["rps"] / b["rps"]
        for s, b in zip(runs[(mode, c, "solve_many")], runs[(mode, c, "bare")], strict=True)
    )
    row["cpu_ratio"] = row["bare_client_cpu_us"] / row["solve_many_client_cpu_us"]
    row["same_requests"] = row["bare_requests"] == row["solve_many_requests"]
    row["same_tokens"] = row["bare_completion_tokens"] == row["solve_many_completion_tokens"]
    return row


if __name__ == "__main__":
    main()
