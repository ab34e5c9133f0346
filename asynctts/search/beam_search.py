"""PRM-guided beam search (Snell et al. 2024; search-and-learn's reference semantics, with
its "first n to finish" bug fixed).

n active paths; each iteration the n // width best active paths survive and each survivor
gets `width` children (one request with n=width), so every iteration samples n steps. The
PRM scores every child; children that ended (EOS, max_tokens, empty step) join the finished
set, the rest compete by aggregated value for the next iteration. The last iteration
generates to the end. The result is the n best finished paths ranked by value, not the first
n to finish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of
from asynctts.search.branches import kept
from asynctts.search.sampling import score_each
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class BeamSearch:
    """Args:
    width: children per surviving path (M); n must be a multiple of it.
    max_depth: iterations at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    filter_duplicates: drop active paths whose text repeats an earlier one before ranking.
    """

    name: ClassVar[str] = "beam_search"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    width: int = 4
    max_depth: int = 40
    aggregate: AggregateName = "last"
    filter_duplicates: bool = False

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if self.width < 1 or self.max_depth < 1:
            raise ValueError(f"width={self.width}, max_depth={self.max_depth}: need >= 1")

    def check_budget(self, n: int) -> None:
        if n % self.width:
            raise ValueError(f"n={n} is not a multiple of width={self.width}")

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        keep = n // self.width
        finished: list[Path] = []
        lost: list[BranchLost] = []
        # the root is one survivor with n children: the first iteration also samples n steps
        survivors, fan_out = [root], n
        for depth in range(self.max_depth):
            to_end = depth == self.max_depth - 1
            children = await self._expand(survivors, fan_out, to_end, generate, score, lost)
            finished.extend(c for c in children if c.done)
            active = [c for c in children if not c.done]
            if self.filter_duplicates:
                active = list({c.text: c for c in reversed(active)}.values())[::-1]
            if not active:
                break
            # stable sort: equal values keep generation order, so ties go to the first child
            active.sort(key=self._value, reverse=True)
            survivors, fan_out = active[:keep], self.width
        finished.sort(key=self._value, reverse=True)
        return [*finished[:n], *lost]

    def _value(self, path: Path) -> float:
        value = value_of(path.scores, self.aggregate)
        return float("-inf") if value is None else value

    @staticmethod
    async def _expand(
        survivors: list[Path],
        k: int,
        to_end: bool,
        generate: GenerateSteps,
        score: ScoreSteps,
        lost: list[BranchLost],
    ) -> list[Path]:
        """All children of the survivors, scored, in generation order; lost ones recorded."""
        async with asyncio.TaskGroup() as tg:
            broods = [tg.create_task(kept(generate(s, k, to_end=to_end))) for s in survivors]
        children: list[Path] = []
        for brood in broods:
            outcome = brood.result()
            if isinstance(outcome, BranchLost):
                lost.append(outcome)
            else:
                children.extend(outcome)
        scored: list[Path] = []
        for result in await score_each(children, score):
            if isinstance(result, BranchLost):
                lost.append(result)
            else:
                scored.append(result)
        return scored
