"""Replicas behind vllm-router: does keeping a problem on one replica pay? Beam search over
MATH-500 problems through a router per role in front of two replicas each, with the
affinity policy (consistent_hash on asynctts's X-Session-ID header) against round_robin.

For each setting (KV cache size and block size of the policy replicas, PRM kind, router
policy) a fresh fleet (cold prefix caches) serves one `solve_many` of beam search (n=8,
width 4). Reported per role: vLLM's prefix-cache hit rate of prompt tokens (the rise of
`vllm:prefix_cache_hits` over `vllm:prefix_cache_queries` during the run, summed over the
role's replicas, each read from its own /metrics: the router's /metrics shows one worker
only), the prompt tokens the replicas took in (`vllm:prompt_tokens`: a pooling runner counts
these but no cache queries), the CPU seconds of the replicas' process groups, each replica's
share of the prompt tokens, the router's retries, and the wall time of the search.

    python benchmarks/router_affinity.py            # 2 real vLLM CPU replicas per role
    python benchmarks/router_affinity.py --kv-cache-mib 128 8 --block-size 32 128
    python benchmarks/router_affinity.py --model smollm2 --prm-kinds logprob --kv-cache-mib 512 \
        --problems 12 --depth 5                     # the demo model: longer steps
    python benchmarks/router_affinity.py --sim      # simulated servers (seconds)
    python benchmarks/router_affinity.py --policies consistent_hash sticky_least_loaded round_robin

The first fleet's wall time includes the client's warm-up (in sim mode ~2 s for the policy
measured first, ~1 s second, whichever it is): pass the policies in both orders.

Real mode serves the tiny models of the vLLM tests by default (tests/vllm/build_models.py
builds them into the model cache once): the tiny policy, and as the PRM either the tiny
`Qwen2ForProcessRewardModel` (pooling, `--runner pooling`) or the tiny policy judging steps by
P("+") (logprob); both have the same shape, so their CPU seconds compare the two ways of
scoring. `--model smollm2` serves the CPU profile's SmolLM2-135M-Instruct and its logprob
judge instead. Needs `.venv-vllm` with vllm-router (`make venv-vllm`); four vLLM servers at
a time, ~1.5 GiB each (SmolLM2: ~2 GiB).

Sim mode runs `SimulatedServer`s in their own processes (H200 latency shapes, scaled) behind
the same routers. They simulate a prefix cache, so the hit rates are there; their PRM is
pooling only, so the logprob rows are absent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from asynctts import BeamSearch, Endpoint, Sampling, Solver
from asynctts.eval.data import packaged_math500
from asynctts.testing import LatencyModel, SimProblem

from harness import (
    SimServerProcess,
    add_output_argument,
    load_launcher,
    metrics,
    quiet_logs,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "tests" / "vllm" / "build_models.py"
SEED = 0
ROUTER_POLICIES = ("consistent_hash", "round_robin")  # measured by default
# also follows X-Session-ID, placing each new problem on the replica with the fewest: an
# answer to consistent_hash's uneven split of few problems
OTHER_POLICIES = ("sticky_least_loaded", "cache_aware")
# not a router policy: the policy as one vLLM server with two engines behind vLLM's own
# data-parallel balancer (it places each request on the engine with the least load)
DATA_PARALLEL = "vllm_data_parallel"
PRM_KINDS = ("pooling", "logprob")
MAX_MODEL_LEN = 1024  # the tiny models' longest beam-search prompt here is ~600 tokens
PRM_KV_CACHE_MIB = 128  # 65k tokens: the PRM's cache is not what --kv-cache-mib varies
SMOLLM2_MAX_MODEL_LEN = 2048
SMOLLM2_JUDGE_KV_CACHE_MIB = 512
# KV cache per token in float32 (K and V): the tiny models (2 layers, hidden 128), and
# SmolLM2-135M (30 layers, 3 KV heads of 64)
KV_BYTES_PER_TOKEN = {"tiny": 2 * 2 * 128 * 4, "smollm2": 2 * 30 * 3 * 64 * 4}
POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"


launch = load_launcher()


def problems(count: int) -> list[dict[str, Any]]:
    rows = packaged_math500().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in rows[:count]]


def counter(values: dict[str, float], name: str) -> float | None:
    """A counter by its name with or without the `_total` suffix; None when absent."""
    return values.get(name + "_total", values.get(name))


# --- the fleets ------------------------------------------------------------------------------


def tiny_models(python: Path) -> Path:
    """The vLLM tests' tiny models, built into the model cache when missing."""
    out: Path = launch.model_cache_dir() / f"tiny-{launch.content_key(BUILD_SCRIPT)}"
    if not (out / "prm" / "step_tag.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the tiny models into {out}")
        subprocess.run([str(python), str(BUILD_SCRIPT), str(out)], check=True)
    return out


