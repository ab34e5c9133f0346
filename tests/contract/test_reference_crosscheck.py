"""Beam search and DVTS against the reference: search-and-learn's loops (Hugging Face, Dec 2024)
written out here for one problem, synchronously, with its known bugs switched off, and run side
by side with asynctts's strategies over one deterministic policy and PRM, on 200 problems.

What the transcriptions keep from the reference:
- Beam search: each iteration the active beams are replicated cyclically, in generation order, to
  exactly n (`(active * repeats)[:n]`); every copy samples one step; the PRM scores every beam;
  beams that ended (EOS, max_tokens, empty step) join the finished set; the n // M best active
  beams survive, still in generation order. It stops when no beam is active or after the last
  iteration, which generates to the end. Lookahead k rolls each unfinished copy k greedy steps
  further for scoring only (not in the last iteration). Bugs off: the result is the n best
  finished beams by value, not the first n to finish; the PRM scores the step with its rollout
  (the reference generated the rollout but scored the beam without it; its DVTS uses it).
- DVTS: n // M subtrees; each iteration every growing subtree samples M steps, the PRM scores
  them and the subtree moves to the best (the first of equal values); a subtree stops once its
  best child ended, or once its text holds "boxed{" (inert here: only final steps box an
  answer). Bug off: the results are the finished children of each subtree's last expansion,
  not all of them. (asynctts's DVTS has no lookahead, so none is checked.)

The world is a pure function of its inputs: the sample with index i drawn after a prefix
decides the next step's text, whether it ends and its answer (index -1: the greedy step); a
step's PRM score is a hash of (problem, prefix). Each side numbers the samples of a prefix in
the order it draws them: the reference copy by copy, asynctts request by request and sibling by
sibling. A prefix is expanded in one iteration only, so index i is its i-th child there (the
reference's copies of one beam are its children; the DVTS subtrees share the root). The order
of the children matters beyond the sets: when the survivors do not divide n, the first ones in
generation order get the extra copies.

Ties: every step's text carries a tag drawn from its hash, so two paths share a value only
when they are the same steps (siblings that both ended on an empty step), and which of two
identical paths is kept changes no multiset. Values therefore never tie between different
paths with the "last" and "prod" aggregates; "min" (ties between siblings that keep a parent's
minimum, where the reference's unstable argsort decides) is not cross-checked.

Both sides pick the answer by asynctts's rules (weighted vote over the aggregated values, best
path), since this checks the search, not the grader: the reference's scoring script weighs votes
by the last step's score whatever the search's aggregation, and lets an unboxed text vote with
its last number.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from asynctts.api import run_search
from asynctts.backends.prm import keep_known_scores
from asynctts.equivalence import Equivalence
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.aggregate import AggregateName
from asynctts.search.beam_search import BeamSearch
from asynctts.search.dvts import DVTS

Steps = tuple[str, ...]
PROBLEMS = 200
GREEDY = -1  # the sample index of temperature-0 decoding: one continuation per prefix


def unit(*parts: object) -> float:
    """A value in [0, 1) that is a pure function of `parts`."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class World:
    """One problem's policy and PRM. A step ends the solution with probability `eos` (mostly
    boxing one of `answers` answers), is empty or cut by max_tokens with probability `glitch`
    each, and otherwise goes on; generating to the end draws at most `max_steps` steps."""

    problem: str
    eos: float
    glitch: float
    answers: int
    max_steps: int

    def draw(self, prefix: Steps, index: int) -> tuple[str, Finish]:
        fate = unit(self.problem, prefix, index)
        tag = f"{unit('tag', self.problem, prefix, index):.12f}"
        if fate < self.eos * 0.9:
            answer = int(unit("answer", self.problem, prefix, index) * self.answers)
            return f"so $\\boxed{{{answer}}}$ ({tag})", Finish.EOS
        if fate < self.eos:
            return f"no answer ({tag})", Finish.EOS
        if fate < self.eos + self.glitch:
            return "", Finish.EMPTY
        if fate < self.eos + 2 * self.glitch:
            return f"cut ({tag})", Finish.LENGTH
        return f"step ({tag})\n\n", Finish.STEP

    def sample(self, prefix: Steps, index: int, to_end: bool) -> tuple[Steps, Finish]:
        """Sample `index` after `prefix`: one step, or with `to_end` the rest of the solution
        (cut after `max_steps` steps)."""
        steps: list[str] = []
        for _ in range(self.max_steps if to_end else 1):
            text, finish = self.draw((*prefix, *steps), index)
            steps.append(text)
            if finish is not Finish.STEP:
                return tuple(steps), finish
        return tuple(steps), Finish.LENGTH if to_end else Finish.STEP

    def scores(self, steps: Steps) -> tuple[float, ...]:
        return tuple(unit("prm", self.problem, steps[: i + 1]) for i in range(len(steps)))


