"""Answer equivalence for votes and grading, decided by math-verify in worker processes.

Rules:
- Grading (`equal(gold, answer)`) is math-verify's `verify(parse(G), parse(A))` with nothing
  in between, where G and A are the two extracted answers each written back into a box,
  "\\boxed{" + answer + "}" (what the answer was read from; math-verify's LaTeX extraction
  matches a box before anything else), and `parse` and `verify` keep every default but their
  timeouts (replaced by the deadlines below). No normalisation and no fast path: even
  identical strings go to math-verify, which says False when it parses nothing from them
  ("\\boxed{\\text{}}"). So verdicts are the ones a direct math-verify call gives
  (tests/unit/test_equivalence.py checks this).
- Votes (`group()`) compare answers by their `answers.normalize` form. Equal forms are one
  group at once, without math-verify (the fast path: most votes are mostly identical
  strings). Distinct forms go to a worker process as ONE task per `group()` call. There each
  distinct form is parsed once (boxed, as above) and compared with the representative of each
  group so far, in first-seen order (asynctts/verify_worker.py); so d distinct forms cost at
  most d(d-1)/2 comparisons, capped at `max_pairs`. Two forms are one group only when
  math-verify says so in both directions and both or neither are sets.
- Workers are `python -m asynctts.verify_worker` processes talking JSON lines over their
  pipes. They never import the caller's `__main__`, so any program can group answers: a script
  without a main guard, a program read from stdin, a notebook. Each worker is driven by a
  thread of its pool, so one pool serves every event loop and thread of the process; tasks
  beyond `workers` wait their turn.
- math-verify never runs on the event loop (it is CPU-bound and cannot be interrupted from
  another thread). Two deadlines bound it: inside the worker, each parse or comparison gets
  at most `comparison_timeout_s` and the whole task at most `timeout_s` (SIGALRM timers, which
  interrupt Python code); outside, a worker with no reply `_KILL_GRACE_S` after that is
  killed (stuck in C code, Math-Verify#65). A worker that died or replied nonsense is dropped
  too; the next task starts a new one.
- Whatever could not be decided (a timeout, the cap, a killed, crashed or failing worker) falls
  back to string grouping for that call only (`equal()`: None): those answers are never
  "equal" by accident. Each fallback is logged as a warning with its reason and counted in
  `statistics()`.
- Workers start on first need. An `Equivalence` stops its own at `aclose()`; one made with
  `share_workers=True` (as `Solver` and `solve()` do) uses the process's shared pool instead,
  so a second one-shot solve starts no process; that pool stops at interpreter exit. A worker
  also ends when its stdin closes, and on Linux when the thread that started it ends.
- So, for votes and grading alike: "0.5" = "\\frac{1}{2}" = "\\dfrac12"; "90^\\circ" = "90";
  "\\text{(A)}" = "A"; "\\{1,2\\}" = "\\{2,1\\}" (sets); "(1,2)" != "(2,1)" (tuples);
  "[0,1)" != "[0,1]" (intervals). Where they differ: math-verify grades "10\\%" equal to both
  "10" and "0.1" (gold "0.1", answer "10\\%": True), while votes group "10\\%" with "10" only
  (`normalize` drops the percent sign), and "(1,2)" is equal to gold "\\{1,2\\}" but never
  grouped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
import os
import queue
import select
import signal
import site
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
import structlog

from asynctts.answers import normalize
from asynctts.errors import ConfigError

__all__ = ["Equivalence", "EquivalenceStatistics"]

log = structlog.get_logger("asynctts.equivalence")

# A worker still busy this long after its own deadline is stuck in uninterruptible code.
_KILL_GRACE_S = 1.0
# Most time a new worker may take to load sympy and math-verify (about 1 s when idle).
_START_TIMEOUT_S = 60.0
# Most time a worker that closed its stdout may take to exit before it is killed.
_EXIT_WAIT_S = 5.0
_WORKER_MODULE = "asynctts.verify_worker"
# The directory this asynctts was imported from: a checkout or an editable install too.
_IMPORT_ROOT = str(Path(__file__).resolve().parent.parent)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class EquivalenceStatistics:
    """Counters since the `Equivalence` was made."""

    worker_tasks: int = 0  # tasks sent to a worker (fast-path groupings send none)
    comparisons: int = 0  # math-verify comparisons the workers ran
    timeouts: int = 0  # parses or comparisons cut by a deadline inside a worker
    skipped_forms: int = 0  # distinct forms grouped by string only (cap or task deadline)
    lost_tasks: int = 0  # tasks whose worker was killed at the outer deadline, died or failed
    workers_started: int = 0  # worker processes this Equivalence's tasks started


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
        share_workers: bool = False,
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
            share_workers: use the process's shared pool of `workers` processes (started
                once, on first need, stopped at interpreter exit; `aclose()` leaves it
                running) instead of a pool of its own.

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
        if not isinstance(share_workers, bool):
            raise ConfigError(f"share_workers={share_workers!r}: need a bool")
        self._workers = workers
        self._timeout_s = float(timeout_s)
        self._max_pairs = max_pairs
        self._comparison_timeout_s = float(comparison_timeout_s)
        self._share_workers = share_workers
        self._pool: _WorkerPool | None = None
        self._state = _State.OPEN
        self._stats = EquivalenceStatistics()

    async def __aenter__(self) -> Equivalence:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the worker processes unless they are shared (a task still running is
        abandoned). Idempotent."""
        self._state = _State.CLOSED
        pool, self._pool = self._pool, None
        if pool is not None and not self._share_workers:
            await asyncio.to_thread(pool.close)

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
        """Whether `answer` is mathematically equal to `gold` (grading): math-verify's
        `verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + answer + "}"))`, unchanged
        (see the module rules).

        Returns:
            True or False; None when it could not be decided in time (a deadline, or the
            worker was killed, crashed or failed).

        Raises:
            TypeError: `gold` or `answer` is not a str.
            RuntimeError: the `Equivalence` is closed.
        """
        self._check_open()
        for name, value in (("gold", gold), ("answer", answer)):
            if not isinstance(value, str):
                raise TypeError(f"{name}={value!r}: need a str")
        verdict = await self._run("equal", {"gold": gold, "answer": answer}, _decode_verdict)
        if verdict is None:
            log.warning("equivalence.equal_undecided", gold=gold, answer=answer)
            return None
        self._count(comparisons=1, timeouts=int(verdict.equal is None))
        if verdict.equal is None:
            log.warning("equivalence.equal_timed_out", gold=gold, answer=answer)
        return verdict.equal

    async def _group_forms(self, forms: list[str]) -> list[int]:
        """The representative (a form index) of each distinct form's group."""
        by_string = list(range(len(forms)))
        if len(forms) < 2 or self._max_pairs == 0:
            if len(forms) >= 2:
                self._count(skipped_forms=len(forms) - 1)
            return by_string
        grouping = await self._run(
            "group",
            {"forms": forms, "max_pairs": self._max_pairs},
            lambda reply: _decode_grouping(reply, len(forms)),
        )
        if grouping is None:
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

    async def _run(
        self, op: str, arguments: dict[str, Any], decode: Callable[[dict[str, Any]], _T]
    ) -> _T | None:
        """A worker's decoded reply to operation `op`; None when the task was lost (logged
        and counted)."""
        if self._pool is None:
            self._pool = (
                _shared_pool(self._workers) if self._share_workers else _WorkerPool(self._workers)
            )
        request = {
            "op": op,
            **arguments,
            "budget_s": self._timeout_s,
            "per_operation_s": self._comparison_timeout_s,
        }
        self._count(worker_tasks=1)
        outcome = await self._pool.run(
            orjson.dumps(request), self._timeout_s + _KILL_GRACE_S, decode
        )
        if outcome.started_pid is not None:
            self._count(workers_started=1)
            log.info("equivalence.worker_started", pid=outcome.started_pid)
        if outcome.lost is not None:
            self._count(lost_tasks=1)
            log.warning("equivalence.worker_task_lost", reason=outcome.lost, task=op)
        return outcome.result

    def _count(self, **increments: int) -> None:
        current = self._stats
        totals = {name: getattr(current, name) + count for name, count in increments.items()}
        self._stats = dataclasses.replace(current, **totals)

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this Equivalence is closed")


