"""A token budget shared by a batch of compute-optimal solves: the check before any request,
and the coordination that waits for every probe, then allots the rest of the budget at once.

Rules:
- `budget_tokens` needs strategy compute_optimal with a `CalibrationTable`, a finite number
  > 0, and at least the probes' expected spend (the table's probe cells); otherwise a
  ConfigError names the numbers.
- Each problem reports its probe; one whose probe closes it (settled, or the table's choice is
  to stop) leaves at once. An open one gives its slot back while it waits, so waiting
  problems never block probes. When every problem has reported (or failed before its probe),
  `asynctts.allocation.allocate` divides what is left of the budget among the open ones.
- Spending is held to the budget by the `BudgetGate` every request passes
  (asynctts/backends/context.py), not here.
"""

from __future__ import annotations

import asyncio
import math

import structlog

from asynctts.allocation import allocate, expected_probe_tokens
from asynctts.backends.context import BudgetGate
from asynctts.calibration import PROBE, CalibrationTable
from asynctts.errors import ConfigError
from asynctts.search.compute_optimal import ComputeOptimal, Decision, Probe
from asynctts.search.strategy import Strategy

log = structlog.get_logger("asynctts.batch_budget")


def check_batch_budget(
    strategy: Strategy, budget_tokens: object, problems: int, n: int
) -> ComputeOptimal:
    """The compute-optimal strategy a batch budget runs, once `budget_tokens` is known to
    cover the probes the table expects for `problems` problems solved with budget `n`.

    Raises:
        ConfigError: another strategy, a budget that is not a number > 0, or one below the
            probes' expected spend (both numbers named).
    """
    if not isinstance(strategy, ComputeOptimal) or not isinstance(strategy.table, CalibrationTable):
        raise ConfigError(
            f"budget_tokens= is for strategy 'compute_optimal' with a calibration table "
            f"(the table predicts what each problem gains per token), not {strategy.name!r}"
        )
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int | float):
        raise ConfigError(f"budget_tokens must be a number, got {budget_tokens!r}")
    if not (math.isfinite(budget_tokens) and budget_tokens > 0):
        raise ConfigError(f"budget_tokens={budget_tokens}: need a finite number > 0")
    per_probe = expected_probe_tokens(strategy.table, n)
    if budget_tokens < per_probe * problems:
        raise ConfigError(
            f"budget_tokens={budget_tokens:g} is below the probes' expected spend of "
            f"{per_probe * problems:.0f} tokens ({problems} problems x {per_probe:.0f}, the "
            "calibration table's probe cells): raise it or solve fewer problems"
        )
    return strategy


class BatchBudget:
    """The allocation of one budgeted `solve_many`: problems report their probes, the open
    ones wait (their slot given back) until every probe is in, then all are allotted at once."""

    def __init__(
        self,
        strategy: ComputeOptimal,
        n: int,
        gate: BudgetGate,
        problems: int,
        slots: asyncio.Semaphore,
    ) -> None:
        if not isinstance(strategy.table, CalibrationTable):
            raise TypeError("a batch budget needs a CalibrationTable")
        self._table = strategy.table
        self._n = n
        self._gate = gate
        self._problems = problems
        self._slots = slots
        self._in: set[int] = set()  # positions whose probe is in (or that failed before)
        self._open: dict[int, tuple[int, asyncio.Future[tuple[Decision, int]]]] = {}

    async def allot(self, position: int, probe: Probe) -> tuple[Decision, int]:
        if probe.closes:
            self.leave(position)
            return Decision(probe.choice.bin, PROBE, None), len(probe.results)
        future: asyncio.Future[tuple[Decision, int]] = asyncio.get_running_loop().create_future()
        self._open[position] = (probe.choice.bin, future)
        self.leave(position)
        self._slots.release()
        try:
            return await future
        finally:
            await self._slots.acquire()

    def leave(self, position: int) -> None:
        if position in self._in:
            return
        self._in.add(position)
        if len(self._in) == self._problems:
            self._allocate()

    def _allocate(self) -> None:
        order = sorted(self._open)
        bins = [self._open[p][0] for p in order]
        remaining = self._gate.budget - self._gate.spent
        allotments = allocate(bins, remaining, self._table, self._n)
        log.info(
            "batch budget allocated",
            open=len(order),
            remaining_tokens=round(remaining),
            predicted_tokens=round(sum(a.tokens for a in allotments)),
        )
        for position, level, allotment in zip(order, bins, allotments, strict=True):
            future = self._open[position][1]
            if not future.done():
                strategy = self._table.strategy_of(allotment.option)
                future.set_result((Decision(level, allotment.option, strategy), allotment.n))


__all__ = ["BatchBudget", "check_batch_budget"]
