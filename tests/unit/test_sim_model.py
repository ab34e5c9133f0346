"""The simulated model is no oracle: its steps carry no label, its PRM judges paths with a
set discrimination and is fooled by some wrong paths more than others, its mistakes belong to
(problem, path), problems carry MATH-level difficulties, and wrong answers have one dominant
value and a tail. Statistical facts are checked on seeded samples."""

from __future__ import annotations

import math
import re
from collections import Counter
from statistics import NormalDist, correlation, fmean, pstdev

import pytest

from asynctts.eval.data import load_dataset
from asynctts.protocols import STEP_DELIMITER
from asynctts.testing.sim_model import (
    CONCLUSION_PATTERN,
    LEVELS,
    STEP_CORRELATION,
    STEP_PATTERN,
    SimModel,
    SimProblem,
    first_slip,
    math500_problem,
    signature_start,
    slipped,
    wrong_rank,
)

PROBLEM = "What is 6 times 7?"
STEP_RE = re.compile(STEP_PATTERN)
CONCLUSION_RE = re.compile(CONCLUSION_PATTERN)


def solution(model: SimModel, problem: str, seed: int) -> str:
    return model.sample(model.read(problem), seed).text


def answer_in(text: str) -> str:
    match = CONCLUSION_RE.search(text)
    assert match is not None, text
    return match["answer"]


def final_score(model: SimModel, problem: str, text: str) -> float:
    """The PRM's p_pos for the conclusion of `text` (the last of its segments)."""
    steps = [s for s in text.split(STEP_DELIMITER)]
    prm_input = problem + STEP_DELIMITER + "".join(s + model.step_tag for s in steps)
    return model.score(prm_input)[-1][1]


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_steps_carry_no_label() -> None:
    model = SimModel({PROBLEM: SimProblem("42", n_steps=4, slip_rate=0.5)})
    texts = [solution(model, PROBLEM, seed) for seed in range(100)]
    assert all(len(STEP_RE.findall(t)) == 4 for t in texts)
    assert not any(re.search(r"\b(ok|slip)\b", t) for t in texts)
    assert {answer_in(t) == "42" for t in texts} == {True, False}


@pytest.mark.parametrize("discrimination", [1.0, 2.5])
def test_prm_separates_right_and_wrong_paths_by_the_set_discrimination(
    discrimination: float,
) -> None:
    model = SimModel(
        {PROBLEM: SimProblem("42", n_steps=2, slip_rate=0.3)},
        prm_discrimination=discrimination,
        prm_fooled_rate=0.0,
    )
    right: list[float] = []
    wrong: list[float] = []
    for seed in range(1200):
        text = solution(model, PROBLEM, seed)
        (right if answer_in(text) == "42" else wrong).append(final_score(model, PROBLEM, text))
    assert len(right) > 400 and len(wrong) > 400
    expected = NormalDist().cdf(discrimination / math.sqrt(2))  # AUC of two unit normals
    assert auc(right, wrong) == pytest.approx(expected, abs=0.04)
    assert min(wrong) > 0.0 and max(right) < 1.0  # misjudged paths exist on both sides


def test_the_prm_ignores_the_boxed_answer() -> None:
    model = SimModel({PROBLEM: SimProblem("42", n_steps=3, slip_rate=0.5)})
    text = solution(model, PROBLEM, 7)
    forged = text.replace("{" + answer_in(text) + "}", "{42}")
    assert final_score(model, PROBLEM, forged) == final_score(model, PROBLEM, text)


def test_paths_to_the_common_wrong_answer_fool_the_prm_more() -> None:
    problem = SimProblem("42", n_steps=2, slip_rate=0.5, wrong_top=0.5)
    model = SimModel({PROBLEM: problem}, prm_fooled_rate=1.0)
    honest = SimModel({PROBLEM: problem}, prm_fooled_rate=0.0)
    common: list[float] = []
    rare: list[float] = []
    unfooled: list[float] = []
    for seed in range(600):
        text = solution(model, PROBLEM, seed)
        tags = [m["tag"] for m in STEP_RE.finditer(text)]
        wrong_path = first_slip(tags, problem.slip_rates(PROBLEM), PROBLEM, STEP_CORRELATION)
        if wrong_path is None:
            continue
        score = final_score(model, PROBLEM, text)
        (common if wrong_rank(problem, wrong_path) == 0 else rare).append(score)
        unfooled.append(final_score(honest, PROBLEM, text))
    # every common-answer path is raised by d'/2 to d'; a quarter of the rare ones are
    assert fmean(common) > fmean(rare) + 0.15 > fmean(unfooled) + 0.15


