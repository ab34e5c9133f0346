"""Best-of-N: sample n full solutions, score every step with the PRM, and answer with the
path of highest aggregated value (ties: the first sampled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate
from asynctts.search.sampling import sample_solutions, score_each
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class BestOfN:
    """Args:
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    per_request: samples asked for in one request (see `MajorityVote`).
    """

    name: ClassVar[str] = "best_of_n"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "best"
    aggregate: AggregateName = "last"
    per_request: int = 16

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if self.per_request < 1:
            raise ValueError(f"per_request={self.per_request}: need >= 1")

    def check_budget(self, n: int) -> None:
        return None

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        samples = await sample_solutions(root, n, generate, per_request=self.per_request)
        return await score_each(samples, score)