def smollm2_specs(kv_cache_mib: int, block_size: int) -> list[Any]:
    """The CPU profile's servers (SmolLM2-135M-Instruct, and itself as a logprob judge) on free
    ports: the policy with `kv_cache_mib` of KV cache, the judge with ample."""
    policy, judge = launch.cpu_profile(
        python=launch.VLLM_PYTHON,
        say=print,
        policy_port=0,
        prm_port=0,
        kv_cache_mib=kv_cache_mib,
        max_model_len=SMOLLM2_MAX_MODEL_LEN,
    )
    flags = launch.cpu_flags(
        kv_cache_mib=kv_cache_mib, max_model_len=SMOLLM2_MAX_MODEL_LEN, block_size=block_size
    )
    return [
        replace(policy, vllm_args=flags),
        replace(
            judge,
            vllm_args=launch.cpu_flags(
                kv_cache_mib=SMOLLM2_JUDGE_KV_CACHE_MIB, max_model_len=SMOLLM2_MAX_MODEL_LEN
            ),
        ),
    ]


def tiny_specs(models: Path, prm_kind: str, kv_cache_mib: int, block_size: int) -> list[Any]:
    """The tiny policy with `kv_cache_mib` of KV cache and a PRM of `prm_kind` with ample, as
    the vLLM tests serve them (free ports)."""
    flags = launch.cpu_flags(kv_cache_mib=PRM_KV_CACHE_MIB, max_model_len=MAX_MODEL_LEN)
    policy = launch.ServerSpec(
        role="policy",
        model=str(models / "policy"),
        served_name="tiny-policy",
        port=0,
        vllm_args=launch.cpu_flags(
            kv_cache_mib=kv_cache_mib, max_model_len=MAX_MODEL_LEN, block_size=block_size
        ),
        endpoint=(("tokenizer", str(models / "policy")),),
        memory_gib=1.5,
    )
    if prm_kind == "logprob":
        prm = launch.ServerSpec(
            role="prm",
            model=str(models / "policy"),
            served_name="tiny-judge",
            port=0,
            vllm_args=flags,
            check="logprob",
            endpoint=(("tokenizer", str(models / "policy")), ("scoring", "logprob")),
            memory_gib=1.5,
        )
    else:
        tag = json.loads((models / "prm" / "step_tag.json").read_text())
        prm = launch.ServerSpec(
            role="prm",
            model=str(models / "prm"),
            served_name="tiny-prm",
            port=0,
            vllm_args=(
                *flags,
                "--runner",
                "pooling",
                "--pooler-config",
                json.dumps({"step_tag_id": int(tag["id"])}),
            ),
            check="pooling",
            endpoint=(
                ("tokenizer", str(models / "prm")),
                ("scoring", "pooling"),
                ("step_tag", tag["step_tag"]),
            ),
            memory_gib=1.5,
        )
    return [policy, prm]


@dataclass
class Fleet:
    """What a measurement reads: the endpoints config (the routers), each role's replicas'
    root URLs, the routers, and each role's replicas' PIDs (real vLLM only)."""

    config: dict[str, Any]
    workers: dict[str, list[str]]
    fronts: list[Any]
    pids: dict[str, list[int]] = field(default_factory=dict)


