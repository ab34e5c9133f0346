"""The math-verify worker process: `python -m asynctts.verify_worker PARENT_PID`.

Rules:
- One JSON object a line (orjson) on each pipe. The worker reads requests from stdin and writes
  one reply per request to stdout; its first line is `{"ready": true}`, sent once math-verify is
  loaded. Requests name an operation and its arguments, never code:
  `{"op": "group", "forms", "max_pairs", "budget_s", "per_operation_s"}` replies with what
  `group` returns, `{"op": "equal", "gold", "answer", "budget_s", "per_operation_s"}` with what
  `equal` returns; a request that fails replies `{"error": "..."}`.
- No module of the package imports this one (`python -m` runs it after importing the package,
  and would warn of a second copy); the parent decodes the replies itself.
- It runs as its own main module, so it never imports its parent's `__main__`, and in its own
  main thread, so SIGALRM timers bound each parse or comparison (they interrupt Python code,
  not a long big-integer operation in C: the parent kills a worker that misses its deadline).
- Every string is parsed as math-verify's `parse("\\boxed{" + s + "}")` with its default
  extraction settings; comparisons are its `verify(gold, answer)` with default settings. Only
  their own timeouts are off (our SIGALRM deadlines replace them).
- `equal` is exactly `verify(parse(gold), parse(answer))` as above, so grades are the ones a
  direct math-verify call gives.
- Grouping: each distinct form is parsed once and compared with the representative of each
  group so far, in first-seen order; it joins the first group whose representative it equals.
  For votes two forms are equal only when math-verify says so in both directions and both or
  neither are sets (its equality is neither symmetric nor transitive: "(1,2)" equals
  "\\{1,2\\}", which equals "\\{2,1\\}", which equals "(2,1)").
- It ends when its stdin closes (the parent closed it or died) and, on Linux, when the thread
  of the parent that started it ends (PR_SET_PDEATHSIG), even if stuck in C code. Ctrl-C is
  the parent's to handle. Anything else the libraries print goes to stderr, never into the
  reply pipe.
- Test-only: `ASYNCTTS_TEST_WORKER_FAULT=hang` makes every task hang where no timer reaches it
  (as a stuck big-integer operation would); `=exit:CODE` ends the process with CODE.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any, BinaryIO, TypeVar

import orjson

__all__ = ["FAULT_ENV", "equal", "group", "main"]

FAULT_ENV = "ASYNCTTS_TEST_WORKER_FAULT"

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Deadlines inside a task: SIGALRM timers, in this process's main thread.


class _OperationTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException, so math-verify's own `except Exception`
    blocks cannot swallow it and it reaches `_Clock.bounded`."""


@dataclass
class _Alarm:
    armed: bool = False  # an alarm that lands after its operation ended is ignored


_alarm = _Alarm()


def _raise_operation_timeout(signum: int, frame: FrameType | None) -> None:
    if _alarm.armed:
        raise _OperationTimeout


class _Clock:
    """Deadlines inside one task."""

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


# ---------------------------------------------------------------------------------------------
# The operations. math_verify and sympy are imported here only: the parent never loads them.


def _parse(form: str) -> list[object]:
    """math-verify's parse of `form` written back into the box it was read from."""
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


def group(
    forms: list[str], max_pairs: int, budget_s: float, per_operation_s: float
) -> dict[str, Any]:
    """Group `forms` (distinct normalized answers) by math-verify, at most `max_pairs`
    comparisons and `budget_s` seconds in all; what is not reached stays a group of its own.

    Returns:
        `representative`: per form, the index of its group's first form; `comparisons` run;
        `timeouts`: parses and comparisons cut by a deadline; `skipped_forms`: forms not
        compared (the cap or the budget).
    """
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
    return {
        "representative": representative,
        "comparisons": comparisons,
        "timeouts": clock.timeouts,
        "skipped_forms": skipped,
    }


def equal(gold: str, answer: str, budget_s: float, per_operation_s: float) -> dict[str, Any]:
    """`equal`: math-verify's verify(parse(gold), parse(answer)), nothing else; None when a
    deadline cut it."""
    clock = _Clock(budget_s, per_operation_s)
    parsed_gold = clock.bounded(partial(_parse, gold))
    parsed_answer = clock.bounded(partial(_parse, answer))
    if parsed_gold is None or parsed_answer is None:
        return {"equal": None}
    return {"equal": clock.bounded(partial(_verify, parsed_gold, parsed_answer))}


_OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {"group": group, "equal": equal}


# ---------------------------------------------------------------------------------------------
# The process.


def _end_with_parent(parent_pid: int) -> None:
    # The kernel sends SIGKILL when the parent's thread that started this process ends (the
    # pool's threads live as long as the pool), whatever this process is doing.
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent ended before the line above
        os._exit(0)


def _load() -> None:
    from math_verify import parse

    # We pass timeout=None to math-verify (its SIGALRM timeouts take whole seconds and would
    # replace our handler); its one-time "timeout disabled" warning is about exactly that.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _raise_operation_timeout)
    parse("$1$", parsing_timeout=None)  # load the LaTeX grammar before any deadline runs


def _inject_fault(fault: str) -> None:
    if fault == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            time.sleep(60)
    if fault.startswith("exit:"):
        os._exit(int(fault.removeprefix("exit:")))
    raise ValueError(f"{FAULT_ENV}={fault!r}: need 'hang' or 'exit:CODE'")


def _handle(line: bytes, fault: str | None) -> dict[str, Any]:
    try:
        if fault is not None:
            _inject_fault(fault)
        request = orjson.loads(line)
        operation = _OPERATIONS[request.pop("op")]
        return operation(**request)
    except Exception as err:  # a bad request or a bug: the parent falls back to strings
        return {"error": f"{type(err).__name__}: {err}"}


def _send(replies: BinaryIO, reply: dict[str, Any]) -> None:
    replies.write(orjson.dumps(reply) + b"\n")
    replies.flush()


def main() -> None:
    args = sys.argv[1:]
    if len(args) != 1 or not args[0].isdigit():
        raise SystemExit(f"usage: python -m asynctts.verify_worker PARENT_PID (got {args})")
    _end_with_parent(int(args[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr
    fault = os.environ.get(FAULT_ENV)
    _load()
    try:
        _send(replies, {"ready": True})
        for line in sys.stdin.buffer:
            _send(replies, _handle(line, fault))
    except BrokenPipeError:  # the parent is gone: nothing left to flush to
        os._exit(0)


if __name__ == "__main__":
    main()
