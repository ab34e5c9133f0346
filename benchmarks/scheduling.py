"""Scheduling: asynctts's schedule against a lockstep schedule, same searches, same compute.

Two `SimulatedServer`s in their own processes stand in for a GPU pair: the policy is a
continuous-batching engine with the decode-iteration times of a Llama-3.2-1B-shaped model on
one H200 (`LatencyModel.h200_1b`: 2.6 ms at 1 running sequence ... 194 ms at 1024; prefill
free), at most `--max-num-seqs` sequences at once; the PRM prefills its inputs at the rate of
a Llama-3.1-8B-shaped model (`LatencyModel.h200_8b_prm`, ~34k uncached tokens/s; its prefix
cache makes a path's earlier steps free). `--time-scale` multiplies every simulated duration.

Each strategy (beam search and DVTS, n=16, width 4, seed 0) solves `--problems` problems under
three schedules, all through the same `Solver`:

  asynctts:          `solve_many` with every problem in flight; each problem moves on as soon
                     as its own requests return (DVTS subtrees do not even wait for each other).
  lockstep (all):    the same problems, but every generate and score call is held at a barrier
                     until the calls of that iteration of *every* problem have returned, so every
                     problem waits for the slowest branch of every iteration: search-and-learn's
                     batched loop with all problems in one batch.
  lockstep (ref):    the reference's own batching: beam search one problem at a time
                     (search-and-learn requires search_batch_size=1 for it), DVTS in batches
                     of 25 problems (its default search_batch_size).

The barrier wraps the library's `GenerateSteps`/`ScoreSteps` (`Lockstep`, below), so the
search code, seeds and decisions are identical: the generated tokens (counted by the policy
server) and every answer must match across schedules, which the table checks.

Reported per schedule: wall-clock, the ratio to asynctts, generated tokens, PRM tokens, and
the policy server's batch occupancy = time-weighted mean of running sequences over the
schedule's wall-clock, divided by max_num_seqs (idle time counts as zero), and its busy
fraction (share of the wall-clock with at least one sequence running).

    python benchmarks/scheduling.py [--problems 100] [--time-scale 1.0] [--max-num-seqs 256]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from overhead import (
    POLICY_FORMAT,
    POLICY_MODEL,
    PRM_FORMAT,
    PRM_MODEL,
    SimServerProcess,
    quiet_logs,
    total,
)

from asynctts import (
    DVTS,
    BeamSearch,
    BranchLost,
    Endpoint,
    GenerateSteps,
    Path,
    ScoreSteps,
    Solution,
    Solver,
)
from asynctts.testing import LatencyModel, SimProblem

from harness import add_output_argument, write_report

N = 16
WIDTH = 4
MAX_DEPTH = 40
SEED = 0
# search-and-learn's batching: beam search must run one problem at a time; DVTS defaults to 25.
REFERENCE_BATCH = {"beam_search": 1, "dvts": 25}
# The PRM's step tag, followed by a blank line: the simulated prefix cache remembers prompts
# at "\n\n" boundaries (vLLM's at every 16-token block), so a path's scored steps are cached
# for its children, as they are on vLLM.
PRM_STEP_TAG = "<extra_0>\n\n"
# Loop turns with no call started and none in flight before a barrier opens: a problem whose
# calls came back needs a few turns (task wake-ups) to start its next ones.
QUIET_TURNS = 8

T = TypeVar("T")


def make_problems(count: int) -> dict[str, SimProblem]:
    """Problems of varied depth (3-8 steps before the conclusion) and a 25% chance of a slip
    per step, so the PRM's scores decide which paths survive."""
    return {
        f"Problem {i}: a sequence starts at {i} and each term adds the number of divisors of the "
        f"previous one. Find the {i % 40 + 10}-th term.": SimProblem(
            answer=str(i), n_steps=3 + i % 6, slip_rate=0.25
        )
        for i in range(count)
    }


class Barrier:
    """Holds the results of generate and score calls until every call of the current phase,
    from every problem sharing the barrier, has returned; then releases them all at once."""

    def __init__(self) -> None:
        self.phases = 0
        self._in_flight = 0
        self._started = 0  # calls ever started: tells whether new calls arrived meanwhile
        self._held: list[asyncio.Future[None]] = []
        self._opening: asyncio.Task[None] | None = None

    async def hold(self, call: Coroutine[Any, Any, T]) -> T:
        self._in_flight += 1
        self._started += 1
        try:
            outcome: T | BranchLost = await call
        except BranchLost as lost:  # a lost branch also waits for the phase to end
            outcome = lost
        finally:
            self._in_flight -= 1
        await self._wait()
        if isinstance(outcome, BranchLost):
            raise outcome
        return outcome

    async def _wait(self) -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append(gate)
        if self._in_flight == 0 and self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open_when_quiet())
        await gate

    async def _open_when_quiet(self) -> None:
        try:
            while True:
                started = self._started
                for _ in range(QUIET_TURNS):
                    await asyncio.sleep(0)
                if self._in_flight:  # a new call is out: its return will try again
                    return
                if self._started == started:
                    break
            held, self._held = self._held, []
            self.phases += 1
            for gate in held:
                if not gate.done():
                    gate.set_result(None)
        finally:
            self._opening = None

    def wrap(self, generate: GenerateSteps, score: ScoreSteps) -> tuple[GenerateSteps, ScoreSteps]:
        async def held_generate(path: Path, k: int, *, to_end: bool = False) -> list[Path]:
            return await self.hold(generate(path, k, to_end=to_end))

        async def held_score(paths: Sequence[Path]) -> list[Path]:
            return await self.hold(score(paths))

        return held_generate, held_score


