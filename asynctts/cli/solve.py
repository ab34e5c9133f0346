"""`asynctts solve PROBLEM`: one problem, one strategy; prints the answer, the candidates
with their values, the ledger and what degraded, and keeps the search tree on request.

Rules:
- Everything is checked before the first request (the problem, the strategy at its budget,
  the endpoints, where the trace goes and whether it can be drawn).
- The report goes to stdout (text, or JSON with `--json`); logs go to stderr, errors only
  unless `--log-level` says more, so a failure reads as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from asynctts.api import STRATEGIES, check_request, solve
from asynctts.backends.context import Sampling
from asynctts.cli.arguments import (
    add_endpoint_arguments,
    add_sampling_arguments,
    add_search_arguments,
    add_stepwise_arguments,
    endpoints_of,
    non_negative_int,
    positive_int,
    sampling_of,
    strategy_settings_of,
    system_prompt_of,
)
from asynctts.cli.solution_view import solution_json, solution_text
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.eval.plan import build_strategy
from asynctts.logs import configure_logging
from asynctts.search.strategy import Strategy
from asynctts.solution import Solution

__all__ = [
    "SOLVE_DESCRIPTION",
    "SolveRequest",
    "add_solve_arguments",
    "prepare_solve",
    "solve_async",
]

SOLVE_DESCRIPTION = (
    "Solve one problem with one strategy and print the answer, every distinct answer with"
    " its count and values, the top candidates, the ledger (requests, retries, tokens, wall"
    " time) and what degraded. Example: asynctts solve 'What is $1+1$?' --strategy dvts"
    " --n 8 --endpoints endpoints.json --trace tree.png"
)
TRACE_PICTURES = (".png", ".svg", ".pdf")


def add_solve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "problem",
        metavar="PROBLEM",
        help="the problem statement (in single quotes, so the shell leaves $...$ alone),"
        " or - to read it from standard input",
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--strategy",
        required=True,
        choices=sorted(STRATEGIES),
        metavar="NAME",
        help=f"the search strategy: {', '.join(sorted(STRATEGIES))}",
    )
    what.add_argument(
        "--n",
        required=True,
        type=positive_int,
        help="the budget: samples (best-of-N family), beams or subtree leaves (tree searches)",
    )
    add_search_arguments(what)
    add_stepwise_arguments(what)
    what.add_argument("--seed", type=int, default=0, help="request seed: same seed, same result")
    add_sampling_arguments(parser.add_argument_group("sampling"))
    add_endpoint_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--top",
        type=non_negative_int,
        default=10,
        metavar="K",
        help="candidates listed, best value first (0: all)",
    )
    output.add_argument(
        "--json", action="store_true", help="print the whole solution as JSON instead"
    )
    output.add_argument(
        "--trace",
        type=Path,
        metavar="PATH",
        help="keep the search tree: PATH.json saves it, PATH.png (.svg, .pdf) draws it"
        " (drawing needs asynctts[eval])",
    )
    output.add_argument(
        "--log-level",
        default="ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="of the structured logs on stderr (WARNING shows retries)",
    )


@dataclass(frozen=True, slots=True)
class SolveRequest:
    """A checked `asynctts solve`: what `solve` gets, and where the trace goes."""

    problem: str
    strategy: Strategy
    n: int
    seed: int
    policy: Endpoint
    prm: Endpoint | None
    sampling: Sampling
    system_prompt: str | None
    trace: Path | None

    def settings(self) -> dict[str, Any]:
        """The strategy, its settings, the seed and the sampling, as one mapping."""
        knobs: dict[str, Any] = {}
        if dataclasses.is_dataclass(self.strategy) and not isinstance(self.strategy, type):
            knobs = dataclasses.asdict(self.strategy)
        return {
            "strategy": self.strategy.name,
            "n": self.n,
            **knobs,
            "seed": self.seed,
            **dataclasses.asdict(self.sampling),
        }

    def settings_line(self) -> str:
        settings = self.settings()
        knobs = ", ".join(
            f"{key}={value}" for key, value in settings.items() if key not in ("strategy", "n")
        )
        return f"{self.strategy.name} n={self.n} ({knobs})"


def prepare_solve(args: argparse.Namespace, stdin: TextIO) -> SolveRequest:
    """Everything `solve` needs, checked; nothing is sent.

    Raises:
        ConfigError: any bad input, named.
    """
    problem = stdin.read().strip() if args.problem == "-" else args.problem
    strategy = build_strategy(args.strategy, strategy_settings_of(args))
    policy, prm = endpoints_of(args)
    check_request(problem, strategy, args.n, prm is not None, args.seed)
    return SolveRequest(
        problem=problem,
        strategy=strategy,
        n=args.n,
        seed=args.seed,
        policy=policy,
        prm=prm,
        sampling=sampling_of(args),
        system_prompt=system_prompt_of(args),
        trace=_trace_target(args.trace),
    )


def _trace_target(path: Path | None) -> Path | None:
    if path is None:
        return None
    suffix = path.suffix.lower()
    if suffix != ".json" and suffix not in TRACE_PICTURES:
        raise ConfigError(
            f"--trace {path}: name a .json file (the tree) or a {', '.join(TRACE_PICTURES)}"
            " file (its picture)"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--trace {path}: the directory {path.parent} does not exist")
    if suffix in TRACE_PICTURES and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(
            f"--trace {path}: drawing needs matplotlib (pip install 'asynctts[eval]');"
            " a .json trace needs nothing"
        )
    return path


def _write_trace(solution: Solution, path: Path) -> None:
    trace = solution.trace
    if trace is None:  # solve(trace=True) always keeps one
        raise RuntimeError("the solve kept no trace")
    try:
        if path.suffix.lower() == ".json":
            trace.save_json(path)
        else:
            trace.render(path)
    except OSError as err:
        raise ConfigError(f"--trace {path}: cannot write it ({err.strerror})") from err


async def solve_async(args: argparse.Namespace, *, out: TextIO, stdin: TextIO) -> int:
    """`asynctts solve` with parsed arguments."""
    request = prepare_solve(args, stdin)
    configure_logging(level=args.log_level)
    solution = await solve(
        request.problem,
        strategy=request.strategy,
        n=request.n,
        policy=request.policy,
        prm=request.prm,
        seed=request.seed,
        sampling=request.sampling,
        system_prompt=request.system_prompt,
        trace=request.trace is not None,
    )
    if request.trace is not None:
        _write_trace(solution, request.trace)
    if args.json:
        record = solution_json(
            solution,
            settings=request.settings(),
            trace=None if request.trace is None else str(request.trace),
        )
        out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    out.write(solution_text(solution, settings=request.settings_line(), top=args.top))
    if request.trace is not None:
        out.write(f"trace: {request.trace}\n")
    return 0
