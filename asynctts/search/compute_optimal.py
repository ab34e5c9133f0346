"""Compute-optimal scaling (Snell et al. 2024), decided online: a probe of `probe` full
samples (best-of-N's sampler) predicts the problem's difficulty; when the probe's answers
settled the search ends there, otherwise the calibration table's choice for that difficulty
bin spends the rest of the budget. Nothing is thrown away: the probe's samples are
candidates too, and the answer is the weighted vote over all of them.

Rules:
- Budget n counts generations as every strategy does: the probe's k samples, then the choice
  runs with n - k (rounded down to what it accepts, e.g. a multiple of its width).
- The probe is results 0..k-1 (a lost sample in its place); the choice's results follow.
- The decision (bin, predicted difficulty, agreement, early exit, choice) is part of the
  outcome: `run_deciding` returns it beside the results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName
from asynctts.search.difficulty import SettleRule, read_probe
from asynctts.search.sampling import sample_solutions, score_each
from asynctts.search.strategy import Selection, Strategy


@dataclass(frozen=True, slots=True)
class Decision:
    """What the table chose for one problem: its difficulty bin and the strategy to run."""

    bin: int
    label: str  # the option's name with its settings, e.g. "dvts(width=8)"
    strategy: Strategy


class Chooser(Protocol):
    """A calibration table, as the strategy sees it (asynctts.calibration.CalibrationTable)."""

    @property
    def aggregate(self) -> AggregateName: ...
    @property
    def probe(self) -> int: ...
    @property
    def settle_rule(self) -> SettleRule: ...
    @property
    def confidence(self) -> float: ...

    def budget_for(self, n: int) -> int: ...
    def choose(self, predicted: float, budget: int) -> Decision: ...


@dataclass(frozen=True, kw_only=True)
class ComputeOptimal:
    """Args:
    table: the calibration table (`asynctts calibrate` writes one).
    early_exit: stop after the probe when its answers settled (the table's rule).
    per_request: probe samples asked for in one request.
    """

    name: ClassVar[str] = "compute_optimal"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    table: Chooser
    early_exit: bool = True
    per_request: int = 16

    @property
    def aggregate(self) -> AggregateName:
        return self.table.aggregate

    def check_budget(self, n: int) -> None:
        if n < self.table.probe:
            raise ValueError(f"n={n} is below the probe of {self.table.probe} samples")
        self.table.budget_for(n)

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        return (await self.run_deciding(root, n, generate, score))[1]

    async def run_deciding(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> tuple[Mapping[str, Any], list[Path | BranchLost]]:
        self.check_budget(n)
        k = self.table.probe
        sampled = await sample_solutions(root.fork(0), k, generate, per_request=self.per_request)
        probe = await score_each(sampled, score)
        reading = read_probe([p for p in probe if isinstance(p, Path) and p.done], self.aggregate)
        choice = self.table.choose(reading.predicted, n)
        decision: dict[str, Any] = {
            "bin": choice.bin,
            "predicted": reading.predicted,
            "agreement": reading.agreement,
            "probe": k,
            "early_exit": self.early_exit
            and reading.settled(self.table.settle_rule, self.table.confidence),
        }
        rest = _largest_budget(choice.strategy, n - k)
        if decision["early_exit"] or rest == 0:
            return {**decision, "choice": None, "choice_n": 0}, probe
        results = await choice.strategy.run(root.fork(1), rest, generate, score)
        return {**decision, "choice": choice.label, "choice_n": rest}, [*probe, *results]


def _largest_budget(strategy: Strategy, most: int) -> int:
    """The largest budget <= `most` that `strategy` accepts (0 when none)."""
    for n in range(most, 0, -1):
        try:
            strategy.check_budget(n)
        except ValueError:
            continue
        return n
    return 0


__all__ = ["Chooser", "ComputeOptimal", "Decision"]