# The library's strategies, with their generate and score calls passed through a barrier
# shared by every problem of a batch; everything else (search, seeds, selection) is theirs.
@dataclass(frozen=True, kw_only=True)
class LockstepBeamSearch(BeamSearch):
    barrier: Barrier = field(default_factory=Barrier, compare=False, repr=False)

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        return await super().run(root, n, *self.barrier.wrap(generate, score))


@dataclass(frozen=True, kw_only=True)
class LockstepDVTS(DVTS):
    barrier: Barrier = field(default_factory=Barrier, compare=False, repr=False)

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        return await super().run(root, n, *self.barrier.wrap(generate, score))


STRATEGIES: dict[str, tuple[type[BeamSearch | DVTS], type[LockstepBeamSearch | LockstepDVTS]]] = {
    "beam_search": (BeamSearch, LockstepBeamSearch),
    "dvts": (DVTS, LockstepDVTS),
}


Items = list[tuple[str, str]]


Schedule = Callable[[Solver, Items, str], Coroutine[Any, Any, list[Solution]]]


async def run_asynctts(solver: Solver, items: Items, name: str) -> list[Solution]:
    strategy = STRATEGIES[name][0](width=WIDTH, max_depth=MAX_DEPTH)
    return [
        s
        async for s in solver.solve_many(
            items, strategy=strategy, n=N, seed=SEED, max_problems_in_flight=len(items)
        )
    ]


def lockstep(batch: int) -> Schedule:
    async def run(solver: Solver, items: Items, name: str) -> list[Solution]:
        solutions = []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            # one barrier per batch: the batch's problems wait for each other
            strategy = STRATEGIES[name][1](width=WIDTH, max_depth=MAX_DEPTH, barrier=Barrier())
            async for s in solver.solve_many(
                chunk, strategy=strategy, n=N, seed=SEED, max_problems_in_flight=len(chunk)
            ):
                solutions.append(s)
        return solutions

    return run