# ---------------------------------------------------------------------------------------------
# Replies of the worker (asynctts/verify_worker.py).


@dataclass(frozen=True, slots=True)
class _Grouping:
    representative: tuple[int, ...]  # per form: the index of its group's first form
    comparisons: int
    timeouts: int
    skipped_forms: int


@dataclass(frozen=True, slots=True)
class _Verdict:
    equal: bool | None  # None: cut by a deadline


def _count_in(reply: dict[str, Any], field: str) -> int:
    value = reply[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}={value!r}: need a count")
    return value


def _decode_grouping(reply: dict[str, Any], forms: int) -> _Grouping:
    """The reply to a group request over `forms` forms.

    Raises:
        ValueError: it is not a grouping (the message says why).
    """
    if set(reply) != {"representative", "comparisons", "timeouts", "skipped_forms"}:
        raise ValueError(f"not a grouping: fields {sorted(reply)}")
    representative = reply["representative"]
    # each form's representative is itself or an earlier form
    if not (
        isinstance(representative, list)
        and len(representative) == forms
        and all(type(r) is int and 0 <= r <= i for i, r in enumerate(representative))
    ):
        raise ValueError(f"representative={str(representative)[:200]} for {forms} forms")
    return _Grouping(
        tuple(representative),
        _count_in(reply, "comparisons"),
        _count_in(reply, "timeouts"),
        _count_in(reply, "skipped_forms"),
    )


