"""Scheduling: asynctts's schedule against a lockstep schedule, same searches, same compute.

Two `SimulatedServer`s in their own processes stand in for a GPU pair: the policy is a
continuous-batching engine with the decode-iteration times of a Llama-3.2-1B-shaped model on
one H200 (`LatencyModel.h200_1b`: 2.6 ms at 1 running sequence ... 194 ms at 1024; prefill
free), at most `--max-num-seqs` sequences at once; the PRM prefills its inputs at the rate of
a Llama-3.1-8B-shaped model (`LatencyModel.h200_8b_prm`, ~34k uncached tokens/s; its prefix
cache makes a path's earlier steps free). `--time-scale` multiplies every simulated duration.

Each generated step costs a log-normal number of tokens, fixed by its text (so equal in every
schedule), in engine time and in usage: by default the fit to MATH-500's reference solutions
split at blank lines (`--fit-steps` measures it; `STEP_TOKENS_MEDIAN`/`STEP_TOKENS_SIGMA`);
`--step-tokens uniform` keeps the simulated model's own steps of 7-12 words.

Each case (a strategy, a budget n with width 4, seed 0, and the first problems of a fixed set)
runs under three schedules, all through the same `Solver`:

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

The cases: beam search at n = `--beam-n` (4, 16, 64) and DVTS at n = `--dvts-n` (16), each
over `--problems` problems but at most `--max-sequences` // n of them (1,600 sequences wanted
per iteration at most: n=64 runs 25 problems), which keeps the run's length in bounds.

Reported per schedule: wall-clock, the ratio to asynctts, generated tokens, PRM tokens, and
the policy server's batch occupancy = time-weighted mean of running sequences over the
schedule's wall-clock, divided by max_num_seqs (idle time counts as zero), and its busy
fraction (share of the wall-clock with at least one sequence running).

    python benchmarks/scheduling.py [--problems 100] [--time-scale 0.2] [--max-num-seqs 256]
        [--step-tokens MEDIAN SIGMA | --step-tokens uniform] [--beam-n 4 16 64] [--dvts-n 16]
    python benchmarks/scheduling.py --fit-steps [--fit-data F.jsonl] [--fit-tokenizer T.json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pathlib
import re
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import orjson
from overhead import (
    POLICY_FORMAT,
    POLICY_MODEL,
    PRM_FORMAT,
    PRM_MODEL,
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
from asynctts.eval.data import packaged_math500
from asynctts.testing import LatencyModel, SimProblem

from harness import SimServerProcess, add_output_argument, quiet_logs, write_report

WIDTH = 4
MAX_DEPTH = 40
SEED = 0
BEAM_N = (4, 16, 64)
DVTS_N = (16,)
PROBLEMS = 100
MAX_SEQUENCES = 1600  # 100 problems x n=16
TIME_SCALE = 0.2
# search-and-learn's batching: beam search must run one problem at a time; DVTS defaults to 25.
REFERENCE_BATCH = {"beam_search": 1, "dvts": 25}
# The PRM's step tag, followed by a blank line: the simulated prefix cache remembers prompts
# at "\n\n" boundaries (vLLM's at every 16-token block), so a path's scored steps are cached
# for its children, as they are on vLLM.
PRM_STEP_TAG = "<extra_0>\n\n"
# Loop turns with no call started and none in flight before a barrier opens: a problem whose
# calls came back needs a few turns (task wake-ups) to start its next ones.
QUIET_TURNS = 8

# Tokens per generated step: the log-normal through the median and the 90th percentile of
# MATH-500's reference solutions split at blank lines, in SmolLM2's tokenizer (`--fit-steps`:
# 959 pieces, median 85, p90 259, p99 631; this fit puts p99 at 642). The maximum-likelihood
# fit (mu 4.30, sigma 1.13) is pulled down by 1-10 token fragments (diagrams' code split at
# blank lines) and puts p99 at 1,022, far above the data, so it is not used.
STEP_TOKENS_MEDIAN = 85.0
STEP_TOKENS_SIGMA = 0.87
BLANK_LINE = re.compile(r"\n[ \t]*\n")

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


# -- the step-length model, measured -------------------------------------------------------


@dataclass(frozen=True)
class StepFit:
    """Token counts of reference solutions' steps (pieces between blank lines)."""

    solutions: int
    one_piece_solutions: int  # no blank line: the whole solution is one step
    steps: int
    median: float
    p90: float
    p99: float
    mle_mu: float  # maximum likelihood: mean and sd of log(tokens)
    mle_sigma: float
    mu: float  # the log-normal through the median and p90
    sigma: float

    def quantile(self, q: float, *, mle: bool = False) -> float:
        """The fitted log-normal's q-quantile."""
        mu, sigma = (self.mle_mu, self.mle_sigma) if mle else (self.mu, self.sigma)
        return math.exp(mu + sigma * statistics.NormalDist().inv_cdf(q))


