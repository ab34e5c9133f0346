"""`asynctts report RUN_DIR [RUN_DIR ...]`: (re)write each run's report and print it, or
several runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

import orjson

from asynctts.eval.report import format_comparison, plot_accuracy, write_report

__all__ = ["REPORT_DESCRIPTION", "add_report_arguments", "report"]

REPORT_DESCRIPTION = (
    "(Re)write each run's report.txt, report.json and accuracy.png and print the report;"
    " with several runs, print them side by side."
)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories of eval"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="with several runs: one plot of all of them"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def report(args: argparse.Namespace, out: TextIO) -> int:
    summaries = []
    texts = []
    for run_dir in args.run_dirs:
        summary, text = write_report(run_dir)
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
