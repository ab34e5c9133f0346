"""asynctts.answers: extraction, normalization and votes."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asynctts.answers import best_of, extract_boxed, majority_vote, normalize, weighted_vote

# ---------------------------------------------------------------------------------------------
# extract_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),  # nested braces
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the last box wins
        (r"\boxed{\boxed{5}}", "5"),
        (r"\fbox{7}", "7"),
        (r"the answer is $\boxed 5$.", "5"),
        (r"\boxed {  42 }", "42"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are not groups
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    ],
)
def test_extract_boxed_reads_the_last_box(text: str, expected: str) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        r"\boxed{}",  # empty: no answer
        r"\boxed{   }",
        r"\boxed{\frac{1}{2}",  # unbalanced: a cut-off solution
        r"\boxed{1} and then \boxed{\frac{1",  # the LAST box is cut off
        r"\boxedanswer{3}",  # another command, not a box
        r"\boxed",
    ],
)
def test_extract_boxed_finds_no_answer(text: str) -> None:
    assert extract_boxed(text) is None


def test_math500_solutions_agree_with_their_answers_after_normalize(
    math500: list[dict[str, Any]],
) -> None:
    rows = math500
    assert len(rows) == 500
    extracted = [extract_boxed(row["solution"]) for row in rows]
    agree = sum(
        box is not None and normalize(box) == normalize(row["answer"])
        for box, row in zip(extracted, rows, strict=True)
    )
    # measured: 500 of 500 (the dataset's answers are the last box of each solution)
    assert agree >= 500
    for row in rows:
        once = normalize(row["answer"])
        assert normalize(once) == once, row["answer"]


# ---------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("  $5$  ", "5"),
        (r"\(5\)", "5"),
        ("$5$.", "5"),
        ("5.", "5"),
        (r"\boxed{5}", "5"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\left\{ 1, 2 \right\}", r"\{1,2\}"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac34", r"\frac{3}{4}"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\frac 59", r"\frac{5}{9}"),
        (r"\frac9{19}", r"\frac{9}{19}"),
        (r"\frac\pi2", r"\frac{\pi}{2}"),
        (r"\frac{\frac12}{3}", r"\frac{\frac{1}{2}}{3}"),
        (r"11\sqrt2", r"11\sqrt{2}"),
        ("sqrt2", r"\sqrt{2}"),
        (r"\sqrt[3]{2}", r"\sqrt[3]{2}"),
        (r"1\!000", "1000"),
        (r"2 \, \pi \; r", r"2\pi r"),  # the space after a command before a letter stays
        (r"5\text{ cm}", "5"),
        (r"864 \mbox{ inches}^2", "864"),
        (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
        (r"5.4 \text{ cents}", "5.4"),
        (r"x\text{ cm}", r"x\text{cm}"),  # no number: not a unit
        (r"\text{Evelyn}", "Evelyn"),
        (r"\text{no  solution}", r"\text{no solution}"),
        (r"\text{(A)}", "A"),
        (r"\textbf{(C)}", "C"),
        ("(B)", "B"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        ("90 degrees", "90"),
        (r"10\%", "10"),
        (r"\$18.90", "18.9"),
        ("x = 5", "5"),
        (r"\theta = \frac{\pi}{4}", r"\frac{\pi}{4}"),
        (r"x \in [-2,7]", "[-2,7]"),
        ("y = 2x + 1", "y=2x+1"),  # the rest is not a value
        ("x = 2, y = 3", "x=2, y=3"),
        ("1{,}000", "1000"),
        ("1,000", "1000"),
        ("58,500", "58500"),
        (r"10,\!080", "10080"),
        (r"\$32,\!348", "32348"),
        ("1,000,000.50", "1000000.5"),
        ("1, 000", "1, 000"),  # a list, not a number
        ("0,500", "0, 500"),
        ("-2,1", "-2, 1"),
        ("3,5,7", "3, 5, 7"),
        ("(1,000)", "(1,000)"),  # a tuple
        ("0.50", "0.5"),
        ("2.000", "2"),
        ("(0.50, 1.0)", "(0.5,1)"),
        (".5", "0.5"),
        ("-.25", "-0.25"),
        ("100", "100"),
        (
            r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
            r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}",
        ),
        ("\u22125", "-5"),
    ],
)
def test_normalize(answer: str, expected: str) -> None:
    assert normalize(answer) == expected


def test_normalize_keeps_tuples_intervals_and_sets_apart() -> None:
    forms = ["(1,2)", "(2,1)", "[1,2]", "[1,2)", "(1,2]", r"\{1,2\}", "1, 2", "12"]
    assert len({normalize(form) for form in forms}) == len(forms)


def test_normalize_rejects_a_non_string() -> None:
    with pytest.raises(TypeError, match=r"normalize\(\) needs a str, got int: 5"):
        normalize(5)  # type: ignore[arg-type]


_LATEX_PIECES = st.sampled_from(
    [
        "\\frac", "\\dfrac", "\\sqrt", "sqrt", "{", "}", "(", ")", "[", "]", "\\{", "\\}",
        ",", " ", "$", ".", "0", "1", "2", "5", "00", "x", "=", "\\in", "A", "(A)", "\\pi",
        "-", "^", "~", "&", "\\\\", "{,}", ",\\!", "\\!", "\\,", "\\left", "\\right", "\\text{",
        " cm}", "\\mbox{", "^\\circ", "degrees", "\\%", "\\$", "\\boxed{", "\\theta",
    ]
)  # fmt: skip


@given(st.lists(_LATEX_PIECES, max_size=16).map("".join) | st.text(max_size=30))
def test_normalize_is_idempotent(answer: str) -> None:
    once = normalize(answer)
    assert normalize(once) == once


# ---------------------------------------------------------------------------------------------
# votes


@pytest.mark.parametrize(
    ("groups", "winner"),
    [
        ([], None),
        ([None, None], None),
        ([0], 0),
        ([None, 0], 1),
        ([0, 1, 1], 1),
        ([0, 1, 0, 1], 0),  # tie: the group seen first
        ([1, 0, 0, 1], 0),  # tie: group 1 was seen first, at index 0
        ([None, 2, 5, 5, None, None, None], 2),  # None never wins, however many
    ],
)
def test_majority_vote(groups: list[int | None], winner: int | None) -> None:
    assert majority_vote(groups) == winner


@pytest.mark.parametrize(
    ("groups", "weights", "winner"),
    [
        ([], [], None),
        ([None], [1.0], None),
        ([0, 1, 1], [0.9, 0.4, 0.4], 0),  # 0.9 > 0.4 + 0.4: fewer members can win
        ([0, 1, 1], [0.7, 0.4, 0.4], 1),  # 0.8 > 0.7: the heavier group wins
        ([0, 1, 1], [0.7, 0.3, 0.5], 2),  # its highest-weighted member
        ([0, 1, 1], [0.8, 0.4, 0.4], 0),  # tie: the group seen first
        ([1, 1, 0], [0.5, 0.5, 1.0], 0),  # tie inside the winner and between groups
        ([None, 0], [5.0, 0.1], 1),  # no answer never wins
    ],
)
def test_weighted_vote(groups: list[int | None], weights: list[float], winner: int | None) -> None:
    assert weighted_vote(groups, weights) == winner


def test_weighted_vote_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="weights has 1 entries for 2 members"):
        weighted_vote([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"weights\[1\]=nan: weights must be finite"):
        weighted_vote([0, 1], [0.5, math.nan])


@pytest.mark.parametrize(
    ("values", "has_answer", "winner"),
    [
        ([], None, None),
        ([None, None], None, None),
        ([0.1, 0.9, 0.5], None, 1),
        ([0.9, 0.1, 0.9], None, 0),  # tie: the first
        ([None, 0.2], None, 1),
        ([0.9, 0.5], [False, True], 1),  # given has_answer, only answers compete
        ([0.9, 0.5], None, 0),  # without it, as in the reference: the best regardless
        ([0.9, None], [False, True], None),
        ([-1.0, -2.0], None, 0),
    ],
)
def test_best_of(
    values: list[float | None], has_answer: list[bool] | None, winner: int | None
) -> None:
    assert best_of(values, has_answer) == winner


def test_best_of_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="has_answer has 1 entries for 2 members"):
        best_of([0.1, 0.2], [True])
    with pytest.raises(ValueError, match=r"values\[0\] is NaN"):
        best_of([math.nan, 0.2])


_GROUPS = st.lists(st.one_of(st.none(), st.integers(0, 4)), max_size=30)


@given(_GROUPS, st.randoms(use_true_random=False))
def test_majority_winning_group_ignores_member_order(
    groups: list[int | None], rng: random.Random
) -> None:
    counts = {g: groups.count(g) for g in set(groups) - {None}}
    shuffled = list(groups)
    rng.shuffle(shuffled)
    winner, winner_shuffled = majority_vote(groups), majority_vote(shuffled)
    if not counts:
        assert winner is None and winner_shuffled is None
        return
    assert winner is not None and winner_shuffled is not None
    most = max(counts.values())
    assert counts[groups[winner]] == most
    assert groups[winner] == next(g for g in groups if g is not None and counts[g] == most)
    assert winner == groups.index(groups[winner])  # the group's first member
    if list(counts.values()).count(most) == 1:  # no tie
        assert shuffled[winner_shuffled] == groups[winner]


@given(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 4)), st.floats(0, 1)), max_size=30),
    st.randoms(use_true_random=False),
)
def test_weighted_winning_group_ignores_member_order(
    members: list[tuple[int | None, float]], rng: random.Random
) -> None:
    shuffled = list(members)
    rng.shuffle(shuffled)
    exact = {g: math.fsum(w for m, w in members if m == g) for g, _ in members if g is not None}
    winner = weighted_vote([g for g, _ in members], [w for _, w in members])
    winner_shuffled = weighted_vote([g for g, _ in shuffled], [w for _, w in shuffled])
    if not exact:
        assert winner is None and winner_shuffled is None
        return
    assert winner is not None and winner_shuffled is not None
    winning_group = members[winner][0]
    assert winning_group is not None and exact[winning_group] == max(exact.values())
    if list(exact.values()).count(max(exact.values())) == 1:
        assert shuffled[winner_shuffled][0] == members[winner][0]


@given(_GROUPS, st.floats(min_value=1e-6, max_value=1e6))
def test_equal_weights_vote_like_the_majority(groups: list[int | None], weight: float) -> None:
    assert weighted_vote(groups, [weight] * len(groups)) == majority_vote(groups)


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=30))
def test_best_of_returns_a_maximum(values: list[float | None]) -> None:
    winner = best_of(values)
    present = [v for v in values if v is not None]
    if not present:
        assert winner is None
        return
    assert winner is not None
    assert values[winner] == max(present)
    assert winner == values.index(max(present))  # the first of equal maxima
