"""The two protocols every search strategy is written against, and the values they pass.

Nothing here does I/O. A strategy sees only `Path` values, `GenerateSteps` and `ScoreSteps`;
how steps are sampled (one request with `n=k`), scored (coalesced PRM calls), retried or
accounted for lives below these protocols.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

STEP_DELIMITER = "\n\n"


class Finish(enum.StrEnum):
    """Why the last generated step ended."""

    STEP = "step"  # stopped at the step delimiter: the path goes on
    EOS = "eos"  # the model ended the solution
    LENGTH = "length"  # cut by max_tokens or by the context length
    EMPTY = "empty"  # an empty step: the model has nothing more to say


@dataclass(frozen=True, slots=True)
class Path:
    """A partial or finished solution: its steps, one PRM score per scored step, its place in
    the search tree (`key`, from which the request seed derives) and why it stopped.

    `turns` are the conversation's earlier turns before the path's own assistant turn,
    alternating assistant and user contents (an earlier solution, then a request to revise
    it). The policy renders them before the path's steps; the PRM never reads them (it scores
    the steps as a solution of the problem). `fork` and `extend` keep them.
    """

    steps: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    finish: Finish = Finish.STEP
    key: tuple[int, ...] = ()
    turns: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.finish is not Finish.STEP

    @property
    def text(self) -> str:
        return "".join(self.steps)

    @property
    def scored(self) -> bool:
        return len(self.scores) == len(self.steps)

    def fork(self, index: int) -> Path:
        """The same path under a new tree position: independent subtrees or sample groups
        start from the root with distinct keys, so they draw distinct seeds."""
        return replace(self, key=(*self.key, index))

    def extend(self, index: int, steps: Sequence[str], finish: Finish) -> Path:
        """Child number `index` of this path, with `steps` appended (not yet scored)."""
        return Path(
            steps=(*self.steps, *steps),
            scores=self.scores,
            finish=finish,
            key=(*self.key, index),
            turns=self.turns,
        )

    def with_scores(self, scores: Sequence[float]) -> Path:
        if len(scores) != len(self.steps):
            raise ValueError(f"{len(scores)} scores for {len(self.steps)} steps")
        return replace(self, scores=tuple(scores))


class GenerateSteps(Protocol):
    """Sample `k` children of `path`, in index order (child i has key `path.key + (i,)`).

    Each child carries one new step ending at the step delimiter (kept), or, with
    `to_end=True`, the rest of the solution split into steps. Scores of the prefix are kept;
    new steps are unscored. With `greedy=True` the children are decoded at temperature 0: the
    most likely continuation of the prefix, the same for every child (lookahead rollouts ask
    for k=1). Raises `BranchLost` when the request failed for good.
    """

    async def __call__(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]: ...


class ScoreSteps(Protocol):
    """Return the same paths in the same order with one PRM score in [0, 1] per step.
    Raises `BranchLost` when the scoring request failed for good."""

    async def __call__(self, paths: Sequence[Path]) -> list[Path]: ...