def occupancy(before: dict[str, Any], after: dict[str, Any], wall_s: float) -> dict[str, float]:
    seq_s = after["seq_s"] - before["seq_s"]
    busy_s = after["busy_s"] - before["busy_s"]
    slots = after["max_num_seqs"]
    return {
        "occupancy": seq_s / (slots * wall_s),
        "busy_fraction": busy_s / wall_s,
        "occupancy_while_busy": seq_s / (slots * busy_s) if busy_s else 0.0,
        "mean_running": seq_s / wall_s,
        "peak_running": after["peak_running"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument(
        "--step-tokens",
        type=float,
        nargs=2,
        metavar=("MEDIAN", "SIGMA"),
        help="each generated step costs a log-normal number of tokens (see LatencyModel) "
        "instead of the simulated model's 7-12 words",
    )
    parser.add_argument(
        "--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES)
    )
    add_output_argument(parser, "scheduling")
    args = parser.parse_args()
    quiet_logs()

    problems = make_problems(args.problems)
    items: Items = [(f"p{i}", text) for i, text in enumerate(problems)]
    policy_latency = LatencyModel.h200_1b(time_scale=args.time_scale)
    if args.step_tokens is not None:
        median, sigma = args.step_tokens
        policy_latency = replace(policy_latency, step_tokens_median=median, step_tokens_sigma=sigma)
    rows: list[dict[str, Any]] = []
    with (
        SimServerProcess(
            model=POLICY_MODEL,
            problems=problems,
            latency=policy_latency,
            max_num_seqs=args.max_num_seqs,
        ) as policy_server,
        SimServerProcess(
            model=PRM_MODEL,
            problems=problems,
            latency=LatencyModel.h200_8b_prm(time_scale=args.time_scale),
            max_num_seqs=args.max_num_seqs,
            step_tag=PRM_STEP_TAG,
        ) as prm_server,
    ):
        policy = Endpoint(
            base_url=policy_server.base_url,
            model=POLICY_MODEL,
            prompt_format=POLICY_FORMAT,
            max_in_flight=4096,
        )
        prm = Endpoint(
            base_url=prm_server.base_url,
            model=PRM_MODEL,
            prompt_format=PRM_FORMAT,
            step_tag=PRM_STEP_TAG,
            max_in_flight=4096,
        )
        for name in args.strategies:
            schedules: dict[str, Schedule] = {
                "asynctts": run_asynctts,
                "lockstep (all)": lockstep(len(items)),
                f"lockstep (ref, batch {REFERENCE_BATCH[name]})": lockstep(REFERENCE_BATCH[name]),
            }
            answers: dict[str, list[str | None]] = {}
            for schedule, run in schedules.items():
                # cold prefix caches: each schedule pays for its own PRM prefill
                before = policy_server.restart()
                prm_before = prm_server.restart()

                async def solve_all() -> tuple[list[Solution], float]:
                    # a fresh Solver (and so fresh connections) per schedule
                    async with Solver(policy=policy, prm=prm) as solver:
                        start = time.perf_counter()
                        solutions = await run(solver, items, name)  # noqa: B023
                        return solutions, time.perf_counter() - start

                solutions, wall_s = asyncio.run(solve_all())
                after = policy_server.stats()
                prm_after = prm_server.stats()
                failed = [s.problem_id for s in solutions if not s.ok or s.lost]
                if failed:
                    raise RuntimeError(
                        f"{name} {schedule}: problems failed or lost branches: {failed}"
                    )
                by_id = {s.problem_id: s for s in solutions}
                answers[schedule] = [by_id[pid].answer for pid, _ in items]
                row: dict[str, Any] = {
                    "strategy": name,
                    "schedule": schedule,
                    "wall_s": wall_s,
                    "generated_tokens": total(after["completion_tokens"])
                    - total(before["completion_tokens"]),
                    "policy_requests": total(after["routes"]) - total(before["routes"]),
                    "prm_tokens": total(prm_after["prompt_tokens"])
                    - total(prm_before["prompt_tokens"]),
                    "prm_uncached_tokens": (
                        total(prm_after["prompt_tokens"]) - total(prm_before["prompt_tokens"])
                    )
                    - (total(prm_after["cached_tokens"]) - total(prm_before["cached_tokens"])),
                    "prm_busy_fraction": (prm_after["busy_s"] - prm_before["busy_s"]) / wall_s,
                    **occupancy(before, after, wall_s),
                }
                rows.append(row)
                print(
                    f"{name:>11} {schedule:<26}: {wall_s:7.1f} s, occupancy "
                    f"{row['occupancy']:.0%}, {row['generated_tokens']:.0f} tokens",
                    flush=True,
                )
            reference = next(
                r for r in rows if r["strategy"] == name and r["schedule"] == "asynctts"
            )
            for row in rows:
                if row["strategy"] == name:
                    row["slower_than_asynctts"] = row["wall_s"] / reference["wall_s"]
                    row["same_tokens"] = row["generated_tokens"] == reference["generated_tokens"]
                    row["same_answers"] = answers[row["schedule"]] == answers["asynctts"]

    print()
    steps = (
        "steps of the simulated model's 7-12 words"
        if args.step_tokens is None
        else "steps of log-normal length (median {:g} tokens, sigma {:g})".format(*args.step_tokens)
    )
    print(
        f"{args.problems} problems, n={N}, width={WIDTH}, policy max_num_seqs="
        f"{args.max_num_seqs}, time_scale={args.time_scale:g}, {steps}"
    )
    print(
        f"{'strategy':>11} | {'schedule':<26} | {'wall s':>7} | {'x asynctts':>10} | "
        f"{'occupancy':>9} | {'busy':>5} | {'generated tokens':>16} | {'PRM tokens':>10} | "
        "same tokens, answers"
    )
    for row in rows:
        print(
            f"{row['strategy']:>11} | {row['schedule']:<26} | {row['wall_s']:>7.1f} | "
            f"{row['slower_than_asynctts']:>10.2f} | {row['occupancy']:>9.1%} | "
            f"{row['busy_fraction']:>5.0%} | {row['generated_tokens']:>16.0f} | "
            f"{row['prm_tokens']:>10.0f} | {row['same_tokens']}, {row['same_answers']}"
        )
    write_report(
        args.output,
        "scheduling",
        {
            "problems": args.problems,
            "n": N,
            "width": WIDTH,
            "seed": SEED,
            "time_scale": args.time_scale,
            "max_num_seqs": args.max_num_seqs,
            "policy_latency": "h200_1b",
            "step_tokens": args.step_tokens,
            "prm_latency": "h200_8b_prm",
            "reference_batch": REFERENCE_BATCH,
        },
        {},
        rows,
    )


if __name__ == "__main__":
    main()
