"""PRM-guided beam search (Snell et al. 2024; search-and-learn's reference semantics, with
its "first n to finish" bug fixed).

n active paths; each iteration the n // width best active paths survive and each survivor
gets `width` children (one request with n=width), so every iteration samples n steps. When a
survivor's request fails for good, the next-best active path takes its place. The
PRM scores every child; children that ended (EOS, max_tokens, empty step) join the finished
set, the rest compete by aggregated value for the next iteration. The last iteration
generates to the end. The result is the n best finished paths ranked by value, not the first
n to finish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.branches import kept
from asynctts.search.sampling import score_each
from asynctts.search.strategy import Selection
from asynctts.search.tree_search import TreeSearch


@dataclass(frozen=True, kw_only=True)
class BeamSearch(TreeSearch):
    """Args:
    width: children per surviving path (M); n must be a multiple of it.
    max_depth: iterations at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    filter_duplicates: drop active paths whose text repeats an earlier one before ranking.
    """

    name: ClassVar[str] = "beam_search"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    filter_duplicates: bool = False

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        keep = n // self.width
        finished: list[Path] = []
        lost: list[BranchLost] = []
        # The first iteration also samples n steps: the root's n children go out as n // width
        # requests of `width` siblings (forks of the root, each its own seed), with as many
        # spare forks to stand in for requests that fail.
        ranked = [root.fork(g) for g in range(2 * keep)]
        for depth in range(self.max_depth):
            to_end = depth == self.max_depth - 1
            children = await self._expand(ranked, keep, to_end, generate, score, lost)
            finished.extend(c for c in children if c.done)
            active = [c for c in children if not c.done]
            if self.filter_duplicates:
                active = unique_texts(active)
            if not active:
                break
            # stable sort: equal values keep generation order, so ties go to the first child
            ranked = sorted(active, key=self.value, reverse=True)
        finished.sort(key=self.value, reverse=True)
        return [*finished[:n], *lost]

    async def _expand(
        self,
        ranked: list[Path],
        keep: int,
        to_end: bool,
        generate: GenerateSteps,
        score: ScoreSteps,
        lost: list[BranchLost],
    ) -> list[Path]:
        """Scored children of the `keep` best paths, in generation order. A path whose
        request failed for good is recorded as lost and the next-best path stands in."""
        waiting = iter(ranked)
        wave = list(islice(waiting, keep))
        children: list[Path] = []
        while wave:
            async with asyncio.TaskGroup() as tg:
                broods = [
                    tg.create_task(kept(generate(p, self.width, to_end=to_end))) for p in wave
                ]
            failed = 0
            for brood in broods:
                outcome = brood.result()
                if isinstance(outcome, BranchLost):
                    lost.append(outcome)
                    failed += 1
                else:
                    children.extend(outcome)
            wave = list(islice(waiting, failed))
        scored: list[Path] = []
        for result in await score_each(children, score):
            if isinstance(result, BranchLost):
                lost.append(result)
            else:
                scored.append(result)
        return scored


def unique_texts(paths: list[Path]) -> list[Path]:
    """The paths without those repeating an earlier path's text."""
    seen: set[str] = set()
    unique = []
    for path in paths:
        if path.text not in seen:
            seen.add(path.text)
            unique.append(path)
    return unique
