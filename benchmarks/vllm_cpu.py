"""Real vLLM on the CPU: asynctts against a bare aiohttp client at equal concurrency, and the
prefix-cache hit rate of beam search read from vLLM's /metrics.

`servers/launch.py`'s CPU profile starts two vLLM servers (from `.venv-vllm`, on free ports):
SmolLM2-135M-Instruct as the policy, and the same model as a logprob judge (a weak PRM: the
plumbing, not accuracy). Then:

  1. Throughput, at `--concurrency` requests in flight:
     (a) bare:       an aiohttp loop sending the completions bodies asynctts would send (the
                     chat template rendered to token ids, per-branch seeds), C workers;
     (b) solve_many: `solve_many` over the same problems with `MajorityVote(per_request=1)`,
                     `Endpoint(max_in_flight=C)`.
     Both ask for `--max-tokens` tokens at most per sample. Reported: wall-clock, samples/s,
     generated tokens/s (from vLLM's `vllm:generation_tokens_total`), client CPU per sample.
     The server is the bottleneck here (a 2-core CPU generates ~50-100 tokens/s), so the
     ratio shows that the orchestrator takes nothing from it.
  2. Beam search (n=8, width 4) over `--beam-problems` problems: vLLM's prefix-cache hit rate
     (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`, in tokens) on the
     policy and on the judge, over the search.

    python benchmarks/vllm_cpu.py [--problems 4] [--n 8] [--concurrency 8] [--max-tokens 96]

Needs `.venv-vllm` (`make venv-vllm`); takes ~5-10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import orjson
from overhead import quiet_logs

from asynctts import (
    DEFAULT_SYSTEM_PROMPT,
    BeamSearch,
    Endpoint,
    MajorityVote,
    Sampling,
    Solver,
)
from asynctts.backends.context import derive_seed
from asynctts.backends.policy import encode_completions
from asynctts.backends.templates import PolicyPrompt

from harness import add_output_argument, write_report

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def load_launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asynctts_launch", ROOT / "servers" / "launch.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load servers/launch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def problems(count: int) -> list[tuple[str, str]]:
    return [
        (f"p{i}", f"What is {17 + 7 * i} + {28 + 5 * i}? Then multiply the result by {i + 2}.")
        for i in range(count)
    ]


def metrics(root_url: str) -> dict[str, float]:
    """Sums of vLLM's Prometheus counters and gauges by metric name (labels summed over)."""
    with urllib.request.urlopen(root_url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def counter(values: dict[str, float], name: str) -> float:
    """A counter by its name with or without the `_total` suffix vLLM versions differ on."""
    return values.get(name + "_total", values.get(name, 0.0))


def bare_bodies(
    policy: Endpoint, sampling: Sampling, items: list[tuple[str, str]], n: int
) -> list[dict[str, Any]]:
    """What `PolicyClient` sends for branch g of each problem (a fork of the root, one sample)."""
    prompt = PolicyPrompt.for_endpoint(policy)
    bodies = []
    for pid, problem in items:
        ids = prompt.token_ids(problem, DEFAULT_SYSTEM_PROMPT, ())
        text: str | list[int] = (
            ids if ids is not None else prompt.render(problem, DEFAULT_SYSTEM_PROMPT, "")
        )
        for g in range(n):
            bodies.append(
                encode_completions(
                    model=policy.model,
                    prompt=text,
                    sampling=sampling,
                    n=1,
                    to_end=True,
                    seed=derive_seed(SEED, pid, (g,)),
                )
            )
    return bodies


async def run_bare(policy: Endpoint, bodies: list[dict[str, Any]], c: int) -> dict[str, float]:
    queue = iter(bodies)
    url = policy.root_url + "/v1/completions"
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(
                    url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as reply:
                    raw = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"bare client: HTTP {reply.status}: {raw[:300]!r}")
                orjson.loads(raw)

        wall, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            for _ in range(c):
                tg.create_task(worker())
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


async def run_solve_many(
    policy: Endpoint, sampling: Sampling, items: list[tuple[str, str]], n: int
) -> dict[str, float]:
    async with Solver(policy=policy, sampling=sampling) as solver:
        wall, cpu = time.perf_counter(), time.process_time()
        async for solution in solver.solve_many(
            items,
            strategy=MajorityVote(per_request=1),
            n=n,
            seed=SEED,
            max_problems_in_flight=len(items),
        ):
            if not solution.ok or solution.lost:
                raise RuntimeError(f"{solution.problem_id}: {solution.error or solution.lost[:1]}")
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


async def run_beam_search(
    policy: Endpoint, prm: Endpoint, sampling: Sampling, items: list[tuple[str, str]], depth: int
) -> dict[str, Any]:
    async with Solver(policy=policy, prm=prm, sampling=sampling) as solver:
        wall = time.perf_counter()
        answers = {}
        async for solution in solver.solve_many(
            items, strategy=BeamSearch(width=4, max_depth=depth), n=8, seed=SEED
        ):
            answers[solution.problem_id] = solution.answer
        return {"wall_s": time.perf_counter() - wall, "answers": answers}


def throughput(
    name: str,
    round_: int,
    policy: Endpoint,
    sampling: Sampling,
    items: list[tuple[str, str]],
    bodies: list[dict[str, Any]],
    n: int,
    c: int,
) -> dict[str, Any]:
    before = metrics(policy.root_url)
    if name == "bare":
        cell = asyncio.run(run_bare(policy, bodies, c))
    else:
        cell = asyncio.run(run_solve_many(policy, sampling, items, n))
    after = metrics(policy.root_url)
    tokens = counter(after, "vllm:generation_tokens") - counter(before, "vllm:generation_tokens")
    samples = len(bodies)
    row = {
        "part": "throughput",
        "client": name,
        "round": round_,
        "concurrency": c,
        "samples": samples,
        "generated_tokens": tokens,
        "samples_per_s": samples / cell["wall_s"],
        "tokens_per_s": tokens / cell["wall_s"],
        "client_cpu_ms_per_sample": cell["cpu_s"] / samples * 1e3,
        **cell,
    }
    print(f"round {round_} {name:>10}: {cell['wall_s']:.1f} s, {row['tokens_per_s']:.1f} tokens/s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the two clients")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--beam-problems", type=int, default=4)
    parser.add_argument("--beam-depth", type=int, default=5)
    add_output_argument(parser, "vllm_cpu")
    args = parser.parse_args()
    quiet_logs()
    launch = load_launcher()
    specs = launch.cpu_profile(python=launch.VLLM_PYTHON, say=print, policy_port=0, prm_port=0)
    items = problems(args.problems)
    sampling = Sampling(max_tokens=args.max_tokens)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as run_dir,
        launch.running(specs, run_dir=Path(run_dir), say=print) as servers,
    ):
        config = launch.endpoints_config(servers)
        policy = Endpoint(**config["policy"], max_in_flight=args.concurrency)
        prm = Endpoint(**config["prm"], max_in_flight=args.concurrency)
        bodies = bare_bodies(policy, sampling, items, args.n)
        clients = ("bare", "solve_many")
        for round_ in range(args.repeats):
            # alternate the order: a shared machine drifts within a round
            for name in clients if round_ % 2 == 0 else clients[::-1]:
                rows.append(
                    throughput(
                        name, round_, policy, sampling, items, bodies, args.n, args.concurrency
                    )
                )

        roles = {"policy": servers[0], "prm": servers[1]}
        cache_before = {role: metrics(server.root_url) for role, server in roles.items()}
        beam = asyncio.run(
            run_beam_search(policy, prm, sampling, items[: args.beam_problems], args.beam_depth)
        )
        for role, server in roles.items():
            now = metrics(server.root_url)
            queries = counter(now, "vllm:prefix_cache_queries") - counter(
                cache_before[role], "vllm:prefix_cache_queries"
            )
            hits = counter(now, "vllm:prefix_cache_hits") - counter(
                cache_before[role], "vllm:prefix_cache_hits"
            )
            rows.append(
                {
                    "part": "beam_search_prefix_cache",
                    "server": role,
                    "problems": args.beam_problems,
                    "wall_s": beam["wall_s"],
                    "prefix_cache_queries": queries,
                    "prefix_cache_hits": hits,
                    "hit_rate": hits / queries if queries else None,
                }
            )

    runs = [row for row in rows if row["part"] == "throughput"]
    print()
    print(
        f"SmolLM2-135M-Instruct on vLLM (CPU): {len(bodies)} samples of <= "
        f"{args.max_tokens} tokens, {args.concurrency} in flight, {args.repeats} rounds"
    )
    print(
        f"{'round':>5} | {'client':>10} | {'wall s':>6} | {'samples/s':>9} | {'tokens':>6} | "
        f"{'tokens/s':>8} | client CPU ms/sample"
    )
    for row in runs:
        print(
            f"{row['round']:>5} | {row['client']:>10} | {row['wall_s']:>6.1f} | "
            f"{row['samples_per_s']:>9.2f} | {row['generated_tokens']:>6.0f} | "
            f"{row['tokens_per_s']:>8.1f} | {row['client_cpu_ms_per_sample']:>8.2f}"
        )
    ratios = [
        next(r for r in runs if r["round"] == i and r["client"] == "solve_many")["samples_per_s"]
        / next(r for r in runs if r["round"] == i and r["client"] == "bare")["samples_per_s"]
        for i in range(args.repeats)
    ]
    summary = {"part": "throughput_ratio", "paired_ratios": ratios}
    summary["median_ratio"] = statistics.median(ratios)
    rows.append(summary)
    print(
        f"solve_many / bare, samples/s, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
        f" (median {statistics.median(ratios):.2f})"
    )
    print()
    print(
        f"beam search, n=8, width 4, depth <= {args.beam_depth}, {args.beam_problems} "
        "problems: prefix cache"
    )
    for row in (r for r in rows if r["part"] == "beam_search_prefix_cache"):
        rate = "n/a" if row["hit_rate"] is None else f"{row['hit_rate']:.1%}"
        print(
            f"{row['server']:>7}: {row['prefix_cache_hits']:.0f} of "
            f"{row['prefix_cache_queries']:.0f} prompt tokens hit ({rate})"
        )
    write_report(
        args.output,
        "vllm_cpu",
        {
            "problems": args.problems,
            "n": args.n,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "max_tokens": args.max_tokens,
            "beam_problems": args.beam_problems,
            "beam_depth": args.beam_depth,
        },
        {"aiohttp": aiohttp.__version__},
        rows,
    )


if __name__ == "__main__":
    main()
