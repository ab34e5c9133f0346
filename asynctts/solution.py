"""`Solution`: what one solve returns — the answer, every candidate in generation order,
the branches that were lost and why, the votes at every sub-budget, and the ledger."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asynctts.answers import best_of, extract_boxed, majority_vote, normalize, weighted_vote
from asynctts.errors import BranchLost, format_key
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.aggregate import AggregateName, value_of
from asynctts.search.strategy import Selection
from asynctts.trace import Trace


@dataclass(frozen=True, slots=True)
class Candidate:
    """A path the search returned: its steps, per-step scores, aggregated value, why it
    stopped, its normalised answer and its answer group (equivalent answers share one)."""

    index: int  # position among the strategy's results (below n; see `Solution.votes`)
    branch: str
    steps: tuple[str, ...]
    scores: tuple[float, ...]
    value: float | None
    finish: Finish
    answer: str | None
    group: int | None

    @property
    def text(self) -> str:
        return "".join(self.steps)


@dataclass(frozen=True, slots=True)
class LostBranch:
    index: int
    branch: str
    stage: str  # "generating" or "scoring"
    reason: str


@dataclass(frozen=True, slots=True)
class Degradation:
    """What fell short of the plan in one solve, and why."""

    lost_generating: int = 0  # branches whose generation request failed for good
    lost_scoring: int = 0  # branches whose PRM request failed for good
    cut: int = 0  # candidates whose last step was cut by max_tokens or the context length
    unfinished: int = 0  # paths that reached the depth limit unfinished (not candidates)
    widths: tuple[int, ...] = ()  # paths expanded at each iteration (iteration 0: the root)
    planned_width: int | None = None  # n // width for tree searches

    @property
    def narrowed(self) -> tuple[int, ...]:
        """Iterations after the first whose width fell below n // width (paths finished
        early, or were lost; beam search still samples n steps from the paths left)."""
        if self.planned_width is None:
            return ()
        return tuple(d for d, w in enumerate(self.widths) if d > 0 and w < self.planned_width)

    @property
    def degraded(self) -> bool:
        """True when branches were lost, cut or left unfinished."""
        return bool(self.lost_generating or self.lost_scoring or self.cut or self.unfinished)

    def notes(self) -> list[str]:
        notes = []
        if self.lost_generating or self.lost_scoring:
            notes.append(
                f"{self.lost_generating + self.lost_scoring} branches lost "
                f"({self.lost_generating} generating, {self.lost_scoring} scoring)"
            )
        if self.cut:
            notes.append(f"{self.cut} candidates cut by max_tokens or the context length")
        if self.unfinished:
            notes.append(f"{self.unfinished} paths hit the iteration limit unfinished")
        for d in self.narrowed:
            notes.append(f"iteration {d}: {self.widths[d]} of {self.planned_width} paths expanded")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "lost_generating": self.lost_generating,
            "lost_scoring": self.lost_scoring,
            "cut": self.cut,
            "unfinished": self.unfinished,
            "widths": list(self.widths),
            "planned_width": self.planned_width,
            "notes": self.notes(),
        }


@dataclass(frozen=True, slots=True)
class Votes:
    """The answers the three selection rules give on the first `n` samples."""

    n: int
    majority: str | None
    best: str | None
    weighted: str | None


@dataclass(frozen=True)
class Solution:
    problem_id: str
    problem: str
    strategy: str
    n: int
    answer: str | None
    candidates: tuple[Candidate, ...]
    lost: tuple[LostBranch, ...]
    ledger: Ledger
    degradation: Degradation = Degradation()
    trace: Trace | None = None  # the search tree, when asked for (`trace=True`)
    error: str | None = None  # set when the problem failed as a whole (solve_many only)
    # compute_optimal's decision: difficulty bin, predicted difficulty, agreement, probe size,
    # early exit, the chosen option and its budget (None for other strategies)
    decision: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def votes(self, n: int | None = None) -> Votes:
        """Votes over the candidates among the first `n` results (all when None: then they
        give `answer`). For the best-of-N family this is exactly what a run with budget `n`
        would have answered, lost samples included; for tree searches, whose results are
        ranked or grouped by subtree, it is the vote of the first `n` of them."""
        budget = self.n if n is None else n
        return votes_of([c for c in self.candidates if c.index < budget], budget)

    def curve(self) -> list[Votes]:
        """Votes at n = 1, 2, 4, ..., up to the budget (and the budget itself)."""
        sizes = [1 << i for i in range(self.n.bit_length()) if 1 << i <= self.n]
        if sizes[-1] != self.n:
            sizes.append(self.n)
        return [self.votes(size) for size in sizes]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (answers, candidates, lost branches, ledger totals)."""
        return {
            "problem_id": self.problem_id,
            "problem": self.problem,
            "strategy": self.strategy,
            "n": self.n,
            "answer": self.answer,
            "error": self.error,
            "candidates": [
                {
                    "index": c.index,
                    "branch": c.branch,
                    "steps": list(c.steps),
                    "scores": list(c.scores),
                    "value": c.value,
                    "finish": c.finish.value,
                    "answer": c.answer,
                    "group": c.group,
                }
                for c in self.candidates
            ],
            "lost": [
                {"index": b.index, "branch": b.branch, "stage": b.stage, "reason": b.reason}
                for b in self.lost
            ],
            "degradation": self.degradation.to_dict(),
            "decision": None if self.decision is None else dict(self.decision),
            "ledger": self.ledger.summary(),
        }


def votes_of(candidates: Sequence[Candidate], n: int) -> Votes:
    def answer_at(index: int | None) -> str | None:
        return None if index is None else candidates[index].answer

    groups = [c.group for c in candidates]
    values = [c.value for c in candidates]
    has_scores = any(v is not None for v in values)
    weights = [0.0 if v is None else v for v in values]
    return Votes(
        n=n,
        majority=answer_at(majority_vote(groups)),
        best=answer_at(best_of(values)) if has_scores else None,
        weighted=answer_at(weighted_vote(groups, weights)) if has_scores else None,
    )


# Samples of a problem mostly box the same few answers: normalise each distinct one once.
_normalized = functools.lru_cache(maxsize=4096)(normalize)


def answer_of(path: Path) -> str | None:
    """The normalised content of the last \\boxed{} of a path; None when there is none."""
    boxed = extract_boxed(path.text)
    return None if boxed is None else _normalized(boxed)


@dataclass(frozen=True, slots=True)
class Row:
    index: int
    path: Path
    answer: str | None
    value: float | None


def collect(
    results: Sequence[Path | BranchLost], aggregate: AggregateName
) -> tuple[list[Row], list[LostBranch], int]:
    """Split a strategy's results into finished candidates, lost branches, and the number
    of paths that ended unfinished (which are not candidates)."""
    rows: list[Row] = []
    lost: list[LostBranch] = []
    unfinished = 0
    for index, result in enumerate(results):
        if isinstance(result, BranchLost):
            lost.append(LostBranch(index, format_key(result.key), result.stage, result.reason))
        elif result.done:
            rows.append(Row(index, result, answer_of(result), value_of(result.scores, aggregate)))
        else:
            unfinished += 1
    return rows, lost, unfinished


def pick(votes: Votes, selection: Selection) -> str | None:
    return {"majority": votes.majority, "best": votes.best, "weighted": votes.weighted}[selection]