@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.8, 1.0])
def test_siblings_share_the_modal_outcome_at_the_set_share(correlation: float) -> None:
    # 40 prefixes, 50 sibling steps (tags) after each, slip rate 0.3
    agreement, slips = [], 0
    for i in range(40):
        prefix = f"Problem {i}?|{i:06x}"
        siblings = [slipped(prefix + f"{j:06x}", 0.3, correlation) for j in range(50)]
        slips += sum(siblings)
        agreement.append(max(sum(siblings), 50 - sum(siblings)) / 50)
    # every step keeps its slip rate (the 40 modal draws weigh `correlation` each, so a
    # correlated run strays further from 0.3)
    assert slips / 2000 == pytest.approx(0.3, abs=0.03 + 0.15 * correlation)
    if correlation == 1.0:
        assert agreement == [1.0] * 40  # one outcome per prefix
    elif correlation == 0.0:
        assert fmean(agreement) == pytest.approx(0.7, abs=0.06)  # independent draws
    else:  # the followers agree: the majority holds at least their share
        assert fmean(agreement) >= correlation


def test_first_steps_draw_their_own_outcome_whatever_the_correlation() -> None:
    # after the problem alone (its signature start) 200 first steps at slip rate 0.5
    firsts = [slipped(signature_start(PROBLEM) + f"{j:06x}", 0.5, 1.0) for j in range(200)]
    assert 80 <= sum(firsts) <= 120


def test_the_model_writes_correlated_siblings() -> None:
    # at correlation 1 the 30 second steps after one first step all slip or none does; at 0
    # (slip rate 0.5) both outcomes occur
    problem = SimProblem("42", n_steps=3, slip_rate=0.5)
    for share, outcomes in ((1.0, 1), (0.0, 2)):
        model = SimModel({PROBLEM: problem}, step_correlation=share)
        first = next(model.continuation(model.read(PROBLEM), 0))
        reading = model.read(PROBLEM + STEP_DELIMITER + first)
        rates = problem.slip_rates(PROBLEM)
        ends = set()
        for seed in range(30):
            second = next(model.continuation(reading, seed))
            tags = [reading.steps[0].tag, STEP_RE.search(second)["tag"]]  # type: ignore[index]
            signature = signature_start(PROBLEM) + "".join(tags)
            ends.add(slipped(signature, rates[1], share))
        assert len(ends) == outcomes


@pytest.mark.parametrize("persistence", [0.0, 0.25, 1.0])
def test_a_path_carries_the_set_share_of_the_prms_error_to_its_next_step(
    persistence: float,
) -> None:
    # d' = 0: a score is pure error; its latent value is unit normal whatever the persistence
    model = SimModel(
        {PROBLEM: SimProblem("42", n_steps=2, slip_rate=0.3)},
        prm_discrimination=0.0,
        prm_fooled_rate=0.0,
        prm_persistence=persistence,
    )
    first: list[float] = []
    second: list[float] = []
    for seed in range(1500):
        steps = solution(model, PROBLEM, seed).split(STEP_DELIMITER)[:2]
        rows = model.score(PROBLEM + STEP_DELIMITER + "".join(s + model.step_tag for s in steps))
        latent = [(math.log(p_pos / p_neg) - 1.5) / 1.5 for p_neg, p_pos in rows]
        first.append(latent[0])
        second.append(latent[1])
    assert pstdev(first) == pytest.approx(1.0, abs=0.06)
    assert pstdev(second) == pytest.approx(1.0, abs=0.06)
    # step 2's drift is (z1 + z2) / sqrt 2, so it shares persistence / sqrt 2 with step 1
    assert correlation(first, second) == pytest.approx(persistence / math.sqrt(2), abs=0.06)


def test_mistakes_belong_to_problem_and_path_not_to_the_answer_text() -> None:
    other = "What is 50 minus 8?"  # the same answer, another problem
    spec = SimProblem("42", n_steps=3, slip_rate=0.5)
    model = SimModel({PROBLEM: spec, other: spec})
    wrong = {
        p: Counter(a for s in range(300) if (a := answer_in(solution(model, p, s))) != "42")
        for p in (PROBLEM, other)
    }
    assert wrong[PROBLEM].most_common(1) != wrong[other].most_common(1)
    assert len(set(wrong[PROBLEM]) & set(wrong[other])) < len(wrong[PROBLEM]) / 2
    # the same step text under two problems is two paths: the PRM judges them apart
    steps = "Step 1: so we get (00aa01).\n\n<extra_0>Step 2: then note (00aa02).\n\n<extra_0>"
    assert model.score(f"{PROBLEM}\n\n{steps}") != model.score(f"{other}\n\n{steps}")


def test_wrong_answers_have_a_dominant_value_then_a_tail() -> None:
    model = SimModel({PROBLEM: SimProblem("42", n_steps=3, slip_rate=0.6, wrong_top=0.5)})
    answers = Counter(answer_in(solution(model, PROBLEM, seed)) for seed in range(3000))
    del answers["42"]
    (_, top), *rest = answers.most_common()
    assert top / answers.total() == pytest.approx(0.5, abs=0.05)
    assert len(rest) >= 8 and rest[0][1] < top / 2


@pytest.mark.parametrize("crux", [0.0, 0.5, 1.0])
def test_crux_moves_the_difficulty_into_one_step(crux: float) -> None:
    problem = SimProblem("1", n_steps=5, slip_rate=0.2, crux=crux)
    rates = problem.slip_rates(PROBLEM)
    assert math.prod(1 - r for r in rates) == pytest.approx(problem.pass_at_1)
    crux_rate = max(rates)
    assert sorted(rates).count(crux_rate) == (5 if crux == 0 else 1)
    if crux == 1.0:
        assert sorted(rates)[:4] == [0.0] * 4


