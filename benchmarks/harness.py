"""What the benchmarks share: where results go, how a report is written, and a simulated server
in its own process.

Also: loading servers/launch.py as a module (it is a script, not part of the package) and
reading a server's Prometheus /metrics.

A report is one JSON file: the benchmark's name, its settings, the machine, the versions of the
libraries it compares, and its rows. `SimServerProcess` runs a `SimulatedServer` in a spawned
process, so the client's CPU is its own, and reads its counters over a pipe. Benchmarks run as
scripts (`python benchmarks/NAME.py`), so this module is imported by its bare name.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import time
import urllib.request
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import structlog

from asynctts.testing import Fault, SimulatedServer

RESULTS = Path(__file__).parent / "results"


def add_output_argument(parser: argparse.ArgumentParser, benchmark: str) -> None:
    parser.add_argument("--output", type=Path, default=RESULTS / f"{benchmark}.json")


def write_report(
    output: Path,
    benchmark: str,
    settings: dict[str, Any],
    versions: dict[str, str],
    rows: list[dict[str, Any]],
) -> None:
    report = {
        "benchmark": benchmark,
        **settings,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": versions,
        "rows": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


# -- a simulated server in its own process ------------------------------------


def load_launcher() -> ModuleType:
    """servers/launch.py as a module (its `ServerSpec`, `start_servers`, ...)."""
    path = Path(__file__).resolve().parents[1] / "servers" / "launch.py"
    spec = importlib.util.spec_from_file_location("asynctts_launch", path)
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load servers/launch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def metrics(root_url: str) -> dict[str, float]:
    """Sums of a server's Prometheus samples by metric name (labels summed over)."""
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


def quiet_logs() -> None:
    """As an application would run: warnings only, filtered cheaply."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


def _stats_snapshot(server: SimulatedServer) -> dict[str, Any]:
    stats = server.stats
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "clock_s": time.monotonic(),  # CLOCK_MONOTONIC: the same clock in every process
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "routes": dict(stats.routes),
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "peak_concurrent": stats.peak_concurrent,
        "peak_running": stats.peak_running,
        "peak_waiting": stats.peak_waiting,
        "iterations": stats.iterations,
        "busy_s": stats.busy_s,
        "seq_s": stats.seq_s,
        "max_num_seqs": stats.max_num_seqs,
        "prompt_tokens": dict(stats.prompt_tokens),
        "cached_tokens": dict(stats.cached_tokens),
        "completion_tokens": dict(stats.completion_tokens),
    }


def _serve(settings: dict[str, Any], faults: Sequence[dict[str, Any]], conn: Connection) -> None:
    quiet_logs()

    async def main() -> None:
        server = SimulatedServer(**settings)
        for fault in faults:
            server.add_fault(Fault(**fault))
        await server.start()
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stats":
                conn.send(_stats_snapshot(server))
            elif command == "reset":
                server.reset_stats()
                conn.send(_stats_snapshot(server))
            elif command == "restart":  # cold caches, as a restarted vLLM; same port
                await server.stop()
                await server.start()
                server.reset_stats()
                conn.send(_stats_snapshot(server))
            else:
                break
        await server.stop()
        conn.send("stopped")

    asyncio.run(main())


class SimServerProcess:
    """A `SimulatedServer(**settings)` in a spawned process; `stats()` and `reset()` read its
    counters (as a dict, with the process's CPU seconds) over a pipe.

    Use as `with SimServerProcess(model=..., latency=...) as server: server.base_url`.
    """

    def __init__(self, *, faults: Sequence[dict[str, Any]] = (), **settings: Any) -> None:
        settings.setdefault("keep_records", False)
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(settings, list(faults), child), daemon=True
        )
        self.port = 0

    def __enter__(self) -> Self:
        self._process.start()
        self.port = self._conn.recv()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._conn.send("stop")
            if self._conn.poll(10):
                self._conn.recv()
        finally:
            self._process.join(5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        snapshot: dict[str, Any] = self._conn.recv()
        return snapshot

    def reset(self) -> dict[str, Any]:
        """Fresh counters from now on; returns a snapshot taken just after the reset."""
        self._conn.send("reset")
        snapshot: dict[str, Any] = self._conn.recv()
        return snapshot

    def restart(self) -> dict[str, Any]:
        """Stop and start the server (its prefix cache starts cold), then `reset`."""
        self._conn.send("restart")
        snapshot: dict[str, Any] = self._conn.recv()
        return snapshot
