"""Majority vote (self-consistency, Wang et al. 2022): sample n full solutions; the most
frequent answer wins, answers grouped by mathematical equivalence; ties go to the group seen
first. Needs no PRM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName
from asynctts.search.sampling import sample_solutions
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class MajorityVote:
    """Args:
    per_request: samples asked for in one request (`n` of the request); smaller groups lose
        less to one failed request, larger ones send fewer requests.
    """

    name: ClassVar[str] = "majority"
    needs_prm: ClassVar[bool] = False
    selection: ClassVar[Selection] = "majority"
    per_request: int = 16

    def __post_init__(self) -> None:
        if self.per_request < 1:
            raise ValueError(f"per_request={self.per_request}: need >= 1")

    @property
    def aggregate(self) -> AggregateName:
        return "last"  # unused: majority has no scores

    def check_budget(self, n: int) -> None:
        return None

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        return await sample_solutions(root, n, generate, per_request=self.per_request)
