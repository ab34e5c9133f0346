"""DVTS, diverse verifier tree search (Beeching et al. 2024): split budget n into n // width
independent subtrees; each walks greedily, keeping the best of `width` sampled children per
step under the PRM. Subtrees never compare with or wait for each other.

Each subtree contributes the finished children of its last expansion (search-and-learn
emitted unfinished siblings too, issue #57: here only finished solutions are results; a
subtree without any is returned as its unfinished path so the caller can record it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of
from asynctts.search.branches import kept
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class DVTS:
    """Args:
    width: children sampled per step in every subtree (M); n must be a multiple of it.
    max_depth: steps per subtree at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    """

    name: ClassVar[str] = "dvts"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    width: int = 4
    max_depth: int = 40
    aggregate: AggregateName = "last"

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
        async with asyncio.TaskGroup() as tg:  # subtrees never wait for each other
            walks = [
                tg.create_task(kept(self._walk(root.fork(t), generate, score)))
                for t in range(n // self.width)
            ]
        results: list[Path | BranchLost] = []
        for walk in walks:
            outcome = walk.result()
            results.extend([outcome] if isinstance(outcome, BranchLost) else outcome)
        return results

    async def _walk(self, start: Path, generate: GenerateSteps, score: ScoreSteps) -> list[Path]:
        best = start
        children: list[Path] = []
        for depth in range(self.max_depth):
            to_end = depth == self.max_depth - 1
            children = await score(await generate(best, self.width, to_end=to_end))
            best = max(children, key=self._value)  # max keeps the first of equal values
            if best.done:
                break
        finished = [c for c in children if c.done]
        return finished or [best]

    def _value(self, path: Path) -> float:
        value = value_of(path.scores, self.aggregate)
        return float("-inf") if value is None else value
