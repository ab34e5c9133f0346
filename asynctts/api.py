"""`solve`, `solve_many` and `Solver`: the only place that wires strategies, backends and
transports together. Everything is checked before the first request is sent; per-problem
failures stay inside their problem.

A batch token budget (`solve_many(..., strategy="compute_optimal", budget_tokens=B)`): every
problem is probed; problems whose probe settled (or whose bin the table stops at the probe)
close at once; when all probes are in, the budget left (B minus the spend measured so far) is
allocated over the open problems (asynctts/allocation.py) and each runs its allotment. All
requests draw on one `BudgetGate`, so the run never spends more than B: a request that could
overshoot is not sent and its branch is lost ("batch budget exhausted")."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from asynctts.backends.context import (
    DEFAULT_SYSTEM_PROMPT,
    BudgetGate,
    ProblemContext,
    Sampling,
)
from asynctts.backends.policy import PolicyClient, check_turns
from asynctts.backends.prm import LogprobPRM, PoolingPRM
from asynctts.backends.templates import Rendering
from asynctts.batch_budget import BatchBudget, check_batch_budget
from asynctts.calibration import CalibrationTable, table_identity
from asynctts.endpoint import Endpoint
from asynctts.equivalence import Equivalence
from asynctts.errors import (
    AsyncttsError,
    BadResponse,
    BranchLost,
    ConfigError,
    ConnectFailed,
    EndpointError,
    EndpointUnreachable,
    HostNotFound,
    ModelNotFound,
    SolveFailed,
    TimedOut,
    TLSFailed,
    TransportError,
    format_key,
)
from asynctts.ledger import Ledger
from asynctts.logs import ensure_logging
from asynctts.progress import ProgressCallback, ProgressReporter
from asynctts.protocols import Finish, GenerateSteps, Path, ScoreSteps
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.compute_optimal import ComputeOptimal
from asynctts.search.dvts import DVTS
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.particle_filter import ParticleFilter
from asynctts.search.rebase import Rebase
from asynctts.search.revise import Revise
from asynctts.search.strategy import Strategy
from asynctts.search.weighted_best_of_n import WeightedBestOfN
from asynctts.solution import Candidate, Degradation, Solution, collect, pick, votes_of
from asynctts.trace import Trace, Widths
from asynctts.transport import Transport, TransportStatistics

if TYPE_CHECKING:
    from asynctts.metrics import SolverMetrics

log = structlog.get_logger("asynctts.api")

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        MajorityVote,
        BestOfN,
        WeightedBestOfN,
        BeamSearch,
        DVTS,
        ParticleFilter,
        Rebase,
        Revise,
    )
}

ScoringClient = PoolingPRM | LogprobPRM

# solve_many starts at most this many problems per event-loop turn.
_PROBLEMS_PER_TURN = 8

# Each attempt of the model check at open waits at most this long: a server lists its models
# in milliseconds, and a few seconds leave room for a slow link and a TLS handshake. (Below
# 5 s: aiohttp rounds longer timeouts up to a whole second.)
CHECK_ATTEMPT_TIMEOUT_S = 4.0

ProblemItem = str | tuple[str, str] | Mapping[str, Any]
Calibration = str | os.PathLike[str] | CalibrationTable


def make_strategy(strategy: str | Strategy, calibration: Calibration | None = None) -> Strategy:
    """A strategy instance from its name (default settings) or as given; "compute_optimal"
    takes its calibration table (a `CalibrationTable` or the path of one)."""
    if strategy == ComputeOptimal.name:
        if calibration is None:
            raise ConfigError(
                "strategy 'compute_optimal' needs calibration=TABLE: the calibration.json "
                "`asynctts calibrate` writes (or a CalibrationTable)"
            )
        if isinstance(calibration, CalibrationTable):
            return ComputeOptimal(table=calibration)
        return ComputeOptimal(table=CalibrationTable.load(calibration))
    if calibration is not None and not isinstance(strategy, ComputeOptimal):
        raise ConfigError(f"calibration= is for strategy 'compute_optimal', not {strategy!r}")
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            choices = sorted([*STRATEGIES, ComputeOptimal.name])
            raise ConfigError(f"unknown strategy {strategy!r}; choose one of {choices}")
        return STRATEGIES[strategy]()
    if not hasattr(strategy, "run"):
        raise ConfigError(f"strategy {strategy!r} is neither a name nor a strategy object")
    return strategy


def check_request(
    problem: object, strategy: Strategy, n: object, has_prm: bool, seed: object = None
) -> None:
    """Every argument problem a solve can have, raised before any request is sent."""
    if not isinstance(problem, str):
        raise ConfigError(f"problem must be a str, got {type(problem).__name__}")
    if not problem.strip():
        raise ConfigError("problem is empty")
    try:
        problem.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(
            f"problem is not valid Unicode text at character {err.start}: {err.reason}"
        ) from err
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"n must be an int, got {n!r}")
    if n < 1:
        raise ConfigError(f"n={n}: the budget must be >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an int or None, got {seed!r}")
    if strategy.needs_prm and not has_prm:
        raise ConfigError(f"strategy {strategy.name!r} needs a PRM endpoint (prm=...)")
    try:
        strategy.check_budget(n)
    except ValueError as err:
        raise ConfigError(f"strategy {strategy.name!r}: {err}") from err


def check_turns_rendered(strategy: Strategy, policy: Endpoint) -> None:
    """Refuses a strategy that sends earlier turns (prompted revision) to a policy that cannot
    render them (a plain `prompt_format`), before any request.

    Raises:
        ConfigError: naming the strategy, the endpoint and its prompt_format.
    """
    if isinstance(strategy, Revise) and strategy.needs_turns:
        check_turns(policy, f"strategy {strategy.name!r} with revision='prompted'")


def problem_key(problem: str) -> str:
    """A stable id for a problem given without one (seeds derive from it)."""
    return hashlib.blake2b(problem.encode(), digest_size=6).hexdigest()


async def run_search(
    *,
    problem_id: str,
    problem: str,
    strategy: Strategy,
    n: int,
    generate: GenerateSteps,
    score: ScoreSteps,
    equivalence: Equivalence,
    ledger: Ledger,
    keep_trace: bool = False,
) -> Solution:
    """Run `strategy` over the two protocols and turn its results into a `Solution`.

    Raises:
        SolveFailed: every branch was lost.
    """
    # The whole tree only when asked for: otherwise count expansions per iteration alone.
    trace = Trace(problem=problem, strategy=strategy.name, n=n) if keep_trace else None
    if trace is not None:
        widths = trace.widths
        generate, score = trace.wrap(generate, score)
    else:
        widths = Widths()
        generate = widths.wrap(generate)
    ledger.start()
    decision: Mapping[str, Any] | None = None
    try:
        if isinstance(strategy, ComputeOptimal):
            decision, results = await strategy.run_deciding(Path(), n, generate, score)
        else:
            results = await strategy.run(Path(), n, generate, score)
    except BaseExceptionGroup as group:
        first = _first_of(group)
        if first is group:
            raise
        raise first from None  # its own traceback still shows where it was raised
    finally:
        ledger.stop()
    rows, lost, unfinished = collect(results, strategy.aggregate)
    beyond = [row.index for row in rows if row.index >= n]
    if beyond:  # the votes at budget n would leave them out, the answer would not
        raise RuntimeError(
            f"strategy {strategy.name!r} returned paths at positions {beyond} with n={n}: "
            "every path must be among the first n results"
        )
    if not rows:
        raise SolveFailed(problem_id, [r for r in results if isinstance(r, BranchLost)])
    groups = await _group_answers(equivalence, [row.answer for row in rows])
    candidates = tuple(
        Candidate(
            index=row.index,
            branch=format_key(row.path.key),
            steps=row.path.steps,
            scores=row.path.scores,
            value=row.value,
            finish=row.path.finish,
            answer=row.answer,
            group=group,
        )
        for row, group in zip(rows, groups, strict=True)
    )
    width = getattr(strategy, "width", None)
    degradation = Degradation(
        lost_generating=sum(1 for b in lost if b.stage == "generating"),
        lost_scoring=sum(1 for b in lost if b.stage == "scoring"),
        cut=sum(1 for c in candidates if c.finish is Finish.LENGTH),
        unfinished=unfinished,
        widths=widths.iteration_widths(),
        planned_width=n // width if isinstance(width, int) else None,
    )
    answer = pick(votes_of(candidates, n), strategy.selection)
    if trace is not None:
        trace.close(results, answer=answer)
    return Solution(
        problem_id=problem_id,
        problem=problem,
        strategy=strategy.name,
        n=n,
        answer=answer,
        candidates=candidates,
        lost=tuple(lost),
        ledger=ledger,
        degradation=degradation,
        trace=trace,
        decision=decision,
    )


async def _group_answers(
    equivalence: Equivalence, answers: Sequence[str | None]
) -> list[int | None]:
    """`equivalence.group(answers)`, asked for each distinct answer once: n samples mostly
    repeat a few answers. Group ids number answers in first-seen order, so the distinct
    answers (kept in first-seen order) get the ids the full list would."""
    distinct = list(dict.fromkeys(a for a in answers if a is not None))
    group_of = dict(zip(distinct, await equivalence.group(distinct), strict=True))
    return [None if answer is None else group_of[answer] for answer in answers]


def _first_of(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Strategies run branches in TaskGroups; a problem-level error (PromptTooLong, a bad PRM
    response shape, ...) reaches the caller as itself rather than wrapped in a group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending[:0] = current.exceptions
        else:
            leaves.append(current)
    errors = [e for e in leaves if isinstance(e, AsyncttsError)]
    return errors[0] if errors and len(errors) == len(leaves) else group


class Solver:
    """Long-lived connections to a policy (and PRM) endpoint, shared by every solve.

    ```
    async with Solver(policy=policy, prm=prm) as solver:
        sol = await solver.solve("What is 1+1?", strategy="best_of_n", n=16, seed=0)
    ```
    Entering checks that each endpoint answers and serves its model
    (`EndpointUnreachable`, `ModelNotFound`).

    With `metrics_port` (needs `pip install 'asynctts[metrics]'`), Prometheus metrics of every
    request and problem are served at `metrics_url` while the solver is open: on
    `metrics_host` (127.0.0.1 by default), port 0 for any free one (asynctts/metrics.py).
    """

    def __init__(
        self,
        *,
        policy: Endpoint,
        prm: Endpoint | None = None,
        sampling: Sampling | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        equivalence: Equivalence | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if not isinstance(policy, Endpoint):
            raise ConfigError(f"policy must be an Endpoint, got {type(policy).__name__}")
        if prm is not None and not isinstance(prm, Endpoint):
            raise ConfigError(f"prm must be an Endpoint or None, got {type(prm).__name__}")
        self.policy = policy
        self.prm = prm
        self.sampling = sampling or Sampling()
        self.system_prompt = system_prompt
        self._equivalence = equivalence
        self._stack = AsyncExitStack()
        self._generator: PolicyClient | None = None
        self._scorer: ScoringClient | None = None
        self._groups: Equivalence | None = None
        self._transports: dict[str, Transport] = {}
        self._metrics = _metrics_for(metrics_port, self.statistics)
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._metrics_url: str | None = None

    @property
    def metrics_url(self) -> str | None:
        """Where the Prometheus metrics are served while the solver is open (None: no
        metrics_port, or not open)."""
        return self._metrics_url

    async def __aenter__(self) -> Solver:
        ensure_logging()
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    @property
    def prm_rendering(self) -> Rendering | None:
        """Where the PRM's prompts are rendered once the solver is open: "client" (a local
        tokenizer's chat template or `prompt_format`; several paths per request) or "server"
        (no tokenizer here: chat messages, one path per request). None without a PRM."""
        return None if self._scorer is None else self._scorer.rendering

    def statistics(self) -> dict[str, TransportStatistics]:
        """A snapshot per endpoint ("policy", "prm"): requests in flight and waiting, the
        current in-flight cap (adaptive concurrency moves it), retries, failures."""
        return {name: t.statistics() for name, t in self._transports.items()}

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _open(self) -> None:
        stack = self._stack
        observe = None
        if self._metrics is not None and self._metrics_port is not None:
            from asynctts.metrics import MetricsServer  # optional: asynctts[metrics]

            # first: a port in use fails before any request
            server = await stack.enter_async_context(
                MetricsServer(
                    self._metrics.registry, port=self._metrics_port, host=self._metrics_host
                )
            )
            self._metrics_url = server.url
            stack.callback(setattr, self, "_metrics_url", None)
            observe = self._metrics.observe
        policy_transport = await stack.enter_async_context(
            Transport(self.policy, name="policy", observe=observe)
        )
        self._transports["policy"] = policy_transport
        prm_transport = None
        if self.prm is not None:
            prm_transport = await stack.enter_async_context(
                Transport(self.prm, name="prm", observe=observe)
            )
            self._transports["prm"] = prm_transport
            # Built before any request, so a PRM that cannot have its tokenizer fails first;
            # it may load one (disk, or the hub after a short probe): off the event loop.
            scorer = await asyncio.to_thread(_scorer_for, self.prm, prm_transport)
            stack.push_async_callback(scorer.aclose)
            self._scorer = scorer
        checks = [_check_model(policy_transport, self.policy)]
        if prm_transport is not None and self.prm is not None:
            checks.append(_check_model(prm_transport, self.prm))
        # both checks run to the end; the first error is raised as itself, not in a group
        outcomes = await asyncio.gather(*checks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        context = outcomes[0]
        if isinstance(context, int) and self.sampling.max_tokens > context:
            # vLLM shortens max_tokens to what the prompt leaves of the context, but rejects a
            # max_tokens above the context itself (checked on vLLM 0.32): ask for no more
            log.info(
                "max_tokens capped at the policy's context",
                max_tokens=self.sampling.max_tokens,
                max_model_len=context,
            )
            self.sampling = replace(self.sampling, max_tokens=context)
        # clients may load a tokenizer (disk or hub): keep that off the event loop
        self._generator = await asyncio.to_thread(
            PolicyClient, self.policy, policy_transport, sampling=self.sampling
        )
        if self._equivalence is None:
            # the process's shared workers: a one-shot solve() starts no process after the first
            self._groups = await stack.enter_async_context(Equivalence(share_workers=True))
        else:
            self._groups = self._equivalence

    async def solve(
        self,
        problem: str,
        *,
        strategy: str | Strategy,
        n: int,
        seed: int | None = None,
        problem_id: str | None = None,
        trace: bool = False,
        calibration: Calibration | None = None,
    ) -> Solution:
        """Solve one problem.

        Args:
            problem: the problem statement.
            strategy: a name in `STRATEGIES` or a configured strategy object.
            n: the budget (number of samples, beams or subtree leaves).
            seed: makes every request seeded (same seed, same result); None samples freely.
            problem_id: an id for logs, ledgers and seeds; default a hash of the problem.
            trace: keep the search tree in `Solution.trace` (JSON and a picture on demand).
            calibration: the table of strategy="compute_optimal" (the calibration.json of
                `asynctts calibrate`, or a `CalibrationTable`), made for this policy, PRM and
                prompt format.

        Returns:
            The `Solution`.

        Raises:
            ConfigError: bad arguments (nothing was sent).
            SolveFailed: every branch was lost.
            PromptTooLong: the problem does not fit the model's context.
        """
        chosen = self._checked(make_strategy(strategy, calibration))
        check_request(problem, chosen, n, self.prm is not None, seed)
        pid = problem_id if problem_id is not None else problem_key(problem)
        return await self._solve(problem, chosen, n, seed, pid, Ledger(), trace)

    def _checked(self, strategy: Strategy) -> Strategy:
        """`strategy`, once a compute-optimal table is known to fit these endpoints and a
        strategy that sends earlier turns (prompted revision) a policy that renders them."""
        if isinstance(strategy, ComputeOptimal) and isinstance(strategy.table, CalibrationTable):
            strategy.table.check_identity(table_identity(self.policy, self.prm, self.system_prompt))
        check_turns_rendered(strategy, self.policy)
        return strategy

    async def _solve(
        self,
        problem: str,
        chosen: Strategy,
        n: int,
        seed: int | None,
        pid: str,
        ledger: Ledger,
        trace: bool,
        gate: BudgetGate | None = None,
    ) -> Solution:
        if self._generator is None or self._groups is None:
            raise RuntimeError("Solver is not open: use `async with Solver(...) as solver`")
        ctx = ProblemContext(
            problem_id=pid,
            problem=problem,
            system_prompt=self.system_prompt,
            seed=seed,
            ledger=ledger,
            gate=gate,
        )
        generator, scorer = self._generator, self._scorer

        # Plain functions returning the backends' coroutines: an `async def` wrapper would add
        # a coroutine object per request (measured in benchmarks/overhead.py).
        def generate(
            path: Path, k: int, *, to_end: bool = False, greedy: bool = False
        ) -> Coroutine[Any, Any, list[Path]]:
            return generator.generate(ctx, path, k, to_end=to_end, greedy=greedy)

        def score(paths: Sequence[Path]) -> Coroutine[Any, Any, list[Path]]:
            if scorer is None:
                raise ConfigError(f"strategy {chosen.name!r} asked for PRM scores; no prm set")
            return scorer.score(ctx, paths)

        with structlog.contextvars.bound_contextvars(problem_id=pid):
            try:
                solution = await run_search(
                    problem_id=pid,
                    problem=problem,
                    strategy=chosen,
                    n=n,
                    generate=generate,
                    score=score,
                    equivalence=self._groups,
                    ledger=ctx.ledger,
                    keep_trace=trace,
                )
            except (SolveFailed, EndpointError) as err:
                if self._metrics is not None:
                    self._metrics.problem_failed(err)
                raise
            if self._metrics is not None:
                self._metrics.problem_solved(solution.lost)
            log.info(
                "solved",
                strategy=chosen.name,
                n=n,
                answer=solution.answer,
                lost=len(solution.lost),
                degraded=solution.degradation.notes() or None,
                **ctx.ledger.summary(),
            )
            return solution

    async def solve_many(
        self,
        problems: Iterable[ProblemItem],
        *,
        strategy: str | Strategy,
        n: int,
        seed: int | None = None,
        max_problems_in_flight: int = 64,
        calibration: Calibration | None = None,
        budget_tokens: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[Solution]:
        """Solve many problems concurrently, yielding each `Solution` as it finishes.

        Items are problem strings, (id, problem) pairs, or mappings with "problem" and an
        optional "id" or "unique_id". At most `max_problems_in_flight` run at once. A
        problem that fails as a whole is yielded with `error` set; it never stops the rest.
        Arguments are checked for every problem before the first request is sent.

        `budget_tokens` (strategy "compute_optimal" only): one budget of policy generated +
        PRM prompt tokens for all the problems (see the module docstring); n is then each
        problem's largest budget. Problems waiting for the allocation do not count as in
        flight. `Solution.decision` records each problem's "allocated" option and
        "allocated_n".

        `on_progress` is called with a `Progress` (problems done, failed and in all, the usage
        so far, the problem just finished) before each `Solution` is yielded; an error it
        raises is logged and the run goes on (asynctts/progress.py).

        To stop early, iterate inside `contextlib.aclosing(solver.solve_many(...))`: leaving
        it cancels the problems still running at once (a plain `break` leaves that to the
        generator's finalizer, which runs when Python collects it).
        """
        if max_problems_in_flight < 1:
            raise ConfigError(f"max_problems_in_flight={max_problems_in_flight}: need >= 1")
        chosen = self._checked(make_strategy(strategy, calibration))
        items = [_as_item(i, item) for i, item in enumerate(problems)]
        for _, text in items:
            check_request(text, chosen, n, self.prm is not None, seed)
        reporter = None if on_progress is None else ProgressReporter(len(items), on_progress)
        if budget_tokens is not None:
            budgeted = check_batch_budget(chosen, budget_tokens, len(items), n)
            async for solution in self._solve_budgeted(
                items, budgeted, n, seed, BudgetGate(budget_tokens), max_problems_in_flight
            ):
                _report(reporter, solution)
                yield solution
            return
        # Finished problems arrive on a queue (one done-callback each): `asyncio.wait` over
        # the pending set would cost O(problems in flight) per finished problem, 20% of the
        # CPU at 640 in flight (benchmarks/overhead.py).
        finished: asyncio.Queue[asyncio.Task[Solution]] = asyncio.Queue()
        pending: set[asyncio.Task[Solution]] = set()
        queue = iter(items)
        started = 0
        try:
            while True:
                for pid, text in queue:
                    task = asyncio.create_task(self._solve_one(pid, text, chosen, n, seed))
                    task.add_done_callback(finished.put_nowait)
                    pending.add(task)
                    started += 1
                    if started % _PROBLEMS_PER_TURN == 0:
                        # Starting hundreds of problems at once (at the start, or after a
                        # burst of them finished) would run all their first requests in one
                        # loop turn: a stall of seconds at thousands of requests, and a burst
                        # of allocations that costs a third more CPU in the garbage collector
                        # at 4096 in flight (benchmarks/scale.py, overhead.py).
                        await asyncio.sleep(0)
                    if len(pending) >= max_problems_in_flight:
                        break
                if not pending:
                    return
                done = await finished.get()
                pending.discard(done)
                solution = done.result()
                _report(reporter, solution)
                yield solution
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _solve_budgeted(
        self,
        items: Sequence[tuple[str, str]],
        strategy: ComputeOptimal,
        n: int,
        seed: int | None,
        gate: BudgetGate,
        max_problems_in_flight: int,
    ) -> AsyncIterator[Solution]:
        slots = asyncio.Semaphore(max_problems_in_flight)
        batch = BatchBudget(strategy, n, gate, len(items), slots)

        async def one(position: int, pid: str, problem: str) -> Solution:
            allotted = replace(strategy, allot=partial(batch.allot, position))
            try:
                async with slots:
                    return await self._solve_one(pid, problem, allotted, n, seed, gate)
            finally:
                batch.leave(position)  # a problem that failed before its probe was in

        finished: asyncio.Queue[asyncio.Task[Solution]] = asyncio.Queue()
        pending: set[asyncio.Task[Solution]] = set()
        try:
            for position, (pid, problem) in enumerate(items):
                task = asyncio.create_task(one(position, pid, problem))
                task.add_done_callback(finished.put_nowait)
                pending.add(task)
                if (position + 1) % _PROBLEMS_PER_TURN == 0:
                    await asyncio.sleep(0)  # as in solve_many
            while pending:
                done = await finished.get()
                pending.discard(done)
                yield done.result()
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _solve_one(
        self,
        pid: str,
        problem: str,
        strategy: Strategy,
        n: int,
        seed: int | None,
        gate: BudgetGate | None = None,
    ) -> Solution:
        ledger = Ledger() if gate is None else gate.ledger()
        try:
            return await self._solve(problem, strategy, n, seed, pid, ledger, False, gate)
        except (SolveFailed, EndpointError) as err:
            log.warning("problem failed", problem_id=pid, error=str(err))
            lost = collect(err.lost, strategy.aggregate)[1] if isinstance(err, SolveFailed) else []
            return Solution(
                problem_id=pid,
                problem=problem,
                strategy=strategy.name,
                n=n,
                answer=None,
                candidates=(),
                lost=tuple(lost),
                ledger=ledger,
                error=f"{type(err).__name__}: {err}",
            )


def _report(reporter: ProgressReporter | None, solution: Solution) -> None:
    if reporter is not None:
        failed = solution.error is not None
        reporter.finished(solution.problem_id, failed=failed, usage=solution.ledger.totals())


def _metrics_for(
    port: int | None, statistics: Callable[[], Mapping[str, TransportStatistics]]
) -> SolverMetrics | None:
    """A Solver's metrics when it is given a port (checked by `_check_metrics_port`)."""
    if port is None:
        return None
    _check_metrics_port(port)
    from asynctts.metrics import SolverMetrics

    return SolverMetrics(statistics)


def _check_metrics_port(port: object) -> None:
    """Raises ConfigError for a port that is not an int in 0..65535, or when prometheus_client
    (the optional dependency asynctts.metrics needs) is missing."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port={port!r}: need an int in 0..65535 (0: any free port)")
    try:
        import asynctts.metrics  # noqa: F401  (optional: asynctts[metrics])
    except ImportError as err:
        raise ConfigError(
            f"metrics_port={port} needs prometheus_client, which is not installed ({err}):"
            " pip install 'asynctts[metrics]'"
        ) from None


def check_metrics(port: int, host: str = "127.0.0.1") -> None:
    """What `Solver(metrics_port=port, metrics_host=host)` would refuse, checked now: a bad
    port, prometheus_client missing, an address it cannot listen on (a port in use).

    Raises:
        ConfigError: naming the port, the host and what to do.
    """
    _check_metrics_port(port)
    from asynctts.metrics import check_listenable

    check_listenable(host, port)


def _as_item(index: int, item: ProblemItem) -> tuple[str, str]:
    if isinstance(item, str):
        return f"p{index}", item
    if isinstance(item, tuple) and len(item) == 2:
        return str(item[0]), item[1]
    if isinstance(item, Mapping):
        if "problem" not in item:
            raise ConfigError(f"problem #{index} has no 'problem' field: keys {sorted(item)}")
        pid = item.get("id", item.get("unique_id", f"p{index}"))
        return str(pid), item["problem"]
    raise ConfigError(
        f"problem #{index} is a {type(item).__name__}; give a str, an (id, problem) pair "
        "or a mapping with 'problem'"
    )


def _scorer_for(endpoint: Endpoint, transport: Transport) -> ScoringClient:
    if endpoint.scoring == "pooling":
        return PoolingPRM(endpoint, transport)
    return LogprobPRM(endpoint, transport)


async def _check_model(
    transport: Transport, endpoint: Endpoint, url: str | None = None, root: str | None = None
) -> int | None:
    """Check that the endpoint (`url` of it, at `root`, when it has several) answers and
    serves its model; return the model's context length when the server says it (vLLM's
    `max_model_len`).

    The check gives up after `endpoint.check_timeout_s`, retries included, each attempt
    waiting at most `CHECK_ATTEMPT_TIMEOUT_S`. Its failures are `EndpointUnreachable`, whose
    message carries the transport's: the transport error is not chained, it would only repeat
    that message under a second traceback.

    Several URLs are checked at once. One serving another model fails the check
    (`ModelNotFound` naming it); one that does not answer (or not like an OpenAI-compatible
    server) is skipped with a logged warning, for the transport's health checks to bring
    back, unless none answers (`EndpointUnreachable` naming each). The context is the
    smallest the servers report.
    """
    if url is None:
        if len(endpoint.urls) > 1:
            return await _check_each(transport, endpoint)
        url = endpoint.urls[0]  # checked here, not one call down: a traceback line less
    budget = endpoint.check_timeout_s
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        listing = await transport.get_json(
            "/v1/models",
            attempt_timeout_s=min(CHECK_ATTEMPT_TIMEOUT_S, budget),
            deadline_s=budget,
            root=root,
        )
    except TimedOut as err:
        tries = f"{err.attempts} attempt{'s' if err.attempts > 1 else ''}"
        raise EndpointUnreachable(
            url,
            f"it did not answer GET /v1/models within {loop.time() - started:.1f} s "
            f"({tries}; Endpoint.check_timeout_s={budget})",
        ) from None
    except BadResponse as err:
        raise EndpointUnreachable(
            url, f"it does not answer like an OpenAI-compatible server: {err}"
        ) from None
    except (ConnectFailed, HostNotFound, TLSFailed) as err:
        raise EndpointUnreachable(url, str(err)) from None
    except TransportError as err:
        raise EndpointUnreachable(url, f"GET /v1/models failed: {err}") from None
    try:
        served = [str(m["id"]) for m in listing["data"]]
    except (KeyError, TypeError):
        raise EndpointUnreachable(url, f"GET /v1/models answered {str(listing)[:200]!r}") from None
    if endpoint.model not in served:
        raise ModelNotFound(url, endpoint.model, served)
    entry = listing["data"][served.index(endpoint.model)]
    context = entry.get("max_model_len") if isinstance(entry, dict) else None
    return context if isinstance(context, int) and not isinstance(context, bool) else None


async def _check_each(transport: Transport, endpoint: Endpoint) -> int | None:
    """`_check_model` of an endpoint with several URLs, all at once."""
    urls = list(zip(endpoint.urls, endpoint.root_urls, strict=True))
    outcomes = await asyncio.gather(
        *(_check_model(transport, endpoint, url, root) for url, root in urls),
        return_exceptions=True,
    )
    contexts: list[int | None] = []
    unreachable: list[tuple[str, str, EndpointUnreachable]] = []
    for (url, root), outcome in zip(urls, outcomes, strict=True):
        if isinstance(outcome, EndpointUnreachable):
            unreachable.append((url, root, outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            contexts.append(outcome)
    if not contexts:
        raise EndpointUnreachable(
            ", ".join(endpoint.urls),
            f"none of its {len(urls)} URLs answered: "
            + "; ".join(f"{url}: {error.reason}" for url, _, error in unreachable),
        )
    for url, root, error in unreachable:
        transport.skip_url(root, f"{url} failed its check at open: {error.reason}")
    known = [context for context in contexts if context is not None]
    return min(known) if known else None


async def solve(
    problem: str,
    *,
    strategy: str | Strategy,
    n: int,
    policy: Endpoint,
    prm: Endpoint | None = None,
    seed: int | None = None,
    sampling: Sampling | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    problem_id: str | None = None,
    trace: bool = False,
    calibration: Calibration | None = None,
) -> Solution:
    """Solve one problem with a fresh `Solver` (see `Solver.solve` for the arguments).

    Each call opens connections and checks the model (a few ms over an open `Solver` against
    a local server, benchmarks/one_shot.py); the answer-grouping worker process starts once per
    process, on first need. For many problems use `solve_many`, or keep a `Solver` open: it
    shares connections."""
    chosen = make_strategy(strategy, calibration)
    check_request(problem, chosen, n, prm is not None, seed)
    async with Solver(
        policy=policy, prm=prm, sampling=sampling, system_prompt=system_prompt
    ) as solver:
        return await solver.solve(
            problem, strategy=chosen, n=n, seed=seed, problem_id=problem_id, trace=trace
        )


async def solve_many(
    problems: Iterable[ProblemItem],
    *,
    strategy: str | Strategy,
    n: int,
    policy: Endpoint,
    prm: Endpoint | None = None,
    seed: int | None = None,
    sampling: Sampling | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_problems_in_flight: int = 64,
    calibration: Calibration | None = None,
    budget_tokens: float | None = None,
    on_progress: ProgressCallback | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> AsyncIterator[Solution]:
    """Solve many problems concurrently in this event loop; yields each `Solution` as it
    finishes (see `Solver.solve_many`; `metrics_port` and `metrics_host` as for `Solver`)."""
    async with Solver(
        policy=policy,
        prm=prm,
        sampling=sampling,
        system_prompt=system_prompt,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    ) as solver:
        async for solution in solver.solve_many(
            problems,
            strategy=strategy,
            n=n,
            seed=seed,
            max_problems_in_flight=max_problems_in_flight,
            calibration=calibration,
            budget_tokens=budget_tokens,
            on_progress=on_progress,
        ):
            yield solution
