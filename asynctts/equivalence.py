"""Answer equivalence for votes and grading, decided by math-verify in worker processes.

Rules:
- Answers are compared by their `answers.normalize` form. Equal forms are one group at once,
  without math-verify (the fast path: most votes are mostly identical strings).
- Distinct forms go to a worker process as ONE task per `group()` call. There each distinct
  form is parsed once and compared with the representative of each group so far, in
  first-seen order; it joins the first group whose representative it equals, else it starts
  a new group. So d distinct forms cost at most d(d-1)/2 comparisons, capped at `max_pairs`.
- math-verify's equality is neither symmetric nor transitive ("(1,2)" equals "\\{1,2\\}",
  which equals "\\{2,1\\}", which equals "(2,1)"). For votes two forms are equal only when
  math-verify says so in both directions and both or neither are sets; `equal()` (grading)
  is math-verify's verify(gold, answer) unchanged, so scores match published ones.
- math-verify never runs on the event loop (it is CPU-bound and cannot be interrupted from
  another thread). Two deadlines bound it: inside the worker, each parse or comparison gets
  at most `comparison_timeout_s` and the whole task at most `timeout_s` (SIGALRM timers, which
  interrupt Python code); outside, pebble kills a worker still busy `_KILL_GRACE_S` after
  that (stuck in C code, Math-Verify#65) and starts a new one.
- Whatever could not be decided (a timeout, the cap, a killed or crashed worker) falls back
  to string grouping: those answers are never "equal" by accident. Each fallback is logged.
- So: "0.5" = "\\frac{1}{2}" = "\\dfrac12"; "90^\\circ" = "90"; "\\text{(A)}" = "A";
  "\\{1,2\\}" = "\\{2,1\\}" (sets); "(1,2)" != "(2,1)" (tuples); "[0,1)" != "[0,1]"
  (intervals); "(1,2)" != "\\{1,2\\}". "10\\%" = "10" (math-verify says so, and `normalize`
  drops the percent sign), so "10\\%" is not grouped with "0.1".
- Workers are started with the "spawn" method, lazily on first need, so a program using this
  module must guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import TypeVar

import pebble
import structlog

from asynctts.answers import normalize
from asynctts.errors import ConfigError

__all__ = ["Equivalence", "EquivalenceStatistics"]

log = structlog.get_logger("asynctts.equivalence")

# A worker still busy this long after its own deadline is stuck in uninterruptible code.
_KILL_GRACE_S = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class EquivalenceStatistics:
    """Counters since the `Equivalence` was made."""

    worker_tasks: int = 0  # tasks sent to a worker (fast-path groupings send none)
    comparisons: int = 0  # math-verify comparisons the workers ran
    timeouts: int = 0  # parses or comparisons cut by a deadline inside a worker
    skipped_forms: int = 0  # distinct forms grouped by string only (cap or task deadline)
    lost_tasks: int = 0  # tasks whose worker was killed at the outer deadline or crashed


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Equivalence:
    """Groups answers by mathematical equivalence using math-verify in worker processes.

    Use as `async with Equivalence() as equivalence: ...` (or call `aclose()`); the worker
    processes start on the first call that needs one.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        timeout_s: float = 5.0,
        max_pairs: int = 2000,
        comparison_timeout_s: float = 1.0,
    ) -> None:
        """
        Args:
            workers: worker processes.
            timeout_s: wall-clock budget of one worker task (one `group()` or `equal()`);
                forms not reached in time are grouped by string.
            max_pairs: most comparisons one `group()` call makes; beyond, forms are grouped
                by string.
            comparison_timeout_s: most time one parse or comparison may take; one that takes
                longer counts as "not equal".

        Raises:
            ConfigError: a value out of range (named in the message).
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers={workers!r}: need an int >= 1")
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 0:
            raise ConfigError(f"max_pairs={max_pairs!r}: need an int >= 0")
        for name, value in (
            ("timeout_s", timeout_s),
            ("comparison_timeout_s", comparison_timeout_s),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r}: need a finite number of seconds > 0")
        self._workers = workers
        self._timeout_s = float(timeout_s)
        self._max_pairs = max_pairs
        self._comparison_timeout_s = float(comparison_timeout_s)
        self._pool: pebble.ProcessPool | None = None
        self._state = _State.OPEN
        self._stats = EquivalenceStatistics()

    async def __aenter__(self) -> Equivalence:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the worker processes (a task still running is abandoned). Idempotent."""
        self._state = _State.CLOSED
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated
            await asyncio.to_thread(pool.join)

    def statistics(self) -> EquivalenceStatistics:
        return self._stats

    async def group(self, answers: Sequence[str | None]) -> list[int | None]:
        """Group ids of `answers`: equal ids for equivalent answers.

        Args:
            answers: answer strings (e.g. from `answers.extract_boxed`), None for no answer.

        Returns:
            One id per answer, numbered in first-seen order (0, 1, 2, ...); None for None.

        Raises:
            TypeError: an answer is neither a str nor None.
            RuntimeError: the `Equivalence` is closed.
        """
        self._check_open()
        form_index: dict[str, int] = {}  # normalized form -> its index, in first-seen order
        form_of: list[int | None] = []
        for position, answer in enumerate(answers):
            if answer is None:
                form_of.append(None)
                continue
            if not isinstance(answer, str):
                raise TypeError(f"answers[{position}]={answer!r}: need a str or None")
            form_of.append(form_index.setdefault(normalize(answer), len(form_index)))
        representative = await self._group_forms(list(form_index))
        group_ids: dict[int, int] = {}
        return [
            None if form is None else group_ids.setdefault(representative[form], len(group_ids))
            for form in form_of
        ]

    async def equal(self, gold: str, answer: str) -> bool | None:
        """Whether `answer` is mathematically equal to `gold` (grading).

        Both are compared in their `normalize` form: math-verify's
        `verify(parse(gold), parse(answer))`.

        Returns:
            True or False; None when it could not be decided in time (a deadline, or the
            worker was killed or crashed).

        Raises:
            TypeError: `gold` or `answer` is not a str.
            RuntimeError: the `Equivalence` is closed.
        """
        self._check_open()
        for name, value in (("gold", gold), ("answer", answer)):
            if not isinstance(value, str):
                raise TypeError(f"{name}={value!r}: need a str")
        gold_form, answer_form = normalize(gold), normalize(answer)
        if gold_form == answer_form:
            return True
        verdict = await self._run(
            _equal_in_worker, gold_form, answer_form, self._timeout_s, self._comparison_timeout_s
        )
        if isinstance(verdict, _Lost):
            log.warning("equivalence.equal_undecided", gold=gold_form, answer=answer_form)
            return None
        self._count(comparisons=1, timeouts=int(verdict.equal is None))
        if verdict.equal is None:
            log.warning("equivalence.equal_timed_out", gold=gold_form, answer=answer_form)
        return verdict.equal

    async def _group_forms(self, forms: list[str]) -> list[int]:
        """The representative (a form index) of each distinct form's group."""
        by_string = list(range(len(forms)))
        if len(forms) < 2 or self._max_pairs == 0:
            if len(forms) >= 2:
                self._count(skipped_forms=len(forms) - 1)
            return by_string
        grouping = await self._run(
            _group_in_worker,
            forms,
            self._max_pairs,
            self._timeout_s,
            self._comparison_timeout_s,
        )
        if isinstance(grouping, _Lost):
            log.warning("equivalence.grouped_by_string", forms=len(forms))
            return by_string
        self._count(
            comparisons=grouping.comparisons,
            timeouts=grouping.timeouts,
            skipped_forms=grouping.skipped_forms,
        )
        if grouping.timeouts or grouping.skipped_forms:
            log.warning(
                "equivalence.partly_grouped_by_string",
                forms=len(forms),
                comparisons=grouping.comparisons,
                timeouts=grouping.timeouts,
                skipped_forms=grouping.skipped_forms,
                max_pairs=self._max_pairs,
                timeout_s=self._timeout_s,
            )
        return list(grouping.representative)

    async def _run(self, function: Callable[..., _T], *args: object) -> _T | _Lost:
        """Run `function(*args)` in a worker; `_LOST` when it was killed or crashed."""
        if self._pool is None:
            self._pool = pebble.ProcessPool(
                max_workers=self._workers,
                initializer=_init_worker,
                context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            )
            log.info("equivalence.pool_started", workers=self._workers)
        self._count(worker_tasks=1)
        future = self._pool.schedule(function, args=args, timeout=self._timeout_s + _KILL_GRACE_S)
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:
            reason = f"no result within {self._timeout_s + _KILL_GRACE_S} s: worker killed"
        except pebble.ProcessExpired as expired:
            reason = f"worker died with exit code {expired.exitcode}"
        self._count(lost_tasks=1)
        log.warning("equivalence.worker_task_lost", reason=reason, task=function.__name__)
        return _LOST

    def _count(self, **increments: int) -> None:
        current = self._stats
        totals = {name: getattr(current, name) + count for name, count in increments.items()}
        self._stats = dataclasses.replace(current, **totals)

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this Equivalence is closed")


