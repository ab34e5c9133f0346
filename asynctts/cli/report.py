"""`asynctts report RUN_DIR [RUN_DIR ...]`: (re)write each run's report and print it, or
several runs side by side.

Rules:
- A RUN_DIR that is a seeds directory (`asynctts eval --seeds ... --out RUN_DIR`: runs in
  RUN_DIR/seed-S and no journal of its own) gets the report pooled over its seed runs
  (asynctts/eval/pooled.py); the seed runs' own reports are those in their directories.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

import orjson

from asynctts.eval.pooled import is_seeds_dir, write_pooled_report
from asynctts.eval.report import format_comparison, plot_accuracy, write_report

__all__ = ["REPORT_DESCRIPTION", "add_report_arguments", "report"]

REPORT_DESCRIPTION = (
    "(Re)write each run's report.txt, report.json and accuracy.png and print the report;"
    " with several runs, print them side by side. The directory of `eval --seeds` gets the"
    " report pooled over its seed runs."
)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories of eval (or of eval --seeds: pooled over its seeds)",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="with several runs: one plot of all of them"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def report(args: argparse.Namespace, out: TextIO) -> int:
    summaries = []
    texts = []
    for run_dir in args.run_dirs:
        write = write_pooled_report if is_seeds_dir(run_dir) else write_report
        summary, text = write(run_dir)
        summaries.append(summary)
        texts.append(text)
    if args.json:
        out.write(orjson.dumps(summaries, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif len(summaries) == 1:
        out.write(texts[0])
    else:
        out.write(format_comparison(summaries))
    if args.plot is not None:
        out.write(f"plot: {plot_accuracy(summaries, args.plot)}\n")
    return 0
