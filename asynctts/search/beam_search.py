"""PRM-guided beam search (Snell et al. 2024), as search-and-learn runs it, with its "first n
to finish" bug fixed.

Every iteration samples n steps, whatever has finished. The n // width active paths of
highest aggregated value survive (all of them when fewer are active) and share the n children
as the reference's cyclic replication of the survivors to n does: with s survivors the first
n % s of them (in generation order) get n // s + 1 children, the others n // s; n // width
survivors get `width` each. The children of one survivor are one request (n=k siblings).
Children are listed at the positions of the copies they stand for in the replication (every
survivor's first child, then every survivor's second, ...): the generation order later
iterations and ties go by.

The first iteration expands the root, n copies of it, as n // width forks of `width` siblings
each (fork g holds copies g * width ... in order). When a request fails for good, the branch
is recorded as lost and the next-best path that did not survive (at the root: a spare fork)
stands in with the same number of children.

The PRM scores every child; children that ended (EOS, max_tokens, empty step) join the
finished set, the rest compete for the next iteration. The search stops when no path is
active or after `max_depth` iterations, the last of which generates to the end. The result
is the n best finished paths ranked by value (ties: the first finished), then lost branches.

Lookahead k > 0 (search-and-learn's `lookahead`, Snell et al.'s lookahead search): before
scoring, each unfinished child is rolled out k more steps greedily (temperature 0) under a
fork of itself, stopping where the solution ends; the rollout is scored and dropped. The
child keeps its one new step and that step's own score, and competes with the rolled-out
path's value ("last": the score of the rollout's last step). The last iteration has none.
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

# The fork index under which a candidate's lookahead rollout is generated: no child has a
# negative index, so rollout nodes never share a key (trace node, ledger branch) with one.
LOOKAHEAD_FORK = -1


@dataclass(frozen=True, kw_only=True)
class BeamSearch(TreeSearch):
    """Args:
    width: children per survivor when n // width paths survive (M); n must be a multiple.
    max_depth: iterations at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    filter_duplicates: drop active paths whose text repeats an earlier one before ranking.
    lookahead: greedy steps rolled out from each candidate to score it (0: none).
    """

    name: ClassVar[str] = "beam_search"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    filter_duplicates: bool = False
    lookahead: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead < 0:
            raise ValueError(f"lookahead={self.lookahead}: need >= 0")

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        keep = n // self.width
        finished: list[Path] = []
        lost: list[BranchLost] = []
        # (path, ranking value) pairs; the root's forks are unscored, so of equal rank:
        # `keep` survivors and as many spares
        active = [(root.fork(g), float("-inf")) for g in range(2 * keep)]
        for depth in range(self.max_depth):
            last = depth == self.max_depth - 1
            broods = await self._expand(active, keep, n, last, generate, lost)
            if depth == 0:  # the root's n copies, split across its forks in order
                children = [child for brood in broods for child in brood]
            else:
                children = replication_order(broods)
            lookahead = 0 if last else self.lookahead
            active = []
            for result in await self._score(children, lookahead, generate, score):
                if isinstance(result, BranchLost):
                    lost.append(result)
                elif result[0].done:
                    finished.append(result[0])
                else:
                    active.append(result)
            if self.filter_duplicates:
                active = unique_texts(active)
            if not active:
                break
        finished.sort(key=self.value, reverse=True)  # stable: ties go to the first finished
        return [*finished[:n], *lost]

    async def _expand(
        self,
        active: list[tuple[Path, float]],
        keep: int,
        n: int,
        to_end: bool,
        generate: GenerateSteps,
        lost: list[BranchLost],
    ) -> list[list[Path]]:
        """The children of each of the `keep` best active paths (n in all), survivors in
        generation order. A survivor whose request failed for good is recorded as lost and
        the next-best path stands in with its share."""
        # stable: of equal values the earlier path ranks first
        ranking = sorted(range(len(active)), key=lambda i: active[i][1], reverse=True)
        survivors = sorted(ranking[:keep])  # back in generation order
        standby = iter(ranking[keep:])
        shares = cyclic_shares(n, len(survivors))
        broods: list[list[Path]] = [[] for _ in survivors]
        wave = [(slot, active[i][0]) for slot, i in enumerate(survivors)]
        while wave:
            async with asyncio.TaskGroup() as tg:
                requests = [
                    tg.create_task(kept(generate(path, shares[slot], to_end=to_end)))
                    for slot, path in wave
                ]
            stand_ins = []
            for (slot, _), request in zip(wave, requests, strict=True):
                outcome = request.result()
                if isinstance(outcome, BranchLost):
                    lost.append(outcome)
                    stand_in = next(standby, None)
                    if stand_in is not None:
                        stand_ins.append((slot, active[stand_in][0]))
                else:
                    broods[slot] = outcome
            wave = stand_ins
        return broods

    async def _score(
        self,
        children: list[Path],
        lookahead: int,
        generate: GenerateSteps,
        score: ScoreSteps,
    ) -> list[tuple[Path, float] | BranchLost]:
        """Every child scored on its own call, in order, with its ranking value; a child
        whose scoring (or rollout) failed for good comes back as its `BranchLost`."""
        if not lookahead:
            return [
                r if isinstance(r, BranchLost) else (r, self.value(r))
                for r in await score_each(children, score)
            ]
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(kept(self._rolled_out(child, lookahead, generate, score)))
                for child in children
            ]
        return [task.result() for task in tasks]

    async def _rolled_out(
        self, child: Path, lookahead: int, generate: GenerateSteps, score: ScoreSteps
    ) -> tuple[Path, float]:
        """`child` scored, and valued as its greedy rollout of `lookahead` steps (a finished
        child: as it is). The child keeps its own steps' scores (its descendants inherit
        them); the rollout only ranks it. A failed rollout or scoring loses the child."""
        if child.done:
            (scored,) = await score([child])
            return scored, self.value(scored)
        try:
            rollout = child.fork(LOOKAHEAD_FORK)
            for _ in range(lookahead):
                (rollout,) = await generate(rollout, 1, greedy=True)
                if rollout.done:
                    break
            (scored,) = await score([rollout])
        except BranchLost as failure:
            raise BranchLost(child.key, failure.stage, failure.cause) from failure
        return child.with_scores(scored.scores[: len(child.steps)]), self.value(scored)


def replication_order(broods: list[list[Path]]) -> list[Path]:
    """The children as the reference lists the copies it replicated: every survivor's first
    child, then every survivor's second, ..."""
    rounds = max((len(brood) for brood in broods), default=0)
    return [brood[j] for j in range(rounds) for brood in broods if j < len(brood)]


def cyclic_shares(n: int, survivors: int) -> list[int]:
    """Children per survivor when `survivors` paths are replicated cyclically to n copies:
    the first n % survivors get one more."""
    if survivors == 0:
        return []
    each, extra = divmod(n, survivors)
    return [each + (slot < extra) for slot in range(survivors)]


def unique_texts(ranked: list[tuple[Path, float]]) -> list[tuple[Path, float]]:
    """The (path, value) pairs without those whose path repeats an earlier path's text."""
    seen: set[str] = set()
    unique = []
    for path, value in ranked:
        if path.text not in seen:
            seen.add(path.text)
            unique.append((path, value))
    return unique
