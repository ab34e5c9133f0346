"""`asynctts solve` as a subprocess over real HTTP against the simulated server: the printed
answer, answers table, candidates, ledger (equal to what the server counted) and trace; the
JSON; bad input exits 2 without a request; an endpoint that cannot serve exits 1 with one
line on stderr."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path

import pytest

from asynctts.testing import SimProblem, SimulatedServer

from helpers_endpoints import POLICY_FORMAT, PRM_FORMAT

CONSOLE_SCRIPT = Path(sys.executable).with_name("asynctts")
PROBLEM = "What is $1+1$?"
NO_HANG_S = 120  # turns a hang into a failure; not a timing assertion
CANDIDATE_LINE = re.compile(
    r"^ +(?P<index>\d+) +(?P<branch>[\d.]+) +(?P<answer>\S+) +(?P<value>\d\.\d{3}|-)"
    r" +(?P<steps>\d+) +(?P<finish>eos|length|stop)$"
)


def command() -> list[str]:
    if CONSOLE_SCRIPT.exists():  # the installed entry point itself
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "asynctts.cli"]


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), NO_HANG_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def endpoints_file(
    path: Path, base_url: str, *, prm: bool = True, model: str = "sim-policy"
) -> str:
    document = {"policy": {"base_url": base_url, "model": model, "prompt_format": POLICY_FORMAT}}
    if prm:
        document["prm"] = {"base_url": base_url, "model": "sim-prm", "prompt_format": PRM_FORMAT}
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def requests_served(server: SimulatedServer) -> int:
    return server.stats.routes["/v1/completions"] + server.stats.routes["/pooling"]


async def test_solve_prints_the_answer_candidates_ledger_and_draws_the_tree(
    tmp_path: Path,
) -> None:
    problems = {PROBLEM: SimProblem(answer="2", n_steps=3, slip_rate=0.0)}
    picture = tmp_path / "tree.png"
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        endpoints = endpoints_file(tmp_path / "endpoints.json", server.base_url)
        code, out, err = await run(
            "solve", PROBLEM, "--strategy", "dvts", "--n", "8", "--endpoints", endpoints,
            "--trace", str(picture),
        )  # fmt: skip
        requests = requests_served(server)
        completion_tokens = sum(server.stats.completion_tokens.values())
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[:4] == [
        f"problem: {PROBLEM}",
        "dvts n=8 (width=4, max_depth=40, aggregate=last, seed=0, temperature=0.8, top_p=1.0,"
        " max_tokens=2048)",
        "",
        "answer: 2  (weighted vote; majority 2, best 2)",
    ]
    table = lines.index("1 distinct answer over 8 candidates (by summed value):")
    assert lines[table + 1] == "    answer  count  weight   best"
    assert re.fullmatch(r"  \* 2 {11}8  +\d\.\d{3}  \d\.\d{3}", lines[table + 2])
    top = lines.index("top 8 of 8 candidates (by value):")
    assert re.fullmatch(r"  index  branch +answer  value  steps  finish", lines[top + 1])
    candidates = [CANDIDATE_LINE.match(line) for line in lines[top + 2 : top + 10]]
    assert all(c is not None and c["answer"] == "2" for c in candidates)
    assert sorted(int(c["index"]) for c in candidates if c) == list(range(8))
    values = [float(c["value"]) for c in candidates if c]
    assert values == sorted(values, reverse=True)  # best first
    assert (
        f"ledger: {requests} requests, 0 retries, 0 failed attempts; tokens: " in out
        and f", {completion_tokens:,} completion, " in out
    )
    assert lines[-2:] == ["degraded: nothing", f"trace: {picture}"]
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_solve_json_and_text_agree_at_n64(tmp_path: Path) -> None:
    # slips and a weak simulated PRM's misjudgements make several answers; the same seed
    # makes both runs the same solve
    problems = {PROBLEM: SimProblem(answer="2", n_steps=3, slip_rate=0.4)}
    tree = tmp_path / "tree.json"
    weak = {"prm_discrimination": 1.0, "step_correlation": 0.0}
    async with SimulatedServer(prm_model="sim-prm", problems=problems, **weak) as server:
        endpoints = endpoints_file(tmp_path / "endpoints.json", server.base_url)
        argv = ["solve", PROBLEM, "--strategy", "beam_search", "--n", "64"]
        argv += ["--endpoints", endpoints]
        code, out, err = await run(*argv, "--json", "--trace", str(tree))
        assert code == 0, err
        requests = requests_served(server)
        code, text, err = await run(*argv, "--top", "5")
        assert code == 0, err
    record = json.loads(out)
    assert record["answer"] is not None and record["strategy"] == "beam_search"
    assert record["settings"] == {
        "strategy": "beam_search",
        "n": 64,
        "width": 4,
        "max_depth": 40,
        "aggregate": "last",
        "filter_duplicates": False,
        "lookahead": 0,
        "seed": 0,
        "temperature": 0.8,
        "top_p": 1.0,
        "max_tokens": 2048,
    }
    assert len(record["candidates"]) == 64
    assert record["ledger"]["requests"] == requests and record["ledger"]["retries"] == 0
    answers = record["answers"]
    assert len(answers) > 1 and sum(row["count"] for row in answers) == 64
    assert [row["chosen"] for row in answers] == [True] + [False] * (len(answers) - 1)
    assert record["answer"] in answers[0]["forms"]
    weights = [row["weight"] for row in answers]
    assert weights == sorted(weights, reverse=True)  # ordered by the weighted vote
    assert record["trace"] == str(tree)
    saved = json.loads(tree.read_text(encoding="utf-8"))
    assert (saved["problem"], saved["strategy"], saved["n"], saved["answer"]) == (
        PROBLEM,
        "beam_search",
        64,
        record["answer"],
    )
    # the text shows the same solve: one row per answer, the top 5 candidates
    lines = text.splitlines()
    votes = record["votes"]
    assert lines[3] == (
        f"answer: {record['answer']}  (weighted vote; majority {votes['majority']},"
        f" best {votes['best']})"
    )
    table = lines.index(f"{len(answers)} distinct answers over 64 candidates (by summed value):")
    rows = lines[table + 2 : table + 2 + len(answers)]
    assert [row.split()[-3:] for row in rows] == [
        [str(a["count"]), f"{a['weight']:.3f}", f"{a['best']:.3f}"] for a in answers
    ]
    assert rows[0].startswith("  * ") and not any(row.startswith("  * ") for row in rows[1:])
    top = lines.index("top 5 of 64 candidates (by value):")
    best = sorted(record["candidates"], key=lambda c: (-c["value"], c["index"]))[:5]
    shown = [CANDIDATE_LINE.match(line) for line in lines[top + 2 : top + 7]]
    assert [(int(m["index"]), m["answer"]) for m in shown if m] == [
        (c["index"], c["answer"]) for c in best
    ]
    assert lines[top + 7] == "  ... 59 more (--top 0 lists all, --json has all)"


async def test_majority_without_a_prm_shows_counts_only(tmp_path: Path) -> None:
    problems = {PROBLEM: SimProblem(answer="2", n_steps=2, slip_rate=0.0)}
    async with SimulatedServer(prm_model="sim-prm", problems=problems) as server:
        endpoints = endpoints_file(tmp_path / "endpoints.json", server.base_url, prm=False)
        code, out, err = await run(
            "solve", PROBLEM, "--strategy", "majority", "--n", "4", "--endpoints", endpoints
        )
    assert code == 0, err
    lines = out.splitlines()
    assert "answer: 2  (majority vote)" in lines
    table = lines.index("1 distinct answer over 4 candidates (by count):")
    assert lines[table + 1 : table + 3] == ["    answer  count", "  * 2           4"]
    assert "top 4 of 4 candidates (in generation order):" in lines
    assert "ledger: 1 request, 0 retries, 0 failed attempts; tokens: " in out  # n=4 in one


async def test_bad_input_exits_2_and_sends_nothing(tmp_path: Path) -> None:
    async with SimulatedServer(prm_model="sim-prm") as server:
        endpoints = endpoints_file(tmp_path / "endpoints.json", server.base_url)
        code, out, err = await run(
            "solve", PROBLEM, "--strategy", "dvts", "--n", "6", "--endpoints", endpoints
        )
        assert sum(server.stats.routes.values()) == 0
    assert (code, out) == (2, "")
    assert err == "asynctts solve: error: strategy 'dvts': n=6 is not a multiple of width=4\n"


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_endpoint_that_cannot_serve_exits_1_with_one_line(
    tmp_path: Path, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    endpoints = endpoints_file(tmp_path / "down.json", url)
    code, out, err = await run(
        "solve", PROBLEM, "--strategy", "dvts", "--n", "8", "--endpoints", endpoints
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"asynctts solve: error: endpoint {url} is unreachable: ")
    assert err.count("\n") == 1, err  # one line: no retry warnings, no traceback

    async with SimulatedServer(prm_model="sim-prm") as server:
        wrong = endpoints_file(tmp_path / "wrong.json", server.base_url, model="nope")
        code, out, err = await run(
            "solve", PROBLEM, "--strategy", "dvts", "--n", "8", "--endpoints", wrong
        )
    assert (code, out) == (1, "")
    assert err == (
        f"asynctts solve: error: endpoint {server.base_url} does not serve model 'nope';"
        " it serves ['sim-policy', 'sim-prm']\n"
    )