def _decode_verdict(reply: dict[str, Any]) -> _Verdict:
    """The reply to an equal request.

    Raises:
        ValueError: it is not a verdict.
    """
    if set(reply) != {"equal"} or reply["equal"] not in (True, False, None):
        raise ValueError(f"not a verdict: {str(reply)[:200]}")
    return _Verdict(reply["equal"])


# ---------------------------------------------------------------------------------------------
# The pool: worker processes, each driven by one of the pool's threads at a time.


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[_T]):
    result: _T | None  # None: the task was lost
    lost: str | None = None  # why it was lost
    started_pid: int | None = None  # a worker started for this task


class _WorkerLost(Exception):
    """The worker of a task was killed or gave up; the message says why."""


class _Worker:
    """One worker process slot: its process starts on first need and is replaced once lost.
    One pool thread at a time uses it; starting and stopping hold the pool's lock."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._unread = bytearray()  # what was read past the last line

    def start(self) -> int:
        self.process = subprocess.Popen(
            # -P: not the working directory on the worker's path, only the library's
            [sys.executable, "-P", "-m", _WORKER_MODULE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_environment(),
        )
        self._unread.clear()
        return self.process.pid

    def send(self, request: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(request + b"\n")
        self.process.stdin.flush()

    def receive(self, wait_s: float) -> bytes:
        """The next line the worker writes.

        Raises:
            _WorkerLost: none within `wait_s` (the worker is killed), or it closed its output.
        """
        assert self.process is not None and self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        deadline = time.monotonic() + wait_s
        while (end := self._unread.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
                self.kill()
                raise _WorkerLost(f"no result within {wait_s:g} s: worker killed")
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                raise _WorkerLost(self.exit_reason())
            self._unread += chunk
        line = bytes(self._unread[:end])
        del self._unread[: end + 1]
        return line

    def exit_reason(self) -> str:
        """How the process ended (it closed its pipes)."""
        assert self.process is not None
        try:
            code = self.process.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            return "the worker closed its output"
        if code < 0:
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker died with exit code {code}"

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def stop(self) -> None:
        """Kill the process, reap it and close its pipes."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # unsent bytes to a dead worker
                    pipe.close()


