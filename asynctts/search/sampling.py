"""Independent full-solution samples, the base of the best-of-N family.

Samples go out in groups of `per_request` siblings of the root (one request with `n=k` each,
so the server shares the prompt); group g's sample i has key (g, i), so results come back
in generation order and the first n samples of a run of N are exactly a run of n.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.branches import kept


async def sample_solutions(
    root: Path, n: int, generate: GenerateSteps, *, per_request: int
) -> list[Path | BranchLost]:
    """Exactly `n` results: a finished (or max_tokens-cut) path per sample, or the
    `BranchLost` of its group."""
    sizes = [min(per_request, n - start) for start in range(0, n, per_request)]
    async with asyncio.TaskGroup() as tg:
        groups = [
            tg.create_task(kept(generate(root.fork(g), k, to_end=True)))
            for g, k in enumerate(sizes)
        ]
    out: list[Path | BranchLost] = []
    for g, (task, k) in enumerate(zip(groups, sizes, strict=True)):
        result = task.result()
        if isinstance(result, BranchLost):
            group = root.fork(g)
            out.extend(BranchLost((*group.key, i), result.stage, result.cause) for i in range(k))
        else:
            out.extend(result)
    return out


async def score_each(
    results: Sequence[Path | BranchLost], score: ScoreSteps
) -> list[Path | BranchLost]:
    """Score every path on its own call (the PRM backend coalesces them into few requests),
    so a scoring failure loses one sample, not all of them. Order is kept."""

    async def one(path: Path) -> Path:
        (scored,) = await score([path])
        return scored

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(kept(one(r))) if isinstance(r, Path) else None for r in results]
    return [r if task is None else task.result() for r, task in zip(results, tasks, strict=True)]


async def scored_children(
    path: Path, k: int, generate: GenerateSteps, score: ScoreSteps, *, to_end: bool = False
) -> list[Path | BranchLost]:
    """`k` children of `path` from one request, each scored on its own (a failed scoring
    loses that child alone); when the request fails for good, one `BranchLost` for each
    child it would have had."""
    generated = await kept(generate(path, k, to_end=to_end))
    if isinstance(generated, BranchLost):
        return [BranchLost((*path.key, j), generated.stage, generated.cause) for j in range(k)]
    return await score_each(generated, score)