def model_cache_dir() -> pathlib.Path:
    """Where servers/launch.py keeps prepared models (its `model_cache_dir`)."""
    configured = os.environ.get("ASYNCTTS_MODEL_CACHE")
    if configured:
        return pathlib.Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "asynctts" / "models"


def smollm2_tokenizer() -> pathlib.Path:
    """SmolLM2-135M-Instruct's tokenizer.json as servers/launch.py prepares it."""
    found = sorted(model_cache_dir().glob("smollm2-135m-instruct-*/tokenizer.json"))
    if not found:
        raise SystemExit(
            f"no smollm2-135m-instruct-*/tokenizer.json under {model_cache_dir()}: run "
            "benchmarks/vllm_cpu.py once (it prepares SmolLM2) or pass --fit-tokenizer"
        )
    return found[0]


def fit_step_lengths(data: Traversable, tokenizer: pathlib.Path) -> StepFit:
    """Split each record's `solution` at blank lines and count each piece's tokens."""
    from tokenizers import Tokenizer  # the `hf` extra: only this measurement needs it

    solutions = [
        str(orjson.loads(line)["solution"])
        for line in data.read_text(encoding="utf-8").split("\n")
        if line
    ]
    pieces = [[p.strip() for p in BLANK_LINE.split(s) if p.strip()] for s in solutions]
    steps = [p for ps in pieces for p in ps]
    encoded = Tokenizer.from_file(str(tokenizer)).encode_batch(steps, add_special_tokens=False)
    lengths = sorted(len(e.ids) for e in encoded)
    cuts = statistics.quantiles(lengths, n=100, method="inclusive")
    logs = [math.log(n) for n in lengths]
    median = statistics.median(lengths)
    z90 = statistics.NormalDist().inv_cdf(0.9)
    return StepFit(
        solutions=len(solutions),
        one_piece_solutions=sum(len(ps) == 1 for ps in pieces),
        steps=len(steps),
        median=median,
        p90=cuts[89],
        p99=cuts[98],
        mle_mu=statistics.fmean(logs),
        mle_sigma=statistics.pstdev(logs),
        mu=math.log(median),
        sigma=(math.log(cuts[89]) - math.log(median)) / z90,
    )


def print_fit(data: Traversable, tokenizer: pathlib.Path) -> None:
    fit = fit_step_lengths(data, tokenizer)
    print(f"{data}: {fit.solutions} solutions, {fit.steps} steps (pieces between blank lines);")
    print(f"  {fit.one_piece_solutions} solutions have no blank line (one piece)")
    print(f"tokens per step ({tokenizer}):")
    print(f"  median {fit.median:g}, p90 {fit.p90:.0f}, p99 {fit.p99:.0f}")
    for label, mle in (("through median and p90", False), ("maximum likelihood", True)):
        mu, sigma = (fit.mle_mu, fit.mle_sigma) if mle else (fit.mu, fit.sigma)
        print(
            f"  log-normal {label}: mu {mu:.3f} (median {math.exp(mu):.1f}), sigma {sigma:.3f};"
            f" its p90 {fit.quantile(0.9, mle=mle):.0f}, p99 {fit.quantile(0.99, mle=mle):.0f}"
        )
    print(orjson.dumps(asdict(fit)).decode())


# -- lockstep --------------------------------------------------------------------------------


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
        async def held_generate(
            path: Path, k: int, *, to_end: bool = False, greedy: bool = False
        ) -> list[Path]:
            return await self.hold(generate(path, k, to_end=to_end, greedy=greedy))

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


Schedule = Callable[[Solver, Items, str, int], Coroutine[Any, Any, list[Solution]]]


async def run_asynctts(solver: Solver, items: Items, name: str, n: int) -> list[Solution]:
    strategy = STRATEGIES[name][0](width=WIDTH, max_depth=MAX_DEPTH)
    return [
        s
        async for s in solver.solve_many(
            items, strategy=strategy, n=n, seed=SEED, max_problems_in_flight=len(items)
        )
    ]


