"""The README's runnable parts, run as a new user would: the "Testing your own code" program
as a plain script and piped into `python -`, and the one-problem command against the
simulated server started from the command line, its output equal to the README's sample
(but for what depends on timing: request count, cached tokens, wall time)."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NO_HANG_S = 120  # turns a hang into a failure; not a timing assertion


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_testing_snippet_runs_as_a_script_and_from_stdin(tmp_path: Path) -> None:
    [program] = blocks(section("Testing your own code"), "python")
    assert "__main__" not in program  # as most people write it: no main guard
    script = tmp_path / "example.py"
    script.write_text(program, encoding="utf-8")
    for args, stdin in (([str(script)], None), (["-"], program)):
        done = subprocess.run(
            [sys.executable, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=NO_HANG_S,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def cli_walkthrough(tmp_path: Path) -> Iterator[tuple[list[str], str, Path]]:
    """The section's server command started with its problems file on a free port; yields
    the solve command (endpoints file and trace in tmp_path) and the README's sample output."""
    text = section("One problem from the command line")
    [commands] = blocks(text, "bash")
    serve_line, solve_line = (line.split("  #")[0] for line in commands.strip().splitlines())
    [endpoints] = blocks(text, "json")
    [sample] = blocks(text, "text")
    [record] = re.findall(r"`(\{\"problem\".*?\})`", text)
    port = free_port()
    (tmp_path / "problems.jsonl").write_text(record + "\n", encoding="utf-8")
    (tmp_path / "endpoints.json").write_text(
        json.dumps(json.loads(endpoints)).replace(":8000/", f":{port}/"), encoding="utf-8"
    )
    serve = shlex.split(serve_line.rstrip("& "))
    assert serve[:3] == ["python", "-m", "asynctts.testing.server"], serve
    serve = [sys.executable, *serve[1:]]
    serve[serve.index("--port") + 1] = str(port)
    server = subprocess.Popen(
        serve, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + NO_HANG_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "the simulated server exited"
                assert time.monotonic() < deadline, "the simulated server never answered"
                time.sleep(0.2)
        solve = shlex.split(solve_line)
        assert solve[:2] == ["asynctts", "solve"], solve
        yield [sys.executable, "-m", "asynctts.cli", *solve[1:]], sample, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_one_problem_command_prints_the_readme_sample(
    cli_walkthrough: tuple[list[str], str, Path],
) -> None:
    command, sample, workdir = cli_walkthrough
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=NO_HANG_S)
    assert done.returncode == 0, done.stderr

    def without_timing(text: str) -> str:
        # How many PRM calls share a request, and so the request count and what the server's
        # prefix cache had, depend on timing (the coalescing window); the rest is seeded.
        text = re.sub(r"ledger: \d+ requests", "ledger: _ requests", text)
        text = re.sub(r"\([\d,]+ cached\)", "(_ cached)", text)
        return re.sub(r"wall \d+\.\d+ s", "wall _ s", text).strip()

    assert without_timing(done.stdout) == without_timing(sample)
    assert (workdir / "tree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
