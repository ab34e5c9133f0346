"""The command line of the simulated server: `python -m asynctts.testing.server`.

Rules:
- Runs one `SimulatedServer` in the foreground until SIGINT or SIGTERM, then stops it (requests
  in flight get no response) and exits 0. Logs its URLs once it listens.
- Keeps no per-request records: a long-running server must not grow without bound.
- `--problems` is a JSONL file read by `load_problems`; a bad row is an error naming its line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import orjson
import structlog

from asynctts.testing.latency import LatencyModel
from asynctts.testing.sim_model import (
    PRM_DISCRIMINATION,
    PRM_FOOLED_RATE,
    PRM_PERSISTENCE,
    STEP_CORRELATION,
    SimProblem,
)
from asynctts.testing.wire import is_number

if TYPE_CHECKING:
    from asynctts.testing.server import SimulatedServer

log = structlog.get_logger("asynctts.testing.server")  # it logs as the server it runs


class SimSettings(TypedDict):
    """The simulated model's fitted traits: keyword arguments of `SimModel` and
    `SimulatedServer`."""

    prm_discrimination: float
    prm_fooled_rate: float
    prm_persistence: float
    step_correlation: float


def add_sim_arguments(parser: argparse._ActionsContainer, prefix: str = "") -> None:
    """The simulated model's flags (`--{prefix}prm-discrimination`, ...), defaults the fit's."""
    parser.add_argument(
        f"--{prefix}prm-discrimination",
        type=float,
        default=PRM_DISCRIMINATION,
        help="d' between the PRM's scores of right and wrong paths",
    )
    parser.add_argument(
        f"--{prefix}prm-fooled-rate",
        type=float,
        default=PRM_FOOLED_RATE,
        help="share of paths to a problem's most common wrong answer that fool the PRM",
    )
    parser.add_argument(
        f"--{prefix}prm-persistence",
        type=float,
        default=PRM_PERSISTENCE,
        help="share of the PRM's noise a path carries from step to step",
    )
    parser.add_argument(
        f"--{prefix}step-correlation",
        type=float,
        default=STEP_CORRELATION,
        help="share of the steps sampled after one prefix that take its modal outcome",
    )


def sim_settings(args: argparse.Namespace, prefix: str = "") -> SimSettings:
    """The settings `add_sim_arguments` parsed into `args`."""
    dest = prefix.replace("-", "_")
    return SimSettings(
        prm_discrimination=getattr(args, f"{dest}prm_discrimination"),
        prm_fooled_rate=getattr(args, f"{dest}prm_fooled_rate"),
        prm_persistence=getattr(args, f"{dest}prm_persistence"),
        step_correlation=getattr(args, f"{dest}step_correlation"),
    )


def load_problems(path: str | os.PathLike[str]) -> dict[str, SimProblem]:
    """Problems from a JSONL file: fields "problem" and "answer" (optional "n_steps",
    "slip_rate", "wrong_top", "crux"). Raises ValueError naming the line of a bad row."""
    problems: dict[str, SimProblem] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or not isinstance(row.get("problem"), str):
                raise ValueError(f"{path}:{number}: need a string field 'problem'")
            answer = row.get("answer")
            if is_number(answer):
                answer = str(answer)
            if not isinstance(answer, str):
                raise ValueError(f"{path}:{number}: need a field 'answer' (string or number)")
            extra = {k: row[k] for k in ("n_steps", "slip_rate", "wrong_top", "crux") if k in row}
            try:
                problems[row["problem"]] = SimProblem(answer=answer, **extra)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return problems


async def serve_until_signalled(server: SimulatedServer) -> None:
    """Serve until SIGINT or SIGTERM, then stop the server."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        log.info("serving", url=server.url, base_url=server.base_url)
        await stop.wait()


def run(server_class: type[SimulatedServer], argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: sys.argv), then serve a `server_class` until signalled.

    The class comes from the caller: under `python -m asynctts.testing.server` that module runs
    as `__main__`, and importing it here would load a second copy of it.
    """
    parser = argparse.ArgumentParser(
        prog="python -m asynctts.testing.server",
        description="A simulated vLLM-shaped OpenAI-compatible server (deterministic model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default="sim-policy", help="served policy name")
    parser.add_argument("--prm-model", default=None, help="also serve this name (for /pooling)")
    parser.add_argument("--problems", default=None, help="JSONL with fields problem, answer")
    parser.add_argument(
        "--latency",
        choices=("zero", "h200_1b", "h200_8b_prm"),
        default="zero",
        help="latency model: none, or measured H200 shapes",
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="latency multiplier")
    parser.add_argument("--max-model-len", type=int, default=4096, help="context length")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="sequences run at once")
    add_sim_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated model")
    args = parser.parse_args(argv)
    problems = load_problems(args.problems) if args.problems else {}
    if args.latency == "h200_1b":
        latency = LatencyModel.h200_1b(time_scale=args.time_scale)
    elif args.latency == "h200_8b_prm":
        latency = LatencyModel.h200_8b_prm(time_scale=args.time_scale)
    else:
        latency = LatencyModel.zero()
    server = server_class(
        model=args.model,
        prm_model=args.prm_model,
        problems=problems,
        latency=latency,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        **sim_settings(args),
        seed=args.seed,
        host=args.host,
        port=args.port,
        keep_records=False,  # a long-running server must not grow without bound
    )
    asyncio.run(serve_until_signalled(server))


__all__ = [
    "SimSettings",
    "add_sim_arguments",
    "load_problems",
    "run",
    "serve_until_signalled",
    "sim_settings",
]
