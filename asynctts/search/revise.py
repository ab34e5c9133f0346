"""Revision: sample full solutions; revise each one the PRM finds fault with, keep the best,
repeat. PRM-guided revision (the default) cuts a solution where the PRM says it went wrong and
resamples the rest from the prefix before the cut; prompted self-refinement shows the model
its solution and a critique request and samples whole new solutions.

Rules:
- Budget: n counts generations, originals and continuations alike. A solution and its
  revisions cost at most 1 + continuations * rounds generations, so m = n // (1 +
  continuations * rounds) originals are drawn (best-of-N's sampler, `per_request` to a
  request) and scored: even if every solution is revised in every round, a run draws at most
  m * (1 + continuations * rounds) <= n. The budget left (the remainder of that division,
  and the rounds of solutions that stop early) is not spent. n below 1 + continuations *
  rounds cannot pay for one solution and its revisions: refused.
- The cut: a solution is revised only when one of its steps scores below `threshold` (in both
  revisions).
  "first_below" cuts at the first such step; "largest_drop" at the step whose score falls
  most below the score of the step before it (the first step's fall counted from 1), ties to
  the earliest. The steps before the cut are kept with their scores.
- Each round, each solution with a cut gets `continuations` samples to the end from its kept
  prefix, in one request (the server's prefix cache serves the prefix), and each is scored.
  Prompted (`revision="prompted"`): the samples start a new assistant turn after two earlier
  turns, the solution's whole text and `critique` (`Path.turns`), and are whole solutions;
  the PRM scores each as a solution of the problem alone, never seeing the earlier turns.
  Where the cut falls does not matter there, only whether there is one.
  The best by value under `aggregate` among the solution and its scored continuations (ties:
  the solution) is revised in the next round; after `rounds` rounds, or when the best has
  nothing to cut, it is final. Solutions are revised concurrently, each on its own.
- Keys: original i of sample group g is (g, i), as best-of-N's; the prefix revising the
  solution at key s in round t (t = 1, 2, ...) is s + (t,), a fork of s (prompted: the
  empty start of the new turn), and its continuations s + (t, j). Every key is distinct, so
  every request draws its own seeds.
- Results: the originals in order, then each round's continuations (solutions in the order
  of their originals): at most n paths; then every lost branch. A failed request loses its
  continuations (one `BranchLost` each), a failed scoring the one continuation, and the
  solution goes on with the best it has; a lost original has nothing to revise.
- Answer: weighted vote over all finished paths drawn, originals and continuations.
- Prompted needs a policy that renders earlier turns (chat mode or a chat template):
  `needs_turns` says so, and a solve refuses a plain `prompt_format` before any request.
  Small models rarely correct themselves when asked to (docs/design.md): on the simulator a
  prompted revision is a fresh sample of the problem, and what it gains over weighted
  best-of-N comes from the PRM's pick alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of
from asynctts.search.sampling import sample_solutions, score_each, scored_children
from asynctts.search.strategy import Selection

Cut = Literal["first_below", "largest_drop"]
CUTS: tuple[Cut, ...] = ("first_below", "largest_drop")
Revision = Literal["guided", "prompted"]
REVISIONS: tuple[Revision, ...] = ("guided", "prompted")

# The user turn after a solution in prompted revision: the system prompt's step format and
# boxed answer still hold, so it asks only for a review and a whole new solution.
DEFAULT_CRITIQUE = (
    "Review your solution above step by step and find the first mistake, if there is one."
    " Then write a complete corrected solution, step by step, ending with the final answer"
    " in \\boxed{}."
)

Results = list[Path | BranchLost]


@dataclass(frozen=True, kw_only=True)
class Revise:
    """Args:
    threshold: a solution with a step scored below it is revised; in [0, 1].
    cut: where a revised solution is cut: "first_below" or "largest_drop" (guided only;
        prompted refuses "largest_drop").
    continuations: samples drawn in each round (from the kept prefix, or prompted whole
        new solutions); >= 1.
    rounds: revisions at most per solution; >= 0 (0: weighted best-of-N).
    aggregate: how step scores become a solution's value: "last", "min" or "prod".
    per_request: originals asked for in one request (see `MajorityVote`).
    revision: "guided" (cut and resample the rest) or "prompted" (the model reads its
        solution and `critique` and writes a new one).
    critique: the user turn after the solution in prompted revision (guided refuses
        another than the default); not blank.
    """

    name: ClassVar[str] = "revise"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    threshold: float = 0.5
    cut: Cut = "first_below"
    continuations: int = 2
    rounds: int = 2
    aggregate: AggregateName = "last"
    per_request: int = 16
    revision: Revision = "guided"
    critique: str = DEFAULT_CRITIQUE

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if not 0.0 <= self.threshold <= 1.0:  # also refuses NaN
            raise ValueError(f"threshold={self.threshold}: need a value in [0, 1]")
        if self.cut not in CUTS:
            raise ValueError(f"cut={self.cut!r}: choose one of {list(CUTS)}")
        if self.continuations < 1:
            raise ValueError(f"continuations={self.continuations}: need >= 1")
        if self.rounds < 0:
            raise ValueError(f"rounds={self.rounds}: need >= 0")
        if self.per_request < 1:
            raise ValueError(f"per_request={self.per_request}: need >= 1")
        if self.revision not in REVISIONS:
            raise ValueError(f"revision={self.revision!r}: choose one of {list(REVISIONS)}")
        if not self.critique.strip():
            raise ValueError(f"critique={self.critique!r}: prompted revision needs a request")
        # each option belongs to one revision: refuse the other's rather than ignore it
        if self.revision == "prompted" and self.cut != "first_below":
            raise ValueError(
                f"cut={self.cut!r}: prompted revision writes whole new solutions, it cuts nothing"
            )
        if self.revision == "guided" and self.critique != DEFAULT_CRITIQUE:
            raise ValueError("critique= is for revision='prompted': guided revision asks nothing")

    @property
    def needs_turns(self) -> bool:
        """Whether the policy must render earlier turns (`Path.turns`)."""
        return self.revision == "prompted"

    @property
    def cost(self) -> int:
        """Generations one solution and all its revisions can take."""
        return 1 + self.continuations * self.rounds

    def originals(self, n: int) -> int:
        """How many solutions budget n starts with."""
        return n // self.cost

    def check_budget(self, n: int) -> None:
        if n < self.cost:
            raise ValueError(
                f"n={n}: one solution and its revisions take up to 1 + continuations * rounds"
                f" = 1 + {self.continuations} * {self.rounds} = {self.cost} generations"
            )

    def cut_at(self, scores: Sequence[float]) -> int | None:
        """The index of the step to cut `scores`' solution at (its steps before it are
        kept), or None when no step scores below the threshold."""
        below = [i for i, s in enumerate(scores) if s < self.threshold]
        if not below:
            return None
        if self.cut == "first_below":
            return below[0]
        falls = [before - s for before, s in zip((1.0, *scores), scores, strict=False)]
        return falls.index(max(falls))

    def value(self, path: Path) -> float:
        value = value_of(path.scores, self.aggregate)
        return float("-inf") if value is None else value

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        drawn = await sample_solutions(
            root, self.originals(n), generate, per_request=self.per_request
        )
        originals = await score_each(drawn, score)
        async with asyncio.TaskGroup() as tg:
            lineages = [
                tg.create_task(self._revisions(o, generate, score))
                for o in originals
                if isinstance(o, Path)
            ]
        by_round: list[Results] = [[] for _ in range(self.rounds)]
        for task in lineages:
            for t, drawn_in_round in enumerate(task.result()):
                by_round[t].extend(drawn_in_round)
        results = [*originals, *(r for drawn_in_round in by_round for r in drawn_in_round)]
        paths: Results = [r for r in results if isinstance(r, Path)]
        return [*paths, *(r for r in results if isinstance(r, BranchLost))]

    async def _revisions(
        self, solution: Path, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Results]:
        """What each round drew to revise `solution` (scored continuations or lost ones),
        until the rounds run out or the best so far has nothing to cut."""
        drawn: list[Results] = []
        best = solution
        for t in range(1, self.rounds + 1):
            cut = self.cut_at(best.scores)
            if cut is None:
                break
            start = self._start(best, cut, (*best.key, t))
            scored = await scored_children(start, self.continuations, generate, score, to_end=True)
            drawn.append(scored)
            for candidate in scored:
                if isinstance(candidate, Path) and self.value(candidate) > self.value(best):
                    best = candidate
        return drawn

    def _start(self, best: Path, cut: int, key: tuple[int, ...]) -> Path:
        """What a round's continuations of `best` are sampled from: its steps before the cut,
        or (prompted) a new turn after its text and the critique."""
        if self.revision == "prompted":
            return Path(key=key, turns=(best.text, self.critique))
        return Path(steps=best.steps[:cut], scores=best.scores[:cut], key=key)
