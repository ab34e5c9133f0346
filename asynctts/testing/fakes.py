"""In-memory implementations of the two protocols, for unit tests of strategies (ours and
yours). They are deterministic for a given seed, count their calls, record their peak
concurrency, shuffle completion order with a seeded RNG, and take fault hooks."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from asynctts.errors import BranchLost
from asynctts.protocols import Finish, Path

StepFn = Callable[[Path, random.Random], tuple[str, Finish]]
ScoreFn = Callable[[Path, int], float]
FailFn = Callable[[Path], bool]


def _rng(seed: int, draw: object) -> random.Random:
    digest = hashlib.blake2b(repr((seed, draw)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass
class _Meter:
    calls: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    log: list[tuple[tuple[int, ...], int, bool]] = field(default_factory=list)

    def enter(self) -> None:
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1


async def _shuffle(rng: random.Random) -> None:
    # a few loop turns so concurrent calls complete in a seeded, not a FIFO, order
    for _ in range(rng.randrange(4)):
        await asyncio.sleep(0)


class FakePolicy:
    """`GenerateSteps` over `step_fn(path, rng) -> (step_text, finish)`.

    `step_fn` sees the child being built (its key is final, its steps grow) and an RNG seeded
    by (seed, child key), so a child's text depends only on its place in the tree; with
    `greedy` the RNG is seeded by (seed, prefix text) instead, so every child of the call
    is the same, as at temperature 0. `fail(path)` -> True makes the call for `path` raise
    `BranchLost`. With `to_end`, steps are drawn until one does not end in STEP (at most
    `max_steps`, then the child is cut: LENGTH). `meter.log` lists the sampling calls as
    (key, k, to_end); `greedy_log` the greedy ones.
    """

    def __init__(
        self,
        step_fn: StepFn,
        *,
        seed: int = 0,
        fail: FailFn | None = None,
        max_steps: int = 100,
    ) -> None:
        self.step_fn = step_fn
        self.seed = seed
        self.fail = fail
        self.max_steps = max_steps
        self.meter = _Meter()
        self.greedy_log: list[tuple[tuple[int, ...], int, bool]] = []
        self._order = random.Random(seed)

    @property
    def calls(self) -> int:
        """Every call, sampling and greedy."""
        return self.meter.calls

    async def __call__(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        self.meter.enter()
        (self.greedy_log if greedy else self.meter.log).append((path.key, k, to_end))
        try:
            await _shuffle(self._order)
            if self.fail is not None and self.fail(path):
                raise BranchLost(path.key, "generating", RuntimeError("injected failure"))
            return [self._child(path, i, to_end, greedy) for i in range(k)]
        finally:
            self.meter.leave()

    def _child(self, path: Path, index: int, to_end: bool, greedy: bool) -> Path:
        rng = _rng(self.seed, ("greedy", path.text) if greedy else (*path.key, index))
        steps: list[str] = []
        current = path.extend(index, steps, Finish.STEP)  # the child, before its new steps
        for _ in range(self.max_steps if to_end else 1):
            text, finish = self.step_fn(current, rng)
            steps.append(text)
            current = path.extend(index, steps, finish)
            if finish is not Finish.STEP:
                break
        if to_end and not current.done:  # out of steps: cut, as max_tokens would
            current = path.extend(index, steps, Finish.LENGTH)
        return current


class FakePRM:
    """`ScoreSteps` over `score_fn(path, step_index) -> score`; `fail(path)` -> True makes a
    call containing `path` raise `BranchLost`."""

    def __init__(self, score_fn: ScoreFn, *, seed: int = 0, fail: FailFn | None = None) -> None:
        self.score_fn = score_fn
        self.fail = fail
        self.meter = _Meter()
        self.scored_paths = 0
        self._order = random.Random(seed)

    @property
    def calls(self) -> int:
        return self.meter.calls

    async def __call__(self, paths: Sequence[Path]) -> list[Path]:
        self.meter.enter()
        try:
            await _shuffle(self._order)
            for path in paths:
                if self.fail is not None and self.fail(path):
                    raise BranchLost(path.key, "scoring", RuntimeError("injected failure"))
            self.scored_paths += len(paths)
            return [
                p.with_scores([self.score_fn(p, i) for i in range(len(p.steps))]) for p in paths
            ]
        finally:
            self.meter.leave()
