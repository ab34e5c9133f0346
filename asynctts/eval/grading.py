"""Grading: a predicted answer against the reference answer.

Rules:
- `Equivalence.equal(reference, predicted)` decides: math-verify's
  `verify(parse("\\boxed{" + reference + "}"), parse("\\boxed{" + predicted + "}"))`, nothing
  in between, in a worker process with a hard wall-clock deadline (its own timeouts are not
  safe in threads).
- Every grade says why it could not be graded, if so: "no_answer" (no `\\boxed{}` answer was
  selected), "timeout" (math-verify did not decide in time, or its worker died), "error" (the
  problem failed as a whole). Each of these counts as not correct.
- "timeout" is no verdict: `regrade_timeouts` asks math-verify again for those grades only
  (a resumed run does, from the journal's answers, with no new samples).
- A problem's distinct answers are graded once each, however many selection rules and
  budgets picked them, and concurrently (the worker pool queues them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from asynctts.equivalence import Equivalence
from asynctts.search.strategy import Selection
from asynctts.solution import Solution, Votes, votes_of

__all__ = ["Grade", "Reason", "grade_answers", "grade_solution", "regrade_timeouts"]

Reason = Literal["no_answer", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class Grade:
    """The answer one selection rule picked at budget `n`, and whether it is right."""

    n: int
    answer: str | None
    correct: bool
    reason: Reason | None = None  # why it could not be graded; None when it was

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "answer": self.answer, "correct": self.correct, "reason": self.reason}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Grade:
        """The grade `to_dict` wrote (a journal's)."""
        return cls(record["n"], record["answer"], record["correct"], record["reason"])


async def grade_answers(
    equivalence: Equivalence, reference: str, answers: Iterable[str | None]
) -> dict[str, bool | None]:
    """Verdicts for the distinct answers: True/False, or None when undecided in time.

    Args:
        equivalence: an open `Equivalence` (its worker processes do the comparing).
        reference: the reference answer.
        answers: predicted answers; None (no answer) is skipped.
    """
    distinct = list(dict.fromkeys(a for a in answers if a is not None))
    verdicts = await asyncio.gather(*(equivalence.equal(reference, a) for a in distinct))
    return dict(zip(distinct, verdicts, strict=True))


async def grade_solution(
    equivalence: Equivalence,
    reference: str,
    solution: Solution,
    *,
    selections: Sequence[Selection],
    points: Sequence[int],
    all_candidates: bool = False,
) -> dict[Selection, list[Grade]]:
    """Grade what each selection rule answers at each budget in `points`.

    Args:
        equivalence: an open `Equivalence`.
        reference: the reference answer.
        solution: a solve's result (`error` set: every grade is "error").
        selections: the rules to grade ("majority", "best", "weighted").
        points: budgets n; the votes over the first n samples (`Solution.votes(n)`), which
            for the best-of-N family is what a run with budget n would have answered.
        all_candidates: vote over every candidate whatever its index (tree searches, whose
            results are not a prefix-closed sample sequence); `points` must then be [n].

    Returns:
        For each selection, one `Grade` per point, in the order of `points`.
    """
    if all_candidates and len(points) != 1:
        raise ValueError(f"all_candidates votes once; got points={list(points)}")
    if solution.error is not None:
        return {s: [Grade(n, None, False, "error") for n in points] for s in selections}
    votes: list[Votes] = (
        [votes_of(solution.candidates, points[0])]
        if all_candidates
        else [solution.votes(n) for n in points]
    )
    picked = {s: [getattr(v, s) for v in votes] for s in selections}
    verdicts = await grade_answers(
        equivalence, reference, (a for answers in picked.values() for a in answers)
    )
    out: dict[Selection, list[Grade]] = {}
    for selection, answers in picked.items():
        grades: list[Grade] = []
        for n, answer in zip(points, answers, strict=True):
            if answer is None:
                grades.append(Grade(n, None, False, "no_answer"))
                continue
            verdict = verdicts[answer]
            if verdict is None:
                grades.append(Grade(n, answer, False, "timeout"))
            else:
                grades.append(Grade(n, answer, verdict))
        out[selection] = grades
    return out


async def regrade_timeouts(
    equivalence: Equivalence, reference: str, grades: Mapping[Selection, Sequence[Grade]]
) -> dict[Selection, list[Grade]]:
    """`grades` with each "timeout" grade decided again (each distinct answer once); the others
    are kept as they are. A grade still undecided stays "timeout"."""
    verdicts = await grade_answers(
        equivalence,
        reference,
        (g.answer for gs in grades.values() for g in gs if g.reason == "timeout"),
    )
    out: dict[Selection, list[Grade]] = {}
    for selection, selection_grades in grades.items():
        out[selection] = []
        for grade in selection_grades:
            verdict = None
            if grade.reason == "timeout" and grade.answer is not None:
                verdict = verdicts[grade.answer]
            out[selection].append(
                grade if verdict is None else Grade(grade.n, grade.answer, verdict)
            )
    return out
