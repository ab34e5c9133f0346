"""The `asynctts` command run as a user runs it, against a `SimulatedServer`: its argv, a data
file, the run, and the results a journal holds. A plain module, imported by name like
helpers_endpoints.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from asynctts.testing import SimulatedServer

CONSOLE_SCRIPT = Path(sys.executable).with_name("asynctts")
# as typed on a command line: "\n" is two characters the CLI turns into a newline
POLICY_FORMAT = r"{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = r"Problem: {problem}\n\nSolution:\n{solution}"
NO_HANG_S = 300  # turns a hang into a failure; not a timing assertion


def command() -> list[str]:
    if CONSOLE_SCRIPT.exists():  # the installed entry point itself
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "asynctts.cli"]


def write_data(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """MATH-500 records as a JSONL data file."""
    keep = ("problem", "answer", "subject", "level", "unique_id")
    path.write_text(
        "".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in records), encoding="utf-8"
    )
    return path


def sim_argv(name: str, server: SimulatedServer, data: Path, out: Path, *extra: str) -> list[str]:
    """`asynctts NAME` (eval or calibrate) over `data` into `out`, against `server`'s policy and
    PRM, quietly, with one grading worker."""
    return [
        *command(),
        name,
        "--data",
        str(data),
        "--out",
        str(out),
        "--policy-url",
        server.base_url,
        "--policy-model",
        "sim-policy",
        "--prompt-format",
        POLICY_FORMAT,
        "--prm-model",
        "sim-prm",
        "--prm-prompt-format",
        PRM_FORMAT,
        "--no-progress",
        "--grading-workers",
        "1",
        *extra,
    ]


async def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `argv`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), NO_HANG_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def results_in(journal: Path) -> list[tuple[str, str]]:
    """(job, problem id) of every result in a journal, in order (a torn last line skipped)."""
    keys = []
    for line in journal.read_bytes().split(b"\n"):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the torn last line of a killed run
        if event.get("type") == "result":
            keys.append((event["job"], event["problem_id"]))
    return keys
