"""Progress events of `solve_many`: one `Progress` after each problem, for an application
that draws its own progress.

Rules:
- An event is sent as its problem's `Solution` is handed to the caller, before it: events
  arrive in the order solutions are yielded, and `done` counts them.
- The callback runs in the event loop, between two problems: it should be quick.
- A callback that raises does not stop the run: the error is logged (with its traceback) as
  "progress callback failed", each time, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from asynctts.ledger import Usage

__all__ = ["Progress", "ProgressCallback", "ProgressReporter"]

log = structlog.get_logger("asynctts.progress")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a `solve_many` run stands after one more problem finished."""

    problem_id: str  # the problem that just finished
    done: int  # problems finished so far, failed ones included
    total: int  # problems in the run
    failed: int  # finished problems that failed as a whole
    usage: Usage  # requests, retries and tokens of the finished problems, summed


ProgressCallback = Callable[[Progress], object]


class ProgressReporter:
    """Counts finished problems and sends each `Progress` to `callback`."""

    def __init__(self, total: int, callback: ProgressCallback) -> None:
        self._callback = callback
        self._total = total
        self._done = 0
        self._failed = 0
        self._usage = Usage()

    def finished(self, problem_id: str, *, failed: bool, usage: Usage) -> None:
        """Problem `problem_id` finished (`failed`: as a whole), having spent `usage`."""
        self._done += 1
        self._failed += failed
        self._usage += usage
        event = Progress(problem_id, self._done, self._total, self._failed, self._usage)
        try:
            self._callback(event)
        except Exception:
            log.exception(
                "progress callback failed", callback=repr(self._callback), problem_id=problem_id
            )