def cpu_seconds(servers: list[int]) -> float:
    """CPU time used so far by the servers and all they spawned (their process groups)."""
    ticks = 0
    for server in servers:
        for pid in launch.group_members(server):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def real_fleet(
    models: Path | None,
    prm_kind: str,
    router_policy: str,
    run_dir: Path,
    kv_cache_mib: int,
    block_size: int,
) -> Iterator[Fleet]:
    """Two vLLM replicas per role behind a router each; with DATA_PARALLEL for the router
    policy, the policy is one vLLM server with two engines (--data-parallel-size 2, vLLM's own
    balancer) and no router, the PRM as in the other runs (behind consistent_hash)."""
    specs = (
        tiny_specs(models, prm_kind, kv_cache_mib, block_size)
        if models is not None
        else smollm2_specs(kv_cache_mib, block_size)
    )
    data_parallel = router_policy == DATA_PARALLEL
    policy = next(spec for spec in specs if spec.role == "policy")
    servers, routers = launch.fleet(
        [spec for spec in specs if not (data_parallel and spec.role == "policy")],
        replicas=2,
        replica_port=0,
        metrics_port=0,
        policy="consistent_hash" if data_parallel else router_policy,
    )
    if data_parallel:
        servers.append(
            replace(
                policy,
                vllm_args=(*policy.vllm_args, "--data-parallel-size", "2"),
                memory_gib=2 * policy.memory_gib,
            )
        )
    with launch.running(servers, routers=routers, run_dir=run_dir, say=print) as started:
        fronts = [s for s in started if isinstance(s, launch.Router)]
        workers = {r.spec.role: list(r.spec.workers) for r in fronts}
        pids: dict[str, list[int]] = {}
        for server in started:
            if isinstance(server, launch.Server):
                pids.setdefault(server.spec.role, []).append(server.pid)
                if server.spec.replica is None:
                    workers[server.spec.role] = [server.root_url]
        yield Fleet(launch.endpoints_config(started), workers, fronts, pids)


@contextlib.contextmanager
def sim_fleet(
    items: list[dict[str, Any]], router_policy: str, run_dir: Path, time_scale: float
) -> Iterator[Fleet]:
    """Two simulated replicas per role (own processes) behind a router each."""
    sim_problems = {r["problem"]: SimProblem(answer=r["answer"]) for r in items}
    roles = {
        "policy": ("sim-policy", LatencyModel.h200_1b(time_scale=time_scale)),
        "prm": ("sim-prm", LatencyModel.h200_8b_prm(time_scale=time_scale)),
    }
    with contextlib.ExitStack() as stack:
        workers: dict[str, list[str]] = {}
        specs = []
        for role, (name, latency) in roles.items():
            replicas = [
                stack.enter_context(
                    SimServerProcess(model=name, problems=sim_problems, latency=latency, seed=i)
                )
                for i in range(2)
            ]
            workers[role] = [r.url for r in replicas]
            fields: tuple[tuple[str, Any], ...] = (("prompt_format", POLICY_FORMAT),)
            if role == "prm":
                fields = (("prompt_format", PRM_FORMAT), ("scoring", "pooling"))
            specs.append(
                launch.ServerSpec(
                    role=role,
                    model="sim",
                    served_name=name,
                    port=0,
                    check="pooling" if role == "prm" else "generate",
                    endpoint=fields,
                )
            )
        _, router_specs = launch.fleet(
            specs,
            workers=workers,
            metrics_port=0,
            policy=router_policy,
        )
        fronts = launch.start_routers(
            router_specs, run_dir=run_dir, router=launch.router_executable(launch.VLLM_PYTHON)
        )
        try:
            yield Fleet(launch.endpoints_config(fronts), workers, fronts)
        finally:
            launch.stop_servers(fronts, say=print)


# --- one measurement --------------------------------------------------------------------------


async def beam_search(
    config: dict[str, Any], items: list[dict[str, Any]], n: int, depth: int, max_tokens: int
) -> float:
    policy = Endpoint(**config["policy"])
    prm = Endpoint(**config["prm"])
    work = [(f"p{i}", row["problem"]) for i, row in enumerate(items)]
    async with Solver(policy=policy, prm=prm, sampling=Sampling(max_tokens=max_tokens)) as solver:
        started = time.perf_counter()
        solutions = [
            s
            async for s in solver.solve_many(
                work, strategy=BeamSearch(width=4, max_depth=depth), n=n, seed=SEED
            )
        ]
        wall = time.perf_counter() - started
    failed = [s.problem_id for s in solutions if not s.ok]
    if failed:
        raise RuntimeError(f"problems failed: {failed}")
    return wall


