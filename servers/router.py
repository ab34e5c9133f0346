"""vllm-router in front of the replicas of a role: which servers to start and where the routers
go (`fleet`), the checks on remote workers, starting the routers and reading their view of
the workers. The module docstring of launch.py says why consistent_hash is the default and
what the router flags are for."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from supervise import (
    Launched,
    LaunchError,
    Say,
    check_port_free,
    cmdline,
    free_port,
    spawn,
    start_all,
    url_host,
)
from vllm_server import ServerSpec, smoke_test

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
class Router(Launched):
    """A started vllm-router."""

    spec: RouterSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served(self) -> ServerSpec:
        return self.spec.upstream

    @property
    def port(self) -> int:
        return self.spec.port

    def address(self) -> tuple[str, int]:
        return self.spec.host, self.spec.port

    def runs_as_ours(self) -> bool:
        """It renames its process once running: either name."""
        line = cmdline(self.pid)
        return line.startswith(ROUTER_TITLE) or b"vllm-router" in line

    def smoke_test(self) -> None:
        smoke_test(self)


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
            roots = tuple(f"http://{url_host(r.host)}:{r.port}" for r in group)
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
    run_dir: Path,
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

    def start(spec: RouterSpec) -> tuple[Router, str]:
        process, log_path = spawn(
            router_command(spec, router), name=spec.name, run_dir=run_dir, env=dict(os.environ)
        )
        started = Router(
            spec=spec, pid=process.pid, log_path=log_path, started_s=time.time(), process=process
        )
        return started, (
            f"{spec.name}: {spec.policy} over {len(spec.workers)} workers on "
            f"{spec.host}:{spec.port}, metrics on :{spec.metrics_port} (log: {log_path})"
        )

    return start_all(specs, start, timeout_s=timeout_s, say=say)


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
