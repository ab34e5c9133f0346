"""DVTS, diverse verifier tree search (Beeching et al. 2024): split budget n into n // width
independent subtrees; each walks greedily, keeping the best of `width` sampled children per
step under the PRM. Subtrees never compare with or wait for each other.

Each subtree contributes the finished children of its last expansion (search-and-learn
emitted unfinished siblings too, issue #57: here only finished solutions are results; a
subtree without any is returned as its unfinished path so the caller can record it). The
result lists every subtree's paths, then every lost branch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.branches import kept
from asynctts.search.sampling import score_each
from asynctts.search.strategy import Selection
from asynctts.search.tree_search import TreeSearch


@dataclass(frozen=True, kw_only=True)
class DVTS(TreeSearch):
    """Args:
    width: children sampled per step in every subtree (M); n must be a multiple of it.
    max_depth: steps per subtree at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    """

    name: ClassVar[str] = "dvts"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        async with asyncio.TaskGroup() as tg:  # subtrees never wait for each other
            walks = [
                tg.create_task(self._walk(root.fork(t), generate, score))
                for t in range(n // self.width)
            ]
        # every subtree's paths first (at most n), then every lost branch: paths keep
        # positions below n, so the votes at budget n count all of them
        outcomes = [outcome for walk in walks for outcome in walk.result()]
        return sorted(outcomes, key=lambda outcome: isinstance(outcome, BranchLost))

    async def _walk(
        self, start: Path, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        """One subtree: its finished results, then the branches it lost on the way. Each
        child is scored on its own, so a scoring failure loses that child alone. When an
        expansion fails for good (or none of its children could be scored) the walk falls
        back to the next-best sibling (at the subtree's root: to a fresh fork of it, with its
        own seed), `width - 1` times at most per level, so one failed request does not end
        the subtree. The forks are numbered past the root's children (width, width + 1, ...),
        so no fork shares a key, and so a seed or a branch id, with a child."""
        lost: list[BranchLost] = []
        best = start
        fallbacks = [start.fork(self.width + j) for j in range(self.width - 1)]
        children: list[Path] = []
        depth = 0
        while depth < self.max_depth and not best.done:
            to_end = depth == self.max_depth - 1
            scored: list[Path] = []
            generated = await kept(generate(best, self.width, to_end=to_end))
            if isinstance(generated, BranchLost):
                lost.append(generated)
            else:
                for result in await score_each(generated, score):
                    if isinstance(result, BranchLost):
                        lost.append(result)
                    else:
                        scored.append(result)
            if not scored:
                if not fallbacks:
                    return [*lost]
                best = fallbacks.pop(0)
                continue
            # stable sort: the first of equal values is best
            children = scored
            best, *fallbacks = sorted(children, key=self.value, reverse=True)
            depth += 1
        finished = [c for c in children if c.done]
        return [*(finished or [best]), *lost]
