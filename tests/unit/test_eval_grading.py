"""asynctts.eval.grading: the reference solutions grade as correct, equivalent forms are
accepted, and every grade records why it could not be graded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from asynctts.answers import extract_boxed, normalize
from asynctts.equivalence import Equivalence
from asynctts.eval.grading import Grade, grade_answers, grade_solution, regrade_timeouts
from asynctts.ledger import Ledger
from asynctts.protocols import Finish
from asynctts.search.strategy import Selection
from asynctts.solution import Candidate, Solution


async def test_every_reference_solution_grades_as_its_answer(
    math500: list[dict[str, Any]], equivalence: Equivalence
) -> None:
    """The boxed answer of each of the 500 reference solutions agrees with `answer`."""
    agree = 0
    misses: list[tuple[str, str, str | None]] = []
    for record in math500:
        boxed = extract_boxed(record["solution"])
        if boxed is not None and await equivalence.equal(record["answer"], boxed):
            agree += 1
        else:
            misses.append((record["unique_id"], record["answer"], boxed))
    assert misses == []
    assert agree == 500


async def test_grading_is_not_trivially_true(
    math500: list[dict[str, Any]], equivalence: Equivalence
) -> None:
    """Each of 50 reference answers against the next problem's answer: none is equal (this
    sample holds no two equal answers), so every comparison goes to math-verify and says no."""
    pairs = [(math500[i]["answer"], math500[i + 1]["answer"]) for i in range(0, 500, 10)]
    assert all(normalize(a) != normalize(b) for a, b in pairs)
    verdicts = await grade_answers(equivalence, pairs[0][0], [b for _, b in pairs[:1]])
    assert verdicts == {pairs[0][1]: False}
    for gold, other in pairs:
        assert await equivalence.equal(gold, other) is False, (gold, other)


@pytest.mark.parametrize(
    ("reference", "predicted", "correct"),
    [
        # fractions and decimals
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac12", True),
        (r"\frac{3}{4}", "0.75", True),
        (r"\frac{1}{3}", "0.33", False),
        (r"\dfrac{3}{4}", r"\frac{3}{4}", True),
        (r"\frac{\sqrt{3}}{2}", r"\tfrac{1}{2}\sqrt{3}", True),
        # units
        ("5", r"5\text{ cm}", True),
        (r"10\text{ cm}^2", "10", True),
        (r"\$32", "32", True),
        ("18", r"18 \text{ dollars}", True),
        # degrees
        (r"90^\circ", "90", True),
        ("30", r"30^{\circ}", True),
        ("45", "45 degrees", True),
        # intervals: brackets matter, spacing does not
        ("[0,1)", "[0, 1)", True),
        ("[0,1)", "[0,1]", False),
        (r"(-\infty, 3]", r"(-\infty,3]", True),
        # tuples: order matters
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", True),
        ("(1,2)", "(2,1)", False),
        ("(1,2,3)", "(1,2)", False),
        # \text{}
        (r"\text{(C)}", "C", True),
        (r"\text{(C)}", r"\text{(D)}", False),
        (r"\text{Monday}", "Monday", True),
        (r"\text{odd}", r"\text{even}", False),
        # others
        ("1,000", "1000", True),
        (r"10{,}080", "10080", True),
        ("3", "x=3", True),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        ("2", "3", False),
    ],
)
async def test_equivalent_forms(
    equivalence: Equivalence, reference: str, predicted: str, correct: bool
) -> None:
    assert await grade_answers(equivalence, reference, [predicted, None]) == {predicted: correct}


def solution(
    answers: Sequence[str | None],
    values: Sequence[float] | None = None,
    *,
    error: str | None = None,
) -> Solution:
    """A solution whose candidate i answered answers[i] (groups by string)."""
    groups: dict[str, int] = {}
    candidates = tuple(
        Candidate(
            index=i,
            branch=str(i),
            steps=("step",),
            scores=() if values is None else (values[i],),
            value=None if values is None else values[i],
            finish=Finish.EOS,
            answer=answer,
            group=None if answer is None else groups.setdefault(answer, len(groups)),
        )
        for i, answer in enumerate(answers)
    )
    return Solution(
        problem_id="p",
        problem="q",
        strategy="weighted_best_of_n",
        n=len(answers),
        answer=None,
        candidates=() if error else candidates,
        lost=(),
        ledger=Ledger(),
        error=error,
    )


class CountingEquivalence(Equivalence):
    """Decides by a table (None: undecided) and records every comparison it was asked."""

    def __init__(self, table: dict[str, bool | None]) -> None:
        super().__init__()
        self.table = table
        self.asked: list[tuple[str, str]] = []

    async def equal(self, gold: str, answer: str) -> bool | None:
        self.asked.append((gold, answer))
        return self.table[answer]


async def test_each_selection_and_budget_is_graded_from_one_run() -> None:
    # sample answers in generation order, with their PRM values
    sol = solution(["7", "5", "5", "9"], [0.2, 0.3, 0.1, 0.9])
    equivalence = CountingEquivalence({"5": True, "7": False, "9": False})
    grades = await grade_solution(
        equivalence, "5", sol, selections=["majority", "best", "weighted"], points=[1, 2, 4]
    )
    assert grades == {
        "majority": [Grade(1, "7", False), Grade(2, "7", False), Grade(4, "5", True)],
        "best": [Grade(1, "7", False), Grade(2, "5", True), Grade(4, "9", False)],
        "weighted": [Grade(1, "7", False), Grade(2, "5", True), Grade(4, "9", False)],
    }
    assert sorted(equivalence.asked) == [("5", "5"), ("5", "7"), ("5", "9")]  # once each


async def test_why_an_answer_could_not_be_graded() -> None:
    equivalence = CountingEquivalence({"8": None})
    sol = solution([None, "8"], [0.9, 0.1])
    grades = await grade_solution(
        equivalence, "8.0", sol, selections=["best", "majority"], points=[1, 2]
    )
    assert grades == {
        "best": [Grade(1, None, False, "no_answer"), Grade(2, None, False, "no_answer")],
        "majority": [Grade(1, None, False, "no_answer"), Grade(2, "8", False, "timeout")],
    }
    failed = solution([], error="SolveFailed: every branch was lost")
    assert await grade_solution(equivalence, "8", failed, selections=["weighted"], points=[4]) == {
        "weighted": [Grade(4, None, False, "error")]
    }
    assert Grade(4, None, False, "error").to_dict() == {
        "n": 4,
        "answer": None,
        "correct": False,
        "reason": "error",
    }


async def test_tree_search_votes_over_every_finished_path() -> None:
    # 3 finished paths from budget 2 (a tree search may return more paths than n)
    sol = solution(["1", "2", "2"], [0.9, 0.5, 0.5])
    equivalence = CountingEquivalence({"1": False, "2": True})
    prefix = await grade_solution(equivalence, "2", sol, selections=["weighted"], points=[2])
    every = await grade_solution(
        equivalence, "2", sol, selections=["weighted"], points=[2], all_candidates=True
    )
    assert prefix == {"weighted": [Grade(2, "1", False)]}  # only the first 2 samples
    assert every == {"weighted": [Grade(2, "2", True)]}
    with pytest.raises(ValueError, match=r"all_candidates votes once; got points=\[1, 2\]"):
        await grade_solution(
            equivalence, "2", sol, selections=["weighted"], points=[1, 2], all_candidates=True
        )


async def test_timed_out_grades_are_decided_again_and_only_those() -> None:
    grades: dict[Selection, list[Grade]] = {
        "majority": [Grade(1, "8", False, "timeout"), Grade(2, "7", False)],
        "best": [Grade(1, None, False, "no_answer"), Grade(2, "8", False, "timeout")],
        "weighted": [Grade(1, "9", False, "timeout"), Grade(2, "5", True)],
    }
    equivalence = CountingEquivalence({"8": True, "9": None})
    assert await regrade_timeouts(equivalence, "8.0", grades) == {
        "majority": [Grade(1, "8", True), Grade(2, "7", False)],
        "best": [Grade(1, None, False, "no_answer"), Grade(2, "8", True)],
        "weighted": [Grade(1, "9", False, "timeout"), Grade(2, "5", True)],  # undecided again
    }
    assert sorted(equivalence.asked) == [("8.0", "8"), ("8.0", "9")]  # once per answer


def test_grades_read_back_from_their_journal_form() -> None:
    for grade in (Grade(4, "8", False, "timeout"), Grade(1, None, False, "no_answer")):
        assert Grade.from_dict(grade.to_dict()) == grade
