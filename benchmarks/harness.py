"""What the benchmarks share: where results go and how a report is written.

A report is one JSON file: the benchmark's name, its settings, the machine, the versions of the
libraries it compares, and its rows. Benchmarks run as scripts (`python benchmarks/NAME.py`),
so this module is imported by its bare name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

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