class _Lost(enum.Enum):
    LOST = "lost"


_LOST = _Lost.LOST


# ---------------------------------------------------------------------------------------------
# Worker side: runs in the main thread of a worker process, where SIGALRM timers work.


@dataclass(frozen=True, slots=True)
class _Grouping:
    representative: tuple[int, ...]  # per form: the index of its group's first form
    comparisons: int
    timeouts: int
    skipped_forms: int


@dataclass(frozen=True, slots=True)
class _Verdict:
    equal: bool | None  # None: cut by a deadline


class _OperationTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException, so math-verify's own `except Exception`
    blocks cannot swallow it and it reaches `_Clock.bounded`."""


@dataclass
class _Alarm:
    armed: bool = False  # an alarm that lands after its operation ended is ignored


_alarm = _Alarm()  # per worker process


# math_verify (and sympy) are imported inside the worker functions: the event-loop process
# never needs them.
def _init_worker() -> None:
    from math_verify import parse

    # We pass timeout=None to math-verify (its SIGALRM timeouts take whole seconds and would
    # replace our handler); its one-time "timeout disabled" warning is about exactly that.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _raise_operation_timeout)
    parse("$1$", parsing_timeout=None)  # load the LaTeX grammar before any deadline runs


def _raise_operation_timeout(signum: int, frame: FrameType | None) -> None:
    if _alarm.armed:
        raise _OperationTimeout


class _Clock:
    """Deadlines inside one worker task."""

    def __init__(self, budget_s: float, per_operation_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.per_operation_s = per_operation_s
        self.timeouts = 0

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def bounded(self, operation: Callable[[], _T]) -> _T | None:
        """`operation()`, or None when it ran out of time (counted in `timeouts`)."""
        seconds = min(self.per_operation_s, self.deadline - time.monotonic())
        try:
            if seconds <= 0:
                raise _OperationTimeout
            _alarm.armed = True
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return operation()
            finally:
                _alarm.armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _OperationTimeout:
            self.timeouts += 1
            return None


def _parse(form: str) -> list[object]:
    from math_verify import parse

    parsed: list[object] = parse("\\boxed{" + form + "}", parsing_timeout=None)
    return parsed


def _verify(gold: list[object], answer: list[object]) -> bool:
    from math_verify import verify

    return bool(verify(gold, answer, timeout_seconds=None))


def _same_for_votes(first: list[object], second: list[object]) -> bool:
    import sympy

    def is_set(parsed: list[object]) -> bool:
        return isinstance(parsed[0], sympy.FiniteSet)

    # the set test first: it is free, and it cuts the tuple/set chains that make
    # math-verify's equality intransitive
    return is_set(first) == is_set(second) and _verify(first, second) and _verify(second, first)


def _group_in_worker(
    forms: list[str], max_pairs: int, budget_s: float, per_operation_s: float
) -> _Grouping:
    clock = _Clock(budget_s, per_operation_s)
    parsed_representatives: list[tuple[int, list[object]]] = []
    representative: list[int] = []
    comparisons = 0
    skipped = 0
    for index, form in enumerate(forms):
        joined: int | None = None
        if index > 0 and (comparisons >= max_pairs or clock.expired):
            skipped += 1
        else:
            parsed = clock.bounded(partial(_parse, form)) or []
            for rep_index, rep_parsed in parsed_representatives:
                if not parsed:
                    break
                if comparisons >= max_pairs or clock.expired:
                    skipped += 1
                    break
                comparisons += 1
                if clock.bounded(partial(_same_for_votes, rep_parsed, parsed)):
                    joined = rep_index
                    break
            if joined is None and parsed:
                parsed_representatives.append((index, parsed))
        representative.append(index if joined is None else joined)
    return _Grouping(tuple(representative), comparisons, clock.timeouts, skipped)


def _equal_in_worker(gold: str, answer: str, budget_s: float, per_operation_s: float) -> _Verdict:
    clock = _Clock(budget_s, per_operation_s)
    parsed_gold = clock.bounded(partial(_parse, gold))
    parsed_answer = clock.bounded(partial(_parse, answer))
    if parsed_gold is None or parsed_answer is None:
        return _Verdict(None)
    return _Verdict(clock.bounded(partial(_verify, parsed_gold, parsed_answer)))