class _WorkerPool:
    """Up to `size` worker processes, each used by one task at a time; tasks queue FIFO."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._closed = False
        self._workers = [_Worker() for _ in range(size)]
        # last in, first out: a task takes the worker used last, so no more start than the
        # tasks at once need
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        for worker in self._workers:
            self._idle.put(worker)
        # As many threads as workers: a thread always finds an idle worker. A worker started
        # by a thread ends with it (Linux), and these threads live as long as the pool.
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="asynctts-equivalence")
        # at interpreter exit, or when the pool is dropped without `close()`
        weakref.finalize(self, _stop_workers, self._workers, self._lock, self.pid)

    async def run(
        self, request: bytes, wait_s: float, decode: Callable[[dict[str, Any]], _T]
    ) -> _Outcome[_T]:
        """`request` answered by a worker within `wait_s` seconds, and decoded."""
        if self._closed:
            return _Outcome(None, "the Equivalence was closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run, request, wait_s, decode
        )

    def close(self) -> None:
        """Kill the workers (tasks running on them end lost) and wait for the threads."""
        with self._lock:
            self._closed = True
            for worker in self._workers:
                worker.kill()
        self._executor.shutdown(wait=True)
        _stop_workers(self._workers, self._lock, self.pid)

    def _run(
        self, request: bytes, wait_s: float, decode: Callable[[dict[str, Any]], _T]
    ) -> _Outcome[_T]:
        worker = self._idle.get()
        try:
            return self._run_on(worker, request, wait_s, decode)
        finally:
            self._idle.put(worker)

    def _run_on(
        self,
        worker: _Worker,
        request: bytes,
        wait_s: float,
        decode: Callable[[dict[str, Any]], _T],
    ) -> _Outcome[_T]:
        started: int | None = None
        with self._lock:
            if self._closed:
                return _Outcome(None, "the Equivalence was closed")
            if worker.process is not None and worker.process.poll() is not None:
                worker.stop()  # it ended while idle: replace it before sending anything
            try:
                if worker.process is None:
                    started = worker.start()
            except OSError as err:
                return _Outcome(None, f"could not start a worker: {err}")
        try:
            if started is not None:
                self._wait_until_ready(worker)
            worker.send(request)
            reply = orjson.loads(worker.receive(wait_s))
            if not isinstance(reply, dict):
                raise ValueError(f"not an object: {reply!r}")
            if "error" in reply:  # the worker itself is fine
                return _Outcome(None, f"the worker failed: {reply['error']}", started)
            return _Outcome(decode(reply), None, started)
        except _WorkerLost as lost:
            reason = str(lost)
        except BrokenPipeError:
            reason = f"the worker closed its input: {worker.exit_reason()}"
        except ValueError as err:  # orjson.JSONDecodeError too
            reason = f"bad reply from the worker ({err}): worker killed"
        with self._lock:
            worker.stop()
            if self._closed:
                reason = "the Equivalence was closed"
        return _Outcome(None, reason, started)

    @staticmethod
    def _wait_until_ready(worker: _Worker) -> None:
        try:
            line = worker.receive(_START_TIMEOUT_S)
        except _WorkerLost as lost:
            raise _WorkerLost(f"the worker did not start: {lost}") from None
        if line != b'{"ready":true}':
            raise _WorkerLost(f"the worker did not start: it wrote {line[:200]!r}")


def _stop_workers(workers: list[_Worker], lock: threading.Lock, pid: int) -> None:
    if os.getpid() != pid:  # a forked child: the workers are its parent's
        return
    with lock:
        for worker in workers:
            worker.stop()


def _worker_environment() -> dict[str, str]:
    """This process's environment, with the directory this asynctts came from first on the
    worker's path (unless it is a site directory, already on it after the standard library)."""
    environment = dict(os.environ)
    sites = {*site.getsitepackages(), site.getusersitepackages()}
    if _IMPORT_ROOT not in sites:
        paths = [_IMPORT_ROOT, *environment.get("PYTHONPATH", "").split(os.pathsep)]
        environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return environment


_shared_pools: dict[int, _WorkerPool] = {}
_shared_pools_lock = threading.Lock()


def _shared_pool(size: int) -> _WorkerPool:
    """The process's pool of `size` workers (a forked child makes its own)."""
    with _shared_pools_lock:
        pool = _shared_pools.get(size)
        if pool is None or pool.pid != os.getpid():
            pool = _shared_pools[size] = _WorkerPool(size)
        return pool
