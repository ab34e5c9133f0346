"""The `asynctts` command:

- `asynctts solve PROBLEM ...` solves one problem and prints the answer, the candidates, the
  ledger and what degraded (solve.py);
- `asynctts eval ...` runs an evaluation into a run directory (evaluate.py);
- `asynctts calibrate ...` runs every strategy at every budget over a calibration set and
  writes the compute-optimal table (calibrate.py);
- `asynctts report RUN_DIR [RUN_DIR ...]` reports one run (or the seed runs of `eval --seeds`,
  pooled) or compares several (report.py).

Rules:
- Bad input is reported before any request as `asynctts <command>: error: ...`, exit status
  2 (as argparse does for bad flags); an endpoint that cannot serve exits 1; Ctrl-C exits 130
  (process.py). Expected failures never print a traceback.
- Every `--help` shows each flag's default (arguments.HelpFormatter).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from asynctts.cli.arguments import HelpFormatter
from asynctts.cli.calibrate import (
    CALIBRATE_DESCRIPTION,
    add_calibrate_arguments,
    calibrate_async,
)
from asynctts.cli.evaluate import (
    EVAL_DESCRIPTION,
    Prepared,
    add_eval_arguments,
    eval_async,
    prepare_eval,
)
from asynctts.cli.process import (
    EXIT_BAD_INPUT,
    EXIT_ENDPOINT,
    EXIT_INTERRUPTED,
    exit_status,
    run_owning_process,
)
from asynctts.cli.report import REPORT_DESCRIPTION, add_report_arguments, report
from asynctts.cli.solve import SOLVE_DESCRIPTION, add_solve_arguments, solve_async

__all__ = [
    "CALIBRATE_DESCRIPTION",
    "EVAL_DESCRIPTION",
    "EXIT_BAD_INPUT",
    "EXIT_ENDPOINT",
    "EXIT_INTERRUPTED",
    "Prepared",
    "add_calibrate_arguments",
    "add_eval_arguments",
    "build_parser",
    "calibrate_async",
    "eval_async",
    "exit_status",
    "main",
    "prepare_eval",
    "run_owning_process",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynctts",
        description="Test-time compute scaling for math: solve a problem with a search"
        " strategy, or evaluate strategies on MATH-500.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    solve = commands.add_parser(
        "solve",
        help="solve one problem; print the answer, the candidates and the ledger",
        description=SOLVE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_solve_arguments(solve)
    run = commands.add_parser(
        "eval",
        help="run strategies over a data set into a run directory (resumable)",
        description=EVAL_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_eval_arguments(run)
    calibrate = commands.add_parser(
        "calibrate",
        help="run every strategy at every budget and write the compute-optimal table",
        description=CALIBRATE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_calibrate_arguments(calibrate)
    again = commands.add_parser(
        "report",
        help="report one run, or compare several side by side",
        description=REPORT_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_report_arguments(again)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "solve":
        return exit_status(
            "solve", lambda: asyncio.run(solve_async(args, out=sys.stdout, stdin=sys.stdin))
        )
    if args.command == "eval":
        return exit_status("eval", lambda: run_owning_process(eval_async(args)))
    if args.command == "calibrate":
        return exit_status("calibrate", lambda: run_owning_process(calibrate_async(args)))
    return exit_status("report", lambda: report(args, sys.stdout))