def test_math500_levels_spread_like_a_small_models() -> None:
    data = load_dataset().problems
    problems = [math500_problem(p.problem, p.answer, p.level) for p in data]
    assert problems == [math500_problem(p.problem, p.answer, p.level) for p in data]
    by_level = {
        level: fmean(s.pass_at_1 for s, p in zip(problems, data, strict=True) if p.level == level)
        for level in LEVELS
    }
    assert by_level[1] > by_level[2] > by_level[3] > by_level[4] > by_level[5]
    assert by_level[1] > 0.5 and by_level[5] < 0.12
    assert fmean(s.pass_at_1 for s in problems) == pytest.approx(0.26, abs=0.03)


# --- earlier turns (prompted revision) -----------------------------------------------------------

CRITIQUE = "Review your solution and correct it."


def revision_prompt(problem: str, earlier: str, partial: str = "") -> str:
    """The conversation as the simulated server joins chat messages: the problem, the earlier
    solution, the critique request, then the partial revision."""
    return STEP_DELIMITER.join([problem, earlier, CRITIQUE, partial])


def test_an_earlier_solution_is_not_read_as_the_current_path() -> None:
    model = SimModel({PROBLEM: SimProblem("42", n_steps=4, slip_rate=0.3)})
    earlier = solution(model, PROBLEM, seed=1)
    earlier_tags = tuple(m["tag"] for m in STEP_RE.finditer(earlier))
    fresh = model.read(revision_prompt(PROBLEM, earlier))
    assert (fresh.key, fresh.steps, fresh.concluded) == (PROBLEM, (), False)
    assert fresh.revised is not None
    assert tuple(s.tag for s in fresh.revised) == earlier_tags
    # two steps into the revision: those two are the path, the earlier ones are not
    partial = "".join(solution(model, PROBLEM, seed=2).split(STEP_DELIMITER, 2)[:2])
    going = model.read(revision_prompt(PROBLEM, earlier, partial + STEP_DELIMITER))
    assert [s.index for s in going.steps] == [1, 2]
    assert not going.concluded
    # a concluded revision is concluded; the earlier solution stays the one it revises
    done = model.read(revision_prompt(PROBLEM, earlier, solution(model, PROBLEM, seed=2)))
    assert done.concluded and len(done.steps) == 4
    assert done.revised == fresh.revised
    assert model.read(PROBLEM).revised is None


def test_a_revision_is_a_fresh_sample_of_the_problem() -> None:
    model = SimModel({PROBLEM: SimProblem("42", n_steps=4, slip_rate=0.3)})
    earlier = solution(model, PROBLEM, seed=1)
    for seed in range(20):
        revised = model.sample(model.read(revision_prompt(PROBLEM, earlier)), seed).text
        assert revised == solution(model, PROBLEM, seed)


def test_refine_gain_is_the_chance_a_wrong_solution_is_revised_right() -> None:
    problem = SimProblem("42", n_steps=4, slip_rate=0.3)
    plain = SimModel({PROBLEM: problem})
    gained = SimModel({PROBLEM: problem}, refine_gain=0.5)
    wrong = next(t for s in range(50) if answer_in(t := solution(plain, PROBLEM, s)) != "42")
    right = next(t for s in range(50) if answer_in(t := solution(plain, PROBLEM, s)) == "42")
    seeds = range(2000)
    fixed = [
        answer_in(gained.sample(gained.read(revision_prompt(PROBLEM, wrong)), seed).text) == "42"
        for seed in seeds
    ]
    # right with the gain, else as often as any sample: 0.5 + 0.5 * pass@1
    assert fmean(fixed) == pytest.approx(0.5 + 0.5 * problem.pass_at_1, abs=0.035)
    # a right solution is not revised by the gain: its revisions are fresh samples
    for seed in range(20):
        again = gained.sample(gained.read(revision_prompt(PROBLEM, right)), seed).text
        assert again == solution(plain, PROBLEM, seed)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"level=6"):
        math500_problem("A?", "1", 6)
    with pytest.raises(ValueError, match=r"crux=1\.5"):
        SimProblem("1", crux=1.5)
    with pytest.raises(ValueError, match=r"wrong_top=-0\.1"):
        SimProblem("1", wrong_top=-0.1)
    with pytest.raises(ValueError, match=r"prm_fooled_rate=1\.5"):
        SimModel({}, prm_fooled_rate=1.5)
    with pytest.raises(ValueError, match=r"prm_persistence=1\.2"):
        SimModel({}, prm_persistence=1.2)
    with pytest.raises(ValueError, match=r"step_correlation=-0\.1: need 0 <= share <= 1"):
        SimModel({}, step_correlation=-0.1)
    with pytest.raises(ValueError, match=r"prm_discrimination=-1"):
        SimModel({}, prm_discrimination=-1)
    with pytest.raises(ValueError, match=r"refine_gain=1\.5: need 0 <= chance <= 1"):
        SimModel({}, refine_gain=1.5)
