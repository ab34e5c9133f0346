"""The evaluation runner: every job of an `EvalPlan` over its problems through `solve_many`,
each finished problem graded and journaled before it counts.

Rules:
- Everything is checked before the first request: the plan (`EvalPlan.check`), the
  calibration tables against the endpoints (`EvalPlan.check_endpoints`) and the journal (a
  resumed run must have the same identity). Then the endpoints are opened.
- A resumed compute_optimal job must choose with the table it started with: another table is
  refused naming both (their sha256, and their paths as `info["calibration_table"]` records
  them).
- Jobs run one after another; within a job at most `max_problems_in_flight` problems run at
  once. A problem is graded as soon as it finishes, while the others keep running.
- A job with a batch token budget (`Job.budget_tokens`) spends it over its problems; resumed,
  its problems still to do share what its journaled results did not spend.
- A result counts (progress bar, resume) only after its journal line is on disk. Resuming
  skips every (job, problem) already in the journal; `retry_errors` also redoes those that
  failed as a whole.
- A grade that timed out is no verdict, so every resume grades those answers again (from the
  journal: nothing is sampled again) and appends the result with its new grades; the newer
  record of a problem replaces the older (`last_per_key`). One still undecided stays
  "timeout" for the next resume.
- The journal records the asynctts and math-verify versions (`package_versions`); resuming
  under others is refused unless `allow_version_change` (asynctts/eval/journal.py).
- A job that grades its candidates (`Job.grade_candidates`) records in each result
  `answer_verdicts` (each distinct candidate answer -> true, false, or null when math-verify
  did not decide) and `candidate_correct`: the share of the solution's candidates whose
  answer is right (undecided counts as wrong; 0.0 without candidates, as when the problem
  failed as a whole).
- An oracle job (`Job.oracle_from`, asynctts/eval/plan.py) solves each problem with
  compute_optimal choosing by the oracle bin of its pass@1: the `candidate_correct` of the
  family job's journaled result (so a resume needs nothing of the family run but its
  journal). A problem whose family result failed as a whole has no pass@1: it is solved with
  the predicted bins. Each result records `oracle_pass_at_1` (null for those). Problems run
  at most `max_problems_in_flight` at once, each on its own strategy; their request seeds
  derive from the run's seed and the problem's id alone, so the probe of a problem draws the
  samples of the predicted job's probe.
- A problem that fails as a whole is a result with `error` set (graded wrong, reason
  "error"); it never stops the run. Anything else (a bug, Ctrl-C) stops it: what was
  journaled stays, and `resume` continues from there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import math
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from asynctts.api import Solver
from asynctts.calibration import CalibrationTable, OracleChoice
from asynctts.endpoint import Endpoint
from asynctts.equivalence import Equivalence
from asynctts.errors import ConfigError
from asynctts.eval.data import Problem
from asynctts.eval.grading import Grade, grade_answers, grade_solution, regrade_timeouts
from asynctts.eval.journal import Journal, last_per_key
from asynctts.eval.plan import EvalPlan, Job
from asynctts.search.compute_optimal import ComputeOptimal
from asynctts.search.strategy import Strategy
from asynctts.solution import Solution

__all__ = [
    "JOURNAL_NAME",
    "LOG_NAME",
    "TABLE_INFO",
    "JobOutcome",
    "RunOptions",
    "check_same_tables",
    "headline_correct",
    "open_journal",
    "package_versions",
    "run_eval",
]

log = structlog.get_logger("asynctts.eval")

JOURNAL_NAME = "journal.jsonl"
LOG_NAME = "eval.log"
TABLE_INFO = "calibration_table"  # info's key for the path of compute_optimal's table
# The distributions whose versions decide the results beyond the run's configuration.
_VERSIONED = ("asynctts", "math-verify")


def package_versions() -> dict[str, str | None]:
    """The installed versions of asynctts and math-verify (None: not installed as a
    distribution, e.g. asynctts run from a source tree without `pip install`)."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run (none of it changes the results).

    Args:
        resume: continue the run in `run_dir` (same configuration) instead of starting one.
        retry_errors: when resuming, also redo problems that failed as a whole.
        allow_version_change: resume a run written with other asynctts or math-verify
            versions (the change is journaled); refused otherwise.
        max_problems_in_flight: problems solved at once.
        progress: show a progress bar on stderr.
        grading_workers: math-verify worker processes (grading and answer grouping).
        metrics_port: serve the run's Prometheus metrics on this port (`Solver`); None: none.
        metrics_host: the address they are served on.
    """

    resume: bool = False
    retry_errors: bool = False
    allow_version_change: bool = False
    max_problems_in_flight: int = 64
    progress: bool = True
    grading_workers: int = 2
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.max_problems_in_flight < 1:
            raise ConfigError(f"max_problems_in_flight={self.max_problems_in_flight}: need >= 1")
        if self.grading_workers < 1:
            raise ConfigError(f"grading_workers={self.grading_workers}: need >= 1")


@dataclass(frozen=True, slots=True)
class JobOutcome:
    key: str
    total: int  # problems in the job
    resumed: int  # already in the journal when this run started
    solved: int  # finished in this run
    regraded: int  # results from the journal whose timed-out grades were decided again
    wall_s: float


async def run_eval(
    plan: EvalPlan,
    *,
    policy: Endpoint,
    prm: Endpoint | None,
    run_dir: str | Path,
    options: RunOptions | None = None,
    info: Mapping[str, Any] | None = None,
) -> list[JobOutcome]:
    """Run (or resume) the evaluation `plan` into `run_dir`.

    Args:
        plan: problems, jobs and shared settings.
        policy, prm: the endpoints (`prm` None only when no job needs scores).
        run_dir: where the journal (and the caller's log and reports) live.
        options: resume, concurrency, progress bar.
        info: extra facts recorded in the journal's config (never compared), e.g. the path of
            compute_optimal's table as `TABLE_INFO`.

    Returns:
        One `JobOutcome` per job.

    Raises:
        ConfigError: the plan, its calibration tables or the journal do not fit (nothing was
            sent).
        EndpointError: an endpoint is unreachable or does not serve its model.
    """
    opts = options or RunOptions()
    plan.check(has_prm=prm is not None)
    plan.check_endpoints(policy, prm)
    with open_journal(
        plan, policy=policy, prm=prm, run_dir=run_dir, options=opts, info=info
    ) as journal:
        if journal.events:
            log.info("eval.resuming", path=str(journal.path), events=len(journal.events))
        outcomes: list[JobOutcome] = []
        async with (
            Equivalence(workers=opts.grading_workers) as equivalence,
            Solver(
                policy=policy,
                prm=prm,
                sampling=plan.sampling,
                system_prompt=plan.system_prompt,
                equivalence=equivalence,
                metrics_port=opts.metrics_port,
                metrics_host=opts.metrics_host,
            ) as solver,
        ):
            # the results of this session an oracle job reads (the journal's events are the
            # part on disk when it was opened)
            sources = {job.oracle_from for job in plan.jobs if job.oracle_from is not None}
            fresh: dict[tuple[str, str], Mapping[str, Any]] = {}
            for job in plan.jobs:
                outcomes.append(
                    await _run_job(
                        job, plan, solver, equivalence, journal, opts, fresh, job.key in sources
                    )
                )
        return outcomes


def open_journal(
    plan: EvalPlan,
    *,
    policy: Endpoint,
    prm: Endpoint | None,
    run_dir: str | Path,
    options: RunOptions,
    info: Mapping[str, Any] | None = None,
) -> Journal:
    """The journal of `plan` in `run_dir`: created, or (`options.resume`) resumed once its
    identity, calibration tables and versions fit (see the module rules).

    Raises:
        ConfigError: the journal does not fit, or another process has it open.
    """
    config = {**plan.config(policy=policy, prm=prm, info=info), "versions": package_versions()}
    path = Path(run_dir) / JOURNAL_NAME
    if options.resume:
        check_same_tables(path, config)
    return Journal.open(
        path, config, resume=options.resume, allow_version_change=options.allow_version_change
    )


async def _run_job(
    job: Job,
    plan: EvalPlan,
    solver: Solver,
    equivalence: Equivalence,
    journal: Journal,
    opts: RunOptions,
    fresh: dict[tuple[str, str], Mapping[str, Any]],
    keep: bool,
) -> JobOutcome:
    """Run `job`'s problems still to do; with `keep`, what an oracle job needs of each new
    result goes to `fresh` (by job key and problem id)."""
    journaled = last_per_key(journal.events)
    previous = {pid: record for (key, pid), record in journaled.items() if key == job.key}
    if opts.retry_errors:
        previous = {pid: r for pid, r in previous.items() if r.get("error") is None}
    selected = {p.id for p in plan.problems}
    kept = [r for pid, r in previous.items() if pid in selected]
    undecided = [r for r in kept if _timed_out(r)]
    todo = [p for p in plan.problems if p.id not in previous]
    if not todo and not undecided:
        return JobOutcome(job.key, len(plan.problems), len(kept), 0, 0, 0.0)
    started = time.time()
    clock = time.monotonic()
    await journal.append_async(
        {
            "type": "session_start",
            "job": job.key,
            "t": started,
            "todo": len(todo),
            "regrade": len(undecided),
        }
    )
    log.info(
        "eval.job_started",
        job=job.key,
        todo=len(todo),
        resumed=len(kept),
        regrade=len(undecided),
    )
    if undecided:
        regraded = await asyncio.gather(*(_regrade(job, r, equivalence) for r in undecided))
        for result in regraded:
            await journal.append_async(result)  # durable before it counts
        by_key = {r["problem_id"]: r for r in regraded}
        kept = [by_key.get(r["problem_id"], r) for r in kept]
    progress = _Progress(job, len(plan.problems), kept, enabled=opts.progress)
    by_id = {p.id: p for p in todo}
    solved = 0

    known = _pass_at_1(job, {**journaled, **fresh})

    async def record(solution: Solution) -> None:
        nonlocal solved
        result = await _result(job, by_id[solution.problem_id], solution, equivalence)
        if job.oracle_from is not None:
            result["oracle_pass_at_1"] = known.get(solution.problem_id)
        await journal.append_async(result)  # durable before it counts
        if keep:
            fresh[(job.key, solution.problem_id)] = {
                "error": result["error"],
                "candidate_correct": result.get("candidate_correct"),
            }
        solved += 1
        progress.update(result)

    if job.oracle_from is None:
        solutions = solver.solve_many(
            [(p.id, p.problem) for p in todo],
            strategy=job.strategy,
            n=job.n,
            seed=plan.seed,
            max_problems_in_flight=opts.max_problems_in_flight,
            budget_tokens=_budget_left(job, kept),
        )
    else:
        own = [(p, _oracle_strategy(job.strategy, known.get(p.id))) for p in todo]
        solutions = _solve_each(solver, own, job.n, plan.seed, opts.max_problems_in_flight)
    try:
        async with asyncio.TaskGroup() as graders:
            async for solution in solutions:
                graders.create_task(record(solution))
    finally:
        progress.close()
    wall_s = time.monotonic() - clock
    await journal.append_async(
        {"type": "session_end", "job": job.key, "t": time.time(), "wall_s": wall_s}
    )
    log.info("eval.job_finished", job=job.key, solved=solved, wall_s=round(wall_s, 3))
    return JobOutcome(job.key, len(plan.problems), len(kept), solved, len(undecided), wall_s)


def _pass_at_1(
    job: Job, journaled: Mapping[tuple[str, str], Mapping[str, Any]]
) -> dict[str, float]:
    """An oracle job's pass@1 per problem: the `candidate_correct` of the family job's
    results that did not fail as a whole (empty for any other job)."""
    return {
        pid: float(result["candidate_correct"])
        for (key, pid), result in journaled.items()
        if key == job.oracle_from
        and result.get("error") is None
        and result.get("candidate_correct") is not None
    }


def _oracle_strategy(strategy: Strategy, pass_at_1: float | None) -> Strategy:
    """compute_optimal choosing by the oracle bin of `pass_at_1`; as it is (the predicted
    bins) without one."""
    if (
        pass_at_1 is None
        or not isinstance(strategy, ComputeOptimal)
        or not isinstance(strategy.table, CalibrationTable)
    ):
        return strategy
    return dataclasses.replace(strategy, table=OracleChoice(strategy.table, pass_at_1))


async def _solve_each(
    solver: Solver,
    work: Sequence[tuple[Problem, Strategy]],
    n: int,
    seed: int | None,
    limit: int,
) -> AsyncIterator[Solution]:
    """Each problem solved with its own strategy, at most `limit` at once, yielded as it
    finishes (a failed problem as a `Solution` with `error`, as `solve_many` yields it)."""
    slots = asyncio.Semaphore(limit)

    async def one(problem: Problem, strategy: Strategy) -> Solution:
        async with slots:
            (solution,) = [
                s
                async for s in solver.solve_many(
                    [(problem.id, problem.problem)], strategy=strategy, n=n, seed=seed
                )
            ]
            return solution

    finished: asyncio.Queue[asyncio.Task[Solution]] = asyncio.Queue()
    pending: set[asyncio.Task[Solution]] = set()
    try:
        for problem, strategy in work:
            task = asyncio.create_task(one(problem, strategy))
            task.add_done_callback(finished.put_nowait)
            pending.add(task)
        while pending:
            done = await finished.get()
            pending.discard(done)
            yield done.result()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _budget_left(job: Job, kept: Sequence[Mapping[str, Any]]) -> float | None:
    """A budgeted job's batch budget for its problems still to do: what its journaled
    results did not spend (the whole budget on a fresh run)."""
    if job.budget_tokens is None:
        return None
    spent = math.fsum(
        float(r["usage"].get("completion_tokens", 0.0)) + float(r["usage"].get("prm_tokens", 0.0))
        for r in kept
    )
    return job.budget_tokens - spent


def check_same_tables(path: Path, config: Mapping[str, Any]) -> None:
    """Refuse to resume the journal at `path` when a compute_optimal job of `config` chose
    with another calibration table; any other difference is the journal's to name.

    Raises:
        ConfigError: naming the job and both tables (sha256 and recorded path).
    """
    try:
        with path.open("rb") as file:
            first = orjson.loads(file.readline())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return  # nothing to resume, or a journal that names its own fault when opened
    if not isinstance(first, dict):
        return
    before = _table_digests(first)
    for key, digest in _table_digests(config).items():
        old = before.get(key)
        if old is None or old == digest:
            continue
        old_path = first.get("info", {}).get(TABLE_INFO, "(path not recorded)")
        new_path = config.get("info", {}).get(TABLE_INFO, "(path not recorded)")
        raise ConfigError(
            f"cannot resume {path.parent}: its {key} results were chosen by the calibration"
            f" table {old_path} (sha256 {old[:12]}), not by {new_path} (sha256"
            f" {digest[:12]}); resume with the table it started with, or choose another"
            " output directory"
        )


def _table_digests(config: Mapping[str, Any]) -> dict[str, str]:
    """The table_sha256 of each job of a journal config that has one, by job key."""
    jobs = config.get("identity", {}).get("jobs", [])
    return {
        job["key"]: job["settings"]["table_sha256"]
        for job in jobs
        if "table_sha256" in job.get("settings", {})
    }


def _timed_out(result: Mapping[str, Any]) -> bool:
    """Whether a journaled result holds a grade math-verify did not decide."""
    return any(g["reason"] == "timeout" for gs in result["grades"].values() for g in gs)


async def _regrade(job: Job, result: Mapping[str, Any], equivalence: Equivalence) -> dict[str, Any]:
    """`result` (from the journal) with its timed-out grades decided again."""
    grades = await regrade_timeouts(
        equivalence,
        result["reference"],
        {s: [Grade.from_dict(g) for g in gs] for s, gs in result["grades"].items()},
    )
    regraded = {
        **result,
        "grades": {s: [g.to_dict() for g in gs] for s, gs in grades.items()},
        "regraded_from_t": result["t"],
        "t": time.time(),
    }
    log.info(
        "eval.regraded",
        job=job.key,
        problem_id=result["problem_id"],
        correct=headline_correct(job, regraded),
        still_undecided=_timed_out(regraded),
    )
    return regraded


async def _result(
    job: Job, problem: Problem, solution: Solution, equivalence: Equivalence
) -> dict[str, Any]:
    grades = await grade_solution(
        equivalence,
        problem.answer,
        solution,
        selections=job.selections,
        points=job.points,
        all_candidates=job.all_candidates,
    )
    details = solution.to_dict()
    del details["problem"], details["ledger"]  # the problem is in the data; usage is below
    result: dict[str, Any] = {
        "type": "result",
        "job": job.key,
        "problem_id": problem.id,
        "level": problem.level,
        "subject": problem.subject,
        "reference": problem.answer,
        "answer": solution.answer,
        "error": solution.error,
        "grades": {s: [g.to_dict() for g in gs] for s, gs in grades.items()},
        "usage": solution.ledger.summary(),
        "candidates": len(solution.candidates),
        "lost": len(solution.lost),
        "solution": details,
        "t": time.time(),
    }
    if job.grade_candidates:
        verdicts = await grade_answers(
            equivalence, problem.answer, (c.answer for c in solution.candidates)
        )
        right = sum(c.answer is not None and bool(verdicts[c.answer]) for c in solution.candidates)
        result["candidate_correct"] = (
            right / len(solution.candidates) if solution.candidates else 0.0
        )
        result["answer_verdicts"] = dict(verdicts)
    log.info(
        "eval.graded",
        job=job.key,
        problem_id=problem.id,
        answer=solution.answer,
        correct=headline_correct(job, result),
        error=solution.error,
    )
    return result


def headline_correct(job: Job, result: Mapping[str, Any]) -> bool:
    """Whether the job's own selection rule was right at its full budget."""
    grades = result["grades"].get(job.headline.selection) or []
    return bool(grades) and bool(grades[-1]["correct"])


class _Progress:
    """A tqdm bar on stderr: done/total, accuracy so far, generated tokens/s, retries, ETA."""

    def __init__(
        self, job: Job, total: int, finished: list[dict[str, Any]], *, enabled: bool
    ) -> None:
        from tqdm import tqdm  # optional dependency (asynctts[eval])

        self.job = job
        self.done = len(finished)
        self.correct = sum(headline_correct(job, r) for r in finished)
        self.errors = sum(r.get("error") is not None for r in finished)
        self.tokens = 0.0
        self.retries = 0
        self.started = time.monotonic()
        self.bar = tqdm(
            total=total,
            initial=self.done,
            desc=job.key,
            unit="problem",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        self._show()

    def update(self, result: Mapping[str, Any]) -> None:
        self.done += 1
        self.correct += headline_correct(self.job, result)
        self.errors += result.get("error") is not None
        usage = result["usage"]
        self.tokens += float(usage.get("completion_tokens", 0.0))
        self.retries += int(usage.get("retries", 0))
        self._show()
        self.bar.update(1)

    def _show(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        accuracy = self.correct / self.done if self.done else 0.0
        self.bar.set_postfix_str(
            f"acc={accuracy:.1%} tok/s={self.tokens / elapsed:,.0f}"
            f" retries={self.retries} errors={self.errors}",
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()