def value(world: World, steps: Steps, aggregate: AggregateName) -> float:
    scores = world.scores(steps)
    if aggregate == "last":
        return scores[-1]
    assert aggregate == "prod", f"{aggregate}: not cross-checked (ties)"
    return math.prod(scores)


def answer_in(steps: Steps) -> str | None:
    boxes = re.findall(r"\\boxed\{(\d+)\}", "".join(steps))
    return boxes[-1] if boxes else None


@dataclass
class Outcome:
    """What a search did: policy samples per iteration and after each prefix (how the
    survivors shared them), the finished paths (as a multiset of step sequences), and the
    answers by best path and by weighted vote."""

    samples: list[int]
    drawn: Counter[Steps]
    greedy: Counter[Steps]  # greedy (lookahead) steps drawn after each prefix
    finished: Counter[Steps]
    best: str | None
    weighted: str | None


def outcome(
    world: World,
    samples: list[int],
    drawn: Counter[Steps],
    greedy: Counter[Steps],
    finished: Sequence[Steps],
    aggregate: AggregateName,
) -> Outcome:
    values = [value(world, steps, aggregate) for steps in finished]
    answers = [answer_in(steps) for steps in finished]
    totals: dict[str, list[float]] = {}
    for answer, v in zip(answers, values, strict=True):
        if answer is not None:
            totals.setdefault(answer, []).append(v)
    return Outcome(
        samples=samples,
        drawn=drawn,
        greedy=greedy,
        finished=Counter(finished),
        best=answers[values.index(max(values))] if values else None,
        weighted=max(totals, key=lambda a: math.fsum(totals[a])) if totals else None,
    )


# ---------------------------------------------------------------------------------------------
# The reference, transcribed


@dataclass(frozen=True)
class Beam:
    steps: Steps
    finish: Finish = Finish.STEP

    @property
    def ended(self) -> bool:  # EOS, max_tokens or an empty step
        return self.finish is not Finish.STEP


