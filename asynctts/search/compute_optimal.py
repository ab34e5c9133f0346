"""Compute-optimal scaling (Snell et al. 2024), decided online: a probe of k full samples
(best-of-N's sampler; k is the table's probe size for the budget) predicts the problem's
difficulty; when the probe's answers settled the search ends there, otherwise the
calibration table's choice for that difficulty bin spends the rest of the budget. Nothing is
thrown away: the probe's samples are candidates too, and the answer is the weighted vote over
all of them.

Rules:
- Budget n counts generations as every strategy does: the probe's k samples, then the choice
  runs with n - k (rounded down to what it accepts, e.g. a multiple of its width).
- A choice of more samples (the best-of-N family) goes on as Adaptive-Consistency does: in
  batches that double the samples so far (k, 2k, 4k, ... up to n), stopping as soon as the
  answers settled. A tree search runs whole. The choice "probe" stops at the probe.
- The probe is results 0..k-1 (a lost sample in its place); later batches or the tree
  search's results follow, in order.
- The decision (bin, predicted difficulty, agreement, early exit, choice, samples drawn) is
  part of the outcome: `run_deciding` returns it beside the results. It runs in two parts,
  `probe` and `finish`, so that a batch budget can decide between them (`allot`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName
from asynctts.search.best_of_n import BestOfN
from asynctts.search.difficulty import ProbeReading, SettleRule, read_probe
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.sampling import sample_solutions, score_each
from asynctts.search.strategy import Selection, Strategy


@dataclass(frozen=True, slots=True)
class Decision:
    """What the table chose for one problem: its difficulty bin and the strategy to run."""

    bin: int
    label: str  # the option's name with its settings, e.g. "dvts(width=8)", or "probe"
    strategy: Strategy | None  # None: stop at the probe


class Chooser(Protocol):
    """A calibration table, as the strategy sees it (asynctts.calibration.CalibrationTable)."""

    @property
    def aggregate(self) -> AggregateName: ...
    @property
    def settle_rule(self) -> SettleRule: ...
    @property
    def confidence(self) -> float: ...

    def budget_for(self, n: int) -> int: ...
    def probe_for(self, n: int) -> int: ...
    def choose(self, predicted: float, budget: int) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Probe:
    """A problem's probe: its results (as many as its size), their reading, the table's
    choice and whether its answers settled."""

    results: list[Path | BranchLost]
    reading: ProbeReading
    choice: Decision
    settled: bool

    @property
    def closes(self) -> bool:
        """Nothing follows the probe: its answers settled, or the table chose to stop."""
        return self.settled or self.choice.strategy is None


# Given a problem's probe, what to run after it and with which budget n' (a batch budget
# decides this across problems, asynctts/allocation.py).
Allot = Callable[[Probe], Awaitable[tuple[Decision, int]]]


@dataclass(frozen=True, kw_only=True)
class ComputeOptimal:
    """Args:
    table: the calibration table (`asynctts calibrate` writes one).
    early_exit: stop after the probe when its answers settled (the table's rule).
    per_request: probe samples asked for in one request.
    allot: decides, once the probe is in, what runs after it and with which budget instead of
        the table's choice at n (the decision then records "allocated" and "allocated_n").
    """

    name: ClassVar[str] = "compute_optimal"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    table: Chooser
    early_exit: bool = True
    per_request: int = 16
    allot: Allot | None = None

    @property
    def aggregate(self) -> AggregateName:
        return self.table.aggregate

    def check_budget(self, n: int) -> None:
        self.table.budget_for(n)  # a table's probe at N is at most N

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        return (await self.run_deciding(root, n, generate, score))[1]

    async def run_deciding(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> tuple[Mapping[str, Any], list[Path | BranchLost]]:
        self.check_budget(n)
        probe = await self.probe(root, n, generate, score)
        if self.allot is None:
            return await self.finish(root, n, probe, probe.choice, generate, score)
        choice, budget = await self.allot(probe)
        decision, results = await self.finish(root, budget, probe, choice, generate, score)
        return {**decision, "allocated": choice.label, "allocated_n": budget}, results

    async def probe(self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps) -> Probe:
        """The probe's samples (results 0..k-1), their reading and the table's choice at `n`."""
        probe = await self._samples(root.fork(0), self.table.probe_for(n), generate, score)
        reading = self._read(probe)
        return Probe(probe, reading, self.table.choose(reading.predicted, n), self._settled(probe))

    async def finish(
        self,
        root: Path,
        n: int,
        probe: Probe,
        choice: Decision,
        generate: GenerateSteps,
        score: ScoreSteps,
    ) -> tuple[Mapping[str, Any], list[Path | BranchLost]]:
        """After `probe`: stop when it settled, else run `choice` with the rest of budget `n`."""
        k = len(probe.results)
        decision: dict[str, Any] = {
            "bin": probe.choice.bin,
            "predicted": probe.reading.predicted,
            "agreement": probe.reading.agreement,
            "probe": k,
            "choice": probe.choice.label,
        }
        if probe.settled or choice.strategy is None:
            early = probe.settled and probe.choice.strategy is not None
            return {**decision, "early_exit": early, "samples": k}, probe.results
        if isinstance(choice.strategy, BestOfN | MajorityVote):
            results = list(probe.results)
            batch = 1
            while len(results) < n and not self._settled(results):
                size = min(len(results), n - len(results))
                results += await self._samples(root.fork(batch), size, generate, score)
                batch += 1
            early = len(results) < n
            return {**decision, "early_exit": early, "samples": len(results)}, results
        rest = largest_budget(choice.strategy, n - k)
        if rest == 0:
            return {**decision, "early_exit": False, "samples": k}, probe.results
        results = await choice.strategy.run(root.fork(1), rest, generate, score)
        return {**decision, "early_exit": False, "samples": k + rest}, [*probe.results, *results]

    async def _samples(
        self, root: Path, k: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        sampled = await sample_solutions(root, k, generate, per_request=self.per_request)
        return await score_each(sampled, score)

    def _read(self, results: Sequence[Path | BranchLost]) -> ProbeReading:
        return read_probe([r for r in results if isinstance(r, Path) and r.done], self.aggregate)

    def _settled(self, results: Sequence[Path | BranchLost]) -> bool:
        return self.early_exit and self._read(results).settled(
            self.table.settle_rule, self.table.confidence
        )


def largest_budget(strategy: Strategy, most: int) -> int:
    """The largest budget <= `most` that `strategy` accepts (0 when none)."""
    for n in range(most, 0, -1):
        try:
            strategy.check_budget(n)
        except ValueError:
            continue
        return n
    return 0


__all__ = ["Allot", "Chooser", "ComputeOptimal", "Decision", "Probe", "largest_budget"]
