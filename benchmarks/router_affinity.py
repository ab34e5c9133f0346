"""Replicas behind vllm-router: does keeping a problem on one replica pay? Beam search over
MATH-500 problems through a router per role in front of two replicas each, with the
affinity policy (consistent_hash on asynctts's X-Session-ID header) against round_robin.

For each router policy and each kind of PRM, a fresh fleet (cold prefix caches) serves one
`solve_many` of beam search (n=8, width 4). Reported per role: vLLM's prefix-cache hit rate
of prompt tokens (the rise of `vllm:prefix_cache_hits` over `vllm:prefix_cache_queries`
during the run, summed over the role's replicas, each read from its own /metrics: the
router's /metrics shows one worker only), each replica's share of the prompt tokens, the
router's retries, and the wall time of the search.

    python benchmarks/router_affinity.py            # 2 real vLLM CPU replicas per role
    python benchmarks/router_affinity.py --sim      # simulated servers (seconds)
    python benchmarks/router_affinity.py --policies consistent_hash sticky_least_loaded round_robin

The first fleet's wall time includes the client's warm-up (in sim mode ~2 s for the policy
measured first, ~1 s second, whichever it is): pass the policies in both orders.

Real mode serves the tiny models of the vLLM tests (tests/vllm/build_models.py builds them into
the model cache once): the tiny policy, and as the PRM either the tiny
`Qwen2ForProcessRewardModel` (pooling, `--runner pooling`) or the tiny policy judging steps by
P("+") (logprob). Needs `.venv-vllm` with vllm-router (`make venv-vllm`); four vLLM servers at a
time, ~1.5 GiB each.

Sim mode runs `SimulatedServer`s in their own processes (H200 latency shapes, scaled) behind
the same routers. They simulate a prefix cache, so the hit rates are there; their PRM is
pooling only, so the logprob rows are absent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
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
PRM_KINDS = ("pooling", "logprob")
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


def real_specs(models: Path, prm_kind: str) -> list[Any]:
    """The tiny policy and a PRM of `prm_kind`, as the vLLM tests serve them (free ports)."""
    flags = launch.cpu_flags(kv_cache_mib=128, max_model_len=2048)
    policy = launch.ServerSpec(
        role="policy",
        model=str(models / "policy"),
        served_name="tiny-policy",
        port=0,
        vllm_args=flags,
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


@contextlib.contextmanager
def real_fleet(
    models: Path, prm_kind: str, router_policy: str, run_dir: Path
) -> Iterator[tuple[dict[str, Any], dict[str, list[str]], list[Any]]]:
    """Two vLLM replicas per role behind a router each: (endpoints config, replica root URLs
    by role, routers)."""
    servers, routers = launch.fleet(
        real_specs(models, prm_kind),
        replicas=2,
        replica_port=0,
        metrics_port=0,
        policy=router_policy,
    )
    with launch.running(servers, routers=routers, run_dir=run_dir, say=print) as started:
        fronts = [s for s in started if isinstance(s, launch.Router)]
        yield (
            launch.endpoints_config(started),
            {r.spec.role: list(r.spec.workers) for r in fronts},
            fronts,
        )


@contextlib.contextmanager
def sim_fleet(
    items: list[dict[str, Any]], router_policy: str, run_dir: Path, time_scale: float
) -> Iterator[tuple[dict[str, Any], dict[str, list[str]], list[Any]]]:
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
            yield launch.endpoints_config(fronts), workers, fronts
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
    fleet: Any,
    items: list[dict[str, Any]],
    router_policy: str,
    prm_kind: str,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    config, workers, fronts = fleet
    before = {url: metrics(url) for urls in workers.values() for url in urls}
    wall = asyncio.run(beam_search(config, items, args.n, args.depth, args.max_tokens))
    after = {url: metrics(url) for urls in workers.values() for url in urls}
    rows = []
    for role, urls in workers.items():
        front = next(f for f in fronts if f.spec.role == role)
        router_metrics = metrics(f"http://127.0.0.1:{front.spec.metrics_port}")
        deltas = []
        for url in urls:
            rise = {}
            for name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
                now, then = counter(after[url], name), counter(before[url], name)
                rise[name] = None if now is None or then is None else now - then
            deltas.append(rise)
        queries = [d["vllm:prefix_cache_queries"] for d in deltas]
        hits = [d["vllm:prefix_cache_hits"] for d in deltas]
        present = all(v is not None for v in (*queries, *hits))
        total_queries = sum(q or 0.0 for q in queries)
        total_hits = sum(h or 0.0 for h in hits)
        rows.append(
            {
                "router_policy": router_policy,
                "prm_kind": prm_kind,
                "role": role,
                "wall_s": wall,
                "prompt_tokens": total_queries if present else None,
                "cached_tokens": total_hits if present else None,
                "hit_rate": total_hits / total_queries if present and total_queries else None,
                "share_per_replica": [
                    (q or 0.0) / total_queries if present and total_queries else None
                    for q in queries
                ],
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
        choices=ROUTER_POLICIES + OTHER_POLICIES,
        default=ROUTER_POLICIES,
        help="router policies to measure, each with a fresh fleet",
    )
    parser.add_argument("--prm-kinds", nargs="+", choices=PRM_KINDS, default=PRM_KINDS)
    parser.add_argument("--time-scale", type=float, default=1.0, help="sim latency multiplier")
    add_output_argument(parser, "router_affinity")
    args = parser.parse_args()
    if args.sim and args.output == Path(__file__).parent / "results" / "router_affinity.json":
        args.output = args.output.with_name("router_affinity_sim.json")
    quiet_logs()
    items = problems(args.problems)
    kinds = ["pooling"] if args.sim else list(args.prm_kinds)
    models = None if args.sim else tiny_models(launch.VLLM_PYTHON)
    rows: list[dict[str, Any]] = []
    for prm_kind in kinds:
        for router_policy in args.policies:
            print(f"--- {router_policy}, {prm_kind} PRM")
            with tempfile.TemporaryDirectory() as run_dir:
                fleet = (
                    sim_fleet(items, router_policy, Path(run_dir), args.time_scale)
                    if models is None
                    else real_fleet(models, prm_kind, router_policy, Path(run_dir))
                )
                with fleet as running_fleet:
                    rows += measure(running_fleet, items, router_policy, prm_kind, args)
    if args.sim and "logprob" in args.prm_kinds:
        print("logprob PRM: absent in sim mode (the simulated server scores by pooling only)")
    print()
    print(
        f"beam search, n={args.n}, width 4, depth <= {args.depth}, {args.problems} problems, "
        f"2 replicas per role ({'simulated' if args.sim else 'vLLM CPU'})"
    )
    print(
        f"{'router policy':>19} | {'PRM':>7} | {'role':>6} | {'wall s':>6} | {'hit rate':>8} | "
        f"{'cached / prompt tokens':>22} | {'replica shares':>14} | router retries"
    )
    for row in rows:
        rate = "absent" if row["hit_rate"] is None else f"{row['hit_rate']:.1%}"
        tokens = (
            "absent"
            if row["prompt_tokens"] is None
            else f"{row['cached_tokens']:.0f} / {row['prompt_tokens']:.0f}"
        )
        shares = "/".join("-" if s is None else f"{s:.2f}" for s in row["share_per_replica"])
        print(
            f"{row['router_policy']:>19} | {row['prm_kind']:>7} | {row['role']:>6} | "
            f"{row['wall_s']:>6.1f} | {rate:>8} | {tokens:>22} | {shares:>14} | "
            f"{row['router_retries']:.0f}"
        )
    for prm_kind in kinds:
        rates = {
            (r["router_policy"], r["role"]): r["hit_rate"]
            for r in rows
            if r["prm_kind"] == prm_kind
        }
        for role in ("policy", "prm"):
            sticky, spread = rates.get(("consistent_hash", role)), rates.get(("round_robin", role))
            if sticky is not None and spread:
                print(
                    f"{prm_kind} PRM run, {role}: consistent_hash / round_robin hit rate = "
                    f"{sticky / spread:.2f}x"
                )
    write_report(
        args.output,
        "router_affinity",
        {
            "mode": "sim" if args.sim else "vllm_cpu",
            "problems": args.problems,
            "n": args.n,
            "width": 4,
            "depth": args.depth,
            "max_tokens": args.max_tokens,
            "replicas_per_role": 2,
            "time_scale": args.time_scale if args.sim else None,
        },
        {"vllm-router": launch.ROUTER_VERSION},
        rows,
    )


if __name__ == "__main__":
    main()
