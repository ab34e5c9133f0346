"""What every strategy looks like from the outside."""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName

# How the final answer is chosen among the finished paths: the most frequent answer, the
# answer of the highest-valued path, or the answer group with the largest summed value.
Selection = Literal["majority", "best", "weighted"]


class Strategy(Protocol):
    name: ClassVar[str]
    needs_prm: ClassVar[bool]
    selection: ClassVar[Selection]

    @property
    def aggregate(self) -> AggregateName: ...

    def check_budget(self, n: int) -> None:
        """Raise ValueError when this strategy cannot use budget `n`."""
        ...

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        """The search's results in generation order: finished paths, unfinished paths that
        ran out of depth, and lost branches as values. Every path is among the first n
        results (a result's position is its index in `Solution.votes`): a lost branch goes
        after the paths, or in the place of the one sample it stands for."""
        ...
