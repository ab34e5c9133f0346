"""Answer grouping from any program: a script without a main guard, the same program read from
stdin, several event loops in one process (successive `asyncio.run()` calls, a thread with its
own loop), against a `SimulatedServer` on 127.0.0.1; and no worker process outlives its
program, whether it exits or is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asynctts import solve
from asynctts.equivalence import Equivalence
from asynctts.testing import SimProblem, SimulatedServer
from asynctts.verify_worker import FAULT_ENV

from helpers_endpoints import POLICY_FORMAT, policy_of

PROBLEM = "What is $7+5$?"

# Generous bound that turns a hang into a clear failure; not a timing assertion.
NO_HANG_S = 120

# What finds this program's verify workers, as the programs below use it.
FIND_WORKERS = """
def verify_workers():
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent == os.getpid() and b"asynctts.verify_worker" in command:
            pids.append(int(stat.parent.name))
    return pids
"""

# A user's program as most people write it: no `if __name__ == "__main__":`. It votes over
# n=8 samples (distinct answers, so math-verify groups them in a worker), groups two forms of
# one half, and does so in two successive event loops and in a thread with its own loop.
PROGRAM = f"""
import asyncio
import os
import sys
import threading
from pathlib import Path

from asynctts import Endpoint, solve
from asynctts.equivalence import Equivalence

policy = Endpoint(base_url=sys.argv[1], model="sim-policy", prompt_format={POLICY_FORMAT!r})

async def vote():
    solution = await solve({PROBLEM!r}, strategy="majority", n=8, policy=policy, seed=0)
    async with Equivalence() as equivalence:
        halves = await equivalence.group(["0.5", "\\\\frac{{1}}{{2}}", "3"])
    print("vote", solution.answer, [c.group for c in solution.candidates], halves, flush=True)
{FIND_WORKERS}
asyncio.run(vote())
asyncio.run(vote())
thread = threading.Thread(target=asyncio.run, args=(vote(),))
thread.start()
thread.join()
print("workers", *verify_workers())
"""


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    problems = {PROBLEM: SimProblem(answer="12", slip_rate=0.5)}
    async with SimulatedServer(model="sim-policy", problems=problems) as s:
        yield s


async def run_python(*args: str, stdin: str = "", cwd: Path) -> tuple[int, str, str]:
    """Run this interpreter on `args` in `cwd`; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    async with asyncio.timeout(NO_HANG_S):
        out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def is_gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie of another parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def signals_blocked(pid: int) -> int:
    """The signal mask of `pid`'s main thread (bit n-1 for signal n)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk in /proc/{pid}/status")


async def expected_vote(server: SimulatedServer) -> str:
    solution = await solve(PROBLEM, strategy="majority", n=8, policy=policy_of(server), seed=0)
    groups = [c.group for c in solution.candidates]
    assert len(set(groups)) > 1  # distinct answers: grouping needed a worker
    return f"vote {solution.answer} {groups} [0, 0, 1]"


@pytest.mark.parametrize("source", ["script", "stdin"])
async def test_a_program_without_a_main_guard_groups_in_every_loop(
    server: SimulatedServer, tmp_path: Path, source: str
) -> None:
    if source == "script":
        script = tmp_path / "example.py"
        script.write_text(PROGRAM)
        code, out, err = await run_python(str(script), server.base_url, cwd=tmp_path)
    else:
        code, out, err = await run_python("-", server.base_url, stdin=PROGRAM, cwd=tmp_path)
    assert (code, err) == (0, "")
    *votes, workers = out.splitlines()
    assert votes == [await expected_vote(server)] * 3
    # every loop used the one shared worker of solve(); Equivalence() closed its own
    label, *pids = workers.split()
    assert label == "workers" and len(pids) == 1
    assert is_gone(int(pids[0]))  # stopped when the interpreter exited


async def test_a_killed_program_leaves_no_worker_even_a_stuck_one(tmp_path: Path) -> None:
    program = f"""
import asyncio
import os
from pathlib import Path

from asynctts.equivalence import Equivalence
{FIND_WORKERS}
async def main():
    equivalence = Equivalence(timeout_s=600.0)
    grouping = asyncio.create_task(equivalence.group(["0.5", "1"]))
    while not verify_workers():
        await asyncio.sleep(0.01)
    print(*verify_workers(), flush=True)
    await grouping

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, FAULT_ENV: "hang"},
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(program.encode())
    process.stdin.close()
    async with asyncio.timeout(NO_HANG_S):
        (pid,) = map(int, (await process.stdout.readline()).split())
        # the worker hangs in its task where no timer reaches it, and no EOF either
        while not signals_blocked(pid) & 1 << (signal.SIGALRM - 1):  # noqa: ASYNC110 - from outside
            await asyncio.sleep(0.05)
        process.kill()
        await process.wait()
        while not is_gone(pid):  # noqa: ASYNC110 - watches the orphaned worker from outside
            await asyncio.sleep(0.05)


async def test_one_shared_pool_serves_loops_in_other_threads() -> None:
    """Equivalences in two threads, each with its own event loop, at the same time."""

    def in_own_loop(forms: list[str]) -> list[int | None]:
        async def group() -> list[int | None]:
            async with Equivalence(share_workers=True) as equivalence:
                return await equivalence.group(forms)

        return asyncio.run(group())

    async with asyncio.timeout(NO_HANG_S):
        results = await asyncio.gather(
            asyncio.to_thread(in_own_loop, ["0.5", r"\frac{1}{2}", "2"]),
            asyncio.to_thread(in_own_loop, ["(1,2)", "(2,1)", r"\{2,1\}", r"\{1,2\}"]),
        )
    assert results == [[0, 0, 1], [0, 1, 2, 2]]