def measure(
    fleet: Fleet,
    items: list[dict[str, Any]],
    labels: dict[str, Any],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    urls = [url for role_urls in fleet.workers.values() for url in role_urls]
    before = {url: metrics(url) for url in urls}
    cpu_before = {role: cpu_seconds(pids) for role, pids in fleet.pids.items()}
    wall = asyncio.run(beam_search(fleet.config, items, args.n, args.depth, args.max_tokens))
    cpu_after = {role: cpu_seconds(pids) for role, pids in fleet.pids.items()}
    after = {url: metrics(url) for url in urls}

    def rise(url: str, name: str) -> float | None:
        now, then = counter(after[url], name), counter(before[url], name)
        return None if now is None or then is None else now - then

    rows = []
    for role, role_urls in fleet.workers.items():
        front = next((f for f in fleet.fronts if f.spec.role == role), None)
        router_metrics = (
            {} if front is None else metrics(f"http://127.0.0.1:{front.spec.metrics_port}")
        )
        queries = [rise(url, "vllm:prefix_cache_queries") for url in role_urls]
        hits = [rise(url, "vllm:prefix_cache_hits") for url in role_urls]
        read = [rise(url, "vllm:prompt_tokens") for url in role_urls]
        present = all(v is not None for v in (*queries, *hits))
        total_queries = sum(q or 0.0 for q in queries)
        total_hits = sum(h or 0.0 for h in hits)
        rows.append(
            {
                **labels,
                "role": role,
                "wall_s": wall,
                "prompt_tokens": total_queries if present else None,
                "cached_tokens": total_hits if present else None,
                "hit_rate": total_hits / total_queries if present and total_queries else None,
                "share_per_replica": [
                    (q or 0.0) / total_queries if present and total_queries else None
                    for q in queries
                ],
                # every prompt token the role's replicas took in (a pooling runner counts
                # these but no prefix-cache queries)
                "prompt_tokens_read": sum(r or 0.0 for r in read),
                "cpu_s": cpu_after[role] - cpu_before[role] if role in cpu_after else None,
                "router_retries": counter(router_metrics, "vllm_router_retries") or 0.0,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", action="store_true", help="simulated servers, not vLLM")
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--n", type=int, default=8, help="beam search samples per problem")
    parser.add_argument("--depth", type=int, default=5, help="beam search steps at most")
    parser.add_argument("--max-tokens", type=int, default=64, help="per step")
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=(*ROUTER_POLICIES, *OTHER_POLICIES, DATA_PARALLEL),
        default=ROUTER_POLICIES,
        help=f"router policies to measure, each with a fresh fleet ({DATA_PARALLEL}: the "
        "policy as one vLLM server with --data-parallel-size 2, no router)",
    )
    parser.add_argument("--prm-kinds", nargs="+", choices=PRM_KINDS, default=PRM_KINDS)
    parser.add_argument(
        "--model",
        choices=tuple(KV_BYTES_PER_TOKEN),
        default="tiny",
        help="real mode's policy: the vLLM tests' tiny model (short solutions), or the CPU "
        "profile's SmolLM2-135M-Instruct (longer steps; its own logprob judge as the PRM)",
    )
    parser.add_argument(
        "--kv-cache-mib",
        nargs="+",
        type=int,
        default=[128],
        help="KV cache per policy replica, one fleet per size (the tiny model: 512 tokens a MiB)",
    )
    parser.add_argument(
        "--block-size",
        nargs="+",
        type=int,
        default=[32],
        help="the policy replicas' KV block size, one fleet per size: vLLM caches prefixes "
        "in whole blocks; its GPU default is 16, its CPU default 128, and the CPU's attention "
        "takes multiples of 32 only",
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="sim latency multiplier")
    add_output_argument(parser, "router_affinity")
    args = parser.parse_args()
    if args.sim and args.output == Path(__file__).parent / "results" / "router_affinity.json":
        args.output = args.output.with_name("router_affinity_sim.json")
    quiet_logs()
    items = problems(args.problems)
    kinds = ["pooling"] if args.sim else list(args.prm_kinds)
    if args.sim and DATA_PARALLEL in args.policies:
        parser.error(f"{DATA_PARALLEL}: vLLM's own data parallelism needs real mode")
    if not args.sim and args.model == "smollm2" and kinds != ["logprob"]:
        parser.error("--model smollm2 has a logprob judge only: pass --prm-kinds logprob")
    caches: list[tuple[int | None, int | None]] = (
        [(None, None)] if args.sim else list(itertools.product(args.kv_cache_mib, args.block_size))
    )
    models = None if args.sim or args.model != "tiny" else tiny_models(launch.VLLM_PYTHON)
    rows: list[dict[str, Any]] = []
    for (kv_cache_mib, block_size), prm_kind, router_policy in itertools.product(
        caches, kinds, args.policies
    ):
        print(
            f"--- {router_policy}, {prm_kind} PRM, KV cache {kv_cache_mib} MiB, "
            f"block size {block_size}"
        )
        labels = {
            "router_policy": router_policy,
            "prm_kind": prm_kind,
            "kv_cache_mib": kv_cache_mib,
            "kv_cache_tokens": None
            if kv_cache_mib is None
            else kv_cache_mib * 2**20 // KV_BYTES_PER_TOKEN[args.model],
            "block_size": block_size,
        }
        with tempfile.TemporaryDirectory() as run_dir:
            fleet = (
                real_fleet(models, prm_kind, router_policy, Path(run_dir), kv_cache_mib, block_size)
                if not args.sim and kv_cache_mib is not None and block_size is not None
                else sim_fleet(items, router_policy, Path(run_dir), args.time_scale)
            )
            with fleet as running_fleet:
                rows += measure(running_fleet, items, labels, args)
    if args.sim and "logprob" in args.prm_kinds:
        print("logprob PRM: absent in sim mode (the simulated server scores by pooling only)")
    print_table(rows, args)
    write_report(
        args.output,
        "router_affinity",
        {
            "mode": "sim" if args.sim else "vllm_cpu",
            "model": None if args.sim else args.model,
            "problems": args.problems,
            "n": args.n,
            "width": 4,
            "depth": args.depth,
            "max_tokens": args.max_tokens,
            "replicas_per_role": 2,
            "max_model_len": None if args.sim else MAX_MODEL_LEN,
            "time_scale": args.time_scale if args.sim else None,
        },
        {"vllm-router": launch.ROUTER_VERSION},
        rows,
    )


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"beam search, n={args.n}, width 4, depth <= {args.depth}, {args.problems} problems, "
        f"2 replicas per role ({'simulated' if args.sim else f'vLLM CPU, {args.model} model'})"
    )
    print(
        f"{'KV cache':>14} | {'block':>5} | {'router policy':>19} | {'PRM':>7} | {'role':>6} | "
        f"{'wall s':>6} | {'hit rate':>8} | {'cached / prompt tokens':>22} | {'tokens read':>11} | "
        f"{'CPU s':>6} | {'replica shares':>14} | router retries"
    )
    for row in rows:
        cache = (
            "-"
            if row["kv_cache_mib"] is None
            else (f"{row['kv_cache_mib']} MiB ({row['kv_cache_tokens'] // 1000}k)")
        )
        rate = "absent" if row["hit_rate"] is None else f"{row['hit_rate']:.1%}"
        tokens = (
            "absent"
            if row["prompt_tokens"] is None
            else f"{row['cached_tokens']:.0f} / {row['prompt_tokens']:.0f}"
        )
        cpu = "-" if row["cpu_s"] is None else f"{row['cpu_s']:.0f}"
        shares = "/".join("-" if s is None else f"{s:.2f}" for s in row["share_per_replica"])
        print(
            f"{cache:>14} | {row['block_size'] or '-':>5} | {row['router_policy']:>19} | "
            f"{row['prm_kind']:>7} | {row['role']:>6} | {row['wall_s']:>6.1f} | {rate:>8} | "
            f"{tokens:>22} | {row['prompt_tokens_read']:>11.0f} | {cpu:>6} | {shares:>14} | "
            f"{row['router_retries']:.0f}"
        )
    rates = {
        (r["kv_cache_mib"], r["block_size"], r["prm_kind"], r["router_policy"], r["role"]): r[
            "hit_rate"
        ]
        for r in rows
    }
    for (cache, block, prm_kind, policy, role), rate in rates.items():
        spread = rates.get((cache, block, prm_kind, "round_robin", role))
        if policy != "round_robin" and rate is not None and spread:
            print(
                f"KV cache {cache} MiB, block size {block}, {prm_kind} PRM run, {role}: "
                f"{policy} / round_robin hit rate = {rate / spread:.2f}x"
            )


if __name__ == "__main__":
    main()