def lockstep(batch: int) -> Schedule:
    async def run(solver: Solver, items: Items, name: str, n: int) -> list[Solution]:
        solutions = []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            # one barrier per batch: the batch's problems wait for each other
            strategy = STRATEGIES[name][1](width=WIDTH, max_depth=MAX_DEPTH, barrier=Barrier())
            async for s in solver.solve_many(
                chunk, strategy=strategy, n=n, seed=SEED, max_problems_in_flight=len(chunk)
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


@dataclass(frozen=True)
class Case:
    strategy: str
    n: int
    problems: int


def cases(args: argparse.Namespace) -> list[Case]:
    """Beam search at each of --beam-n, then DVTS at each of --dvts-n; each over --problems
    problems, but at most --max-sequences // n of them."""
    wanted = [("beam_search", n) for n in args.beam_n] + [("dvts", n) for n in args.dvts_n]
    for name, n in wanted:
        if n < WIDTH or n % WIDTH:
            raise SystemExit(f"{name} n={n}: need a multiple of the width {WIDTH}")
    return [
        Case(name, n, max(1, min(args.problems, args.max_sequences // n))) for name, n in wanted
    ]


def step_tokens(values: list[str]) -> tuple[float, float] | None:
    """--step-tokens: 'uniform' (None: the simulated model's words) or MEDIAN SIGMA."""
    if values == ["uniform"]:
        return None
    try:
        median, sigma = (float(v) for v in values)
    except ValueError:  # also the wrong count of values
        raise SystemExit(
            f"--step-tokens {' '.join(values)}: give MEDIAN SIGMA (numbers) or 'uniform'"
        ) from None
    return median, sigma


def run_case(
    case: Case,
    items: Items,
    policy_server: SimServerProcess,
    prm_server: SimServerProcess,
    policy: Endpoint,
    prm: Endpoint,
) -> list[dict[str, Any]]:
    """The case's three schedules, each from cold servers; rows compared with asynctts's."""
    items = items[: case.problems]
    name = case.strategy
    schedules: dict[str, Schedule] = {
        "asynctts": run_asynctts,
        "lockstep (all)": lockstep(len(items)),
        f"lockstep (ref, batch {REFERENCE_BATCH[name]})": lockstep(REFERENCE_BATCH[name]),
    }
    rows: list[dict[str, Any]] = []
    answers: dict[str, list[str | None]] = {}
    for schedule, run in schedules.items():
        # cold prefix caches: each schedule pays for its own PRM prefill
        before = policy_server.restart()
        prm_before = prm_server.restart()

        async def solve_all() -> tuple[list[Solution], float]:
            # a fresh Solver (and so fresh connections) per schedule
            async with Solver(policy=policy, prm=prm) as solver:
                start = time.perf_counter()
                solutions = await run(solver, items, name, case.n)  # noqa: B023
                return solutions, time.perf_counter() - start

        solutions, wall_s = asyncio.run(solve_all())
        after = policy_server.stats()
        prm_after = prm_server.stats()
        failed = [s.problem_id for s in solutions if not s.ok or s.lost]
        if failed:
            raise RuntimeError(
                f"{name} n={case.n} {schedule}: problems failed or lost branches: {failed}"
            )
        by_id = {s.problem_id: s for s in solutions}
        answers[schedule] = [by_id[pid].answer for pid, _ in items]
        prm_tokens = total(prm_after["prompt_tokens"]) - total(prm_before["prompt_tokens"])
        prm_cached = total(prm_after["cached_tokens"]) - total(prm_before["cached_tokens"])
        row: dict[str, Any] = {
            "strategy": name,
            "n": case.n,
            "problems": case.problems,
            "schedule": schedule,
            "wall_s": wall_s,
            "generated_tokens": total(after["completion_tokens"])
            - total(before["completion_tokens"]),
            "policy_requests": total(after["routes"]) - total(before["routes"]),
            "prm_tokens": prm_tokens,
            "prm_uncached_tokens": prm_tokens - prm_cached,
            "prm_busy_fraction": (prm_after["busy_s"] - prm_before["busy_s"]) / wall_s,
            **occupancy(before, after, wall_s),
        }
        rows.append(row)
        print(
            f"{name:>11} n={case.n:<3} {schedule:<26}: {wall_s:7.1f} s, occupancy "
            f"{row['occupancy']:.0%}, {row['generated_tokens']:.0f} tokens",
            flush=True,
        )
    reference = rows[0]
    for row in rows:
        row["slower_than_asynctts"] = row["wall_s"] / reference["wall_s"]
        row["same_tokens"] = row["generated_tokens"] == reference["generated_tokens"]
        row["same_answers"] = answers[row["schedule"]] == answers["asynctts"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=PROBLEMS)
    parser.add_argument(
        "--max-sequences",
        type=int,
        default=MAX_SEQUENCES,
        help="a case runs at most this many // n problems",
    )
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument(
        "--step-tokens",
        nargs="+",
        metavar="MEDIAN SIGMA | uniform",
        default=[str(STEP_TOKENS_MEDIAN), str(STEP_TOKENS_SIGMA)],
        help="each generated step costs a log-normal number of tokens (see LatencyModel); "
        f"default {STEP_TOKENS_MEDIAN:g} {STEP_TOKENS_SIGMA:g}, MATH-500's (--fit-steps); "
        "'uniform': the simulated model's steps of 7-12 words",
    )
    parser.add_argument("--beam-n", type=int, nargs="*", default=list(BEAM_N))
    parser.add_argument("--dvts-n", type=int, nargs="*", default=list(DVTS_N))
    parser.add_argument(
        "--fit-steps",
        action="store_true",
        help="measure the step-length model from --fit-data with --fit-tokenizer, and exit",
    )
    parser.add_argument(
        "--fit-data",
        type=pathlib.Path,
        help="a JSONL with a `solution` per line (default: MATH-500 as packaged with asynctts)",
    )
    parser.add_argument(
        "--fit-tokenizer",
        type=pathlib.Path,
        help="a tokenizer.json (default: SmolLM2-135M-Instruct's, as servers/launch.py "
        "prepares it)",
    )
    add_output_argument(parser, "scheduling")
    args = parser.parse_args()
    if args.fit_steps:
        print_fit(args.fit_data or packaged_math500(), args.fit_tokenizer or smollm2_tokenizer())
        return
    steps = step_tokens(args.step_tokens)
    quiet_logs()

    todo = cases(args)
    problems = make_problems(max(case.problems for case in todo))
    items: Items = [(f"p{i}", text) for i, text in enumerate(problems)]
    policy_latency = LatencyModel.h200_1b(time_scale=args.time_scale)
    if steps is not None:
        median, sigma = steps
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
        for case in todo:
            rows.extend(run_case(case, items, policy_server, prm_server, policy, prm))

    print()
    described = (
        "steps of the simulated model's 7-12 words"
        if steps is None
        else "steps of log-normal length (median {:g} tokens, sigma {:g})".format(*steps)
    )
    print(
        f"width={WIDTH}, policy max_num_seqs={args.max_num_seqs}, "
        f"time_scale={args.time_scale:g}, {described}"
    )
    print(
        f"{'strategy':>11} | {'n':>3} | {'problems':>8} | {'schedule':<26} | {'wall s':>7} | "
        f"{'x asynctts':>10} | {'occupancy':>9} | {'busy':>5} | {'generated tokens':>16} | "
        f"{'PRM tokens':>10} | same tokens, answers"
    )
    for row in rows:
        print(
            f"{row['strategy']:>11} | {row['n']:>3} | {row['problems']:>8} | "
            f"{row['schedule']:<26} | {row['wall_s']:>7.1f} | "
            f"{row['slower_than_asynctts']:>10.2f} | {row['occupancy']:>9.1%} | "
            f"{row['busy_fraction']:>5.0%} | {row['generated_tokens']:>16.0f} | "
            f"{row['prm_tokens']:>10.0f} | {row['same_tokens']}, {row['same_answers']}"
        )
    write_report(
        args.output,
        "scheduling",
        {
            "cases": [asdict(case) for case in todo],
            "width": WIDTH,
            "seed": SEED,
            "time_scale": args.time_scale,
            "max_num_seqs": args.max_num_seqs,
            "policy_latency": "h200_1b",
            "step_tokens": steps,
            "prm_latency": "h200_8b_prm",
            "reference_batch": REFERENCE_BATCH,
        },
        {},
        rows,
    )


if __name__ == "__main__":
    main()