def reference_beam_search(
    world: World,
    n: int,
    width: int,
    iterations: int,
    aggregate: AggregateName,
    lookahead: int = 0,
    *,
    first_to_finish: bool = False,
) -> Outcome:
    """The reference's beam search for one problem; `first_to_finish` puts its bug back.

    With lookahead k, every copy whose step did not end goes on k greedy steps (stopping
    where one ends) and the PRM scores the step with its rollout; the rollout is then
    dropped. The reference generated the rollout but scored the beam without it (its DVTS
    does score it): that third bug is off too.
    """
    drawn: Counter[Steps] = Counter()  # samples drawn after each prefix: the next one's index
    greedy: Counter[Steps] = Counter()
    samples: list[int] = []
    finished: list[Beam] = []
    active = [Beam(())] * n  # n copies of the empty solution
    for i in range(iterations):
        if len(active) != n:  # the survivors, in generation order, cycled back to n copies
            active = (active * (n // len(active) + 1))[:n]
        to_end = i == iterations - 1  # no step stop: the rest of the solution
        children = []
        for beam in active:  # every copy samples one step
            steps, finish = world.sample(beam.steps, drawn[beam.steps], to_end)
            drawn[beam.steps] += 1
            children.append(Beam((*beam.steps, *steps), finish))
        samples.append(len(active))
        finished += [c for c in children if c.ended]
        active = [c for c in children if not c.ended]
        if not active:
            break
        ahead = 0 if to_end else lookahead  # the PRM scores each step with its rollout
        values = [
            value(world, (*c.steps, *rollout(world, c.steps, ahead, greedy)), aggregate)
            for c in active
        ]
        top = set(sorted(range(len(active)), key=values.__getitem__)[-(n // width) :])
        active = [c for j, c in enumerate(active) if j in top]  # pruning keeps the order
    # every iteration that runs samples n steps and the last one ends them all, so the
    # reference's padding of fewer than n finished beams never applies
    assert len(finished) >= n
    # bug off: the n best finished beams by value (the reference kept the first n to finish)
    if not first_to_finish:
        finished.sort(key=lambda b: value(world, b.steps, aggregate), reverse=True)
    return outcome(world, samples, drawn, greedy, [b.steps for b in finished[:n]], aggregate)


def rollout(world: World, prefix: Steps, steps: int, greedy: Counter[Steps]) -> Steps:
    """Up to `steps` greedy steps after `prefix`, stopping after one that ends."""
    rolled: Steps = ()
    for _ in range(steps):
        greedy[(*prefix, *rolled)] += 1
        text, finish = world.draw((*prefix, *rolled), GREEDY)
        rolled = (*rolled, text)
        if finish is not Finish.STEP:
            break
    return rolled


@dataclass
class Subtree:
    current: Beam
    children: list[Beam] = field(default_factory=list)  # of its last expansion
    stopped: bool = False


def reference_dvts(
    world: World,
    n: int,
    width: int,
    iterations: int,
    aggregate: AggregateName,
    *,
    unfinished_siblings: bool = False,
) -> Outcome:
    """The reference's DVTS for one problem; `unfinished_siblings` puts its bug back."""
    drawn: Counter[Steps] = Counter()  # the subtrees share the root: one numbering of samples
    samples: list[int] = []
    subtrees = [Subtree(Beam(())) for _ in range(n // width)]
    for i in range(iterations):
        growing = [t for t in subtrees if not t.stopped]
        if not growing:
            break
        to_end = i == iterations - 1
        for tree in growing:
            prefix = tree.current.steps
            tree.children = []
            for _ in range(width):
                steps, finish = world.sample(prefix, drawn[prefix], to_end)
                drawn[prefix] += 1
                tree.children.append(Beam((*prefix, *steps), finish))
            # argmax: the first of equal values
            values = [value(world, c.steps, aggregate) for c in tree.children]
            tree.current = tree.children[values.index(max(values))]
            if tree.current.ended or "boxed{" in "".join(tree.current.steps):
                tree.stopped = True
        samples.append(len(growing) * width)
    # bug off: only the finished children of each subtree's last expansion are results (the
    # reference emitted all M, unfinished siblings included)
    results = [c.steps for t in subtrees for c in t.children if c.ended or unfinished_siblings]
    return outcome(world, samples, drawn, Counter(), results, aggregate)


# ---------------------------------------------------------------------------------------------
# The same world behind asynctts's protocols


class WorldPolicy:
    """`GenerateSteps` over the world: a request for k children of a path gets the next k
    sample indices of its prefix (greedy ones: the one greedy continuation). Counts samples
    per iteration (a path at iteration d has d steps) and greedy steps per prefix."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.drawn: Counter[Steps] = Counter()
        self.greedy: Counter[Steps] = Counter()
        self.samples: Counter[int] = Counter()

    async def __call__(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        if greedy:
            self.greedy[path.steps] += k
            indices = [GREEDY] * k
        else:
            first = self.drawn[path.steps]
            self.drawn[path.steps] += k
            self.samples[len(path.steps)] += k
            indices = list(range(first, first + k))
        children = []
        for i, index in enumerate(indices):
            steps, finish = self.world.sample(path.steps, index, to_end)
            children.append(path.extend(i, steps, finish))
        return children


class WorldPRM:
    """`ScoreSteps` over the world. Like asynctts's PRM client, it keeps the scores a path
    already has and scores only its new steps."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def __call__(self, paths: Sequence[Path]) -> list[Path]:
        return [p.with_scores(keep_known_scores(p, self.world.scores(p.steps))) for p in paths]


async def asynctts_outcome(
    world: World, strategy: BeamSearch | DVTS, n: int, equivalence: Equivalence
) -> Outcome:
    policy = WorldPolicy(world)
    solution = await run_search(
        problem_id=world.problem,
        problem=world.problem,
        strategy=strategy,
        n=n,
        generate=policy,
        score=WorldPRM(world),
        equivalence=equivalence,
        ledger=Ledger(),
    )
    assert not solution.lost and solution.degradation.unfinished == 0
    return Outcome(
        samples=[policy.samples[d] for d in sorted(policy.samples)],
        drawn=policy.drawn,
        greedy=policy.greedy,
        finished=Counter(c.steps for c in solution.candidates),
        best=solution.votes().best,
        weighted=solution.answer,
    )


# ---------------------------------------------------------------------------------------------
# The problems


@dataclass(frozen=True)
class Case:
    world: World
    n: int
    width: int
    iterations: int
    aggregate: AggregateName
    lookahead: int  # beam search's (asynctts's DVTS has none)

    def beam_search(self, *, first_to_finish: bool = False) -> Outcome:
        return reference_beam_search(
            self.world,
            self.n,
            self.width,
            self.iterations,
            self.aggregate,
            self.lookahead,
            first_to_finish=first_to_finish,
        )

    def dvts(self, *, unfinished_siblings: bool = False) -> Outcome:
        return reference_dvts(
            self.world,
            self.n,
            self.width,
            self.iterations,
            self.aggregate,
            unfinished_siblings=unfinished_siblings,
        )


def case(number: int) -> Case:
    rng = random.Random(number)
    width = rng.choice([2, 3, 4])
    world = World(
        problem=f"problem {number}",
        eos=rng.uniform(0.1, 0.6),
        glitch=rng.uniform(0.0, 0.05),
        answers=rng.randint(1, 4),
        max_steps=rng.randint(1, 6),
    )
    aggregate: AggregateName = rng.choice(["last", "last", "prod"])
    n = width * rng.randint(1, 5)
    return Case(world, n, width, rng.randint(1, 12), aggregate, rng.choice([0, 0, 1, 2]))


CASES = [case(number) for number in range(PROBLEMS)]


def differences(reference: Outcome, ours: Outcome) -> str:
    prefixes = reference.drawn.keys() | ours.drawn.keys()
    shares = sorted(
        (len(p), reference.drawn[p], ours.drawn[p])
        for p in prefixes
        if reference.drawn[p] != ours.drawn[p]
    )
    return (
        f"samples per iteration: reference {reference.samples}, asynctts {ours.samples}\n"
        f"samples drawn after a prefix (its steps, reference, asynctts): {shares}\n"
        f"greedy steps: reference {reference.greedy.total()}, asynctts {ours.greedy.total()}\n"
        f"finished only in the reference: {list((reference.finished - ours.finished).elements())}\n"
        f"finished only in asynctts: {list((ours.finished - reference.finished).elements())}\n"
        f"best: {reference.best} / {ours.best}; weighted: {reference.weighted} / {ours.weighted}"
    )


@pytest.mark.parametrize("number", range(PROBLEMS))
async def test_beam_search_matches_the_reference(number: int, equivalence: Equivalence) -> None:
    c = CASES[number]
    strategy = BeamSearch(
        width=c.width, max_depth=c.iterations, aggregate=c.aggregate, lookahead=c.lookahead
    )
    ours = await asynctts_outcome(c.world, strategy, c.n, equivalence)
    reference = c.beam_search()
    assert ours == reference, f"{c}\n{differences(reference, ours)}"


@pytest.mark.parametrize("number", range(PROBLEMS))
async def test_dvts_matches_the_reference(number: int, equivalence: Equivalence) -> None:
    c = CASES[number]
    strategy = DVTS(width=c.width, max_depth=c.iterations, aggregate=c.aggregate)
    ours = await asynctts_outcome(c.world, strategy, c.n, equivalence)
    reference = c.dvts()
    assert ours == reference, f"{c}\n{differences(reference, ours)}"


def test_the_problems_exercise_the_reference_semantics() -> None:
    """The cross-check has teeth: across the problems survivors share n unevenly, searches
    stop early and reach the last iteration, paths end on empty and cut steps, lookahead
    changes what beam search finds, and switching either of the reference's two known bugs
    back on changes the outcome of many problems."""
    beams = [c.beam_search() for c in CASES]
    trees = [c.dvts() for c in CASES]
    uneven = sum(
        any(count != c.width for prefix, count in b.drawn.items() if prefix)
        for c, b in zip(CASES, beams, strict=True)
    )
    early = sum(len(b.samples) < c.iterations for c, b in zip(CASES, beams, strict=True))
    last = sum(len(b.samples) == c.iterations > 1 for c, b in zip(CASES, beams, strict=True))
    # how finished paths end: boxed answer, generation to the end cut at max_steps,
    # max_tokens, empty step, no box
    ends = Counter(
        steps[-1].split(" ")[0] for o in (*beams, *trees) for steps in o.finished.elements()
    )
    looked_ahead = [(c, b) for c, b in zip(CASES, beams, strict=True) if c.lookahead]
    lookahead_matters = sum(
        replace(c, lookahead=0).beam_search().finished != b.finished for c, b in looked_ahead
    )
    first_to_finish = sum(
        c.beam_search(first_to_finish=True).finished != b.finished
        for c, b in zip(CASES, beams, strict=True)
    )
    unfinished_siblings = sum(
        c.dvts(unfinished_siblings=True).finished != t.finished
        for c, t in zip(CASES, trees, strict=True)
    )
    assert (uneven, early, last) == (42, 16, 171)
    assert ends == {"so": 2053, "step": 322, "cut": 216, "no": 201, "": 199}
    assert (len(looked_ahead), lookahead_matters) == (100, 75)
    assert (first_to_finish, unfinished_siblings) == (169, 165)
