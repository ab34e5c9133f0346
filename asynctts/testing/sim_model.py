"""The deterministic "model" behind `SimulatedServer`: text in, text out; no HTTP, no clock.

Rules:
- A prompt belongs to a registered problem when the problem's text occurs in it before the
  first step (the longest such text wins). Any other prompt is an unregistered problem whose
  answer is an integer derived from a hash of the text before its first step.
- A solution is `n_steps` steps ``"Step {i}: {words} ({6 hex}).\\n\\n"`` and then the
  conclusion ``"Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct."``
  followed by EOS. Steps already in the prompt (found by regex wherever they sit, so any chat
  template may surround them) decide which step comes next.
- Earlier turns: the current turn starts after the last conclusion that more text follows (an
  earlier solution, then a request to revise it); steps before it belong to earlier turns
  and are not the path being continued. A revision is a fresh sample of the problem under
  its own seed: the model does not learn from its earlier solution, unless `refine_gain` > 0,
  the chance that a revision of a wrong solution is drawn right (each of its steps redrawn
  until it does not slip, at most `_FIX_ATTEMPTS` times).
- Step i of a sample depends only on (problem, the steps before it, the sample seed): the same
  seed continues a prefix the same way whether it is asked for one step or to the end.
- Hidden truth: a path's signature is its registered problem and the tags of its steps. Step
  i is a slip when a hash of the signature up to it falls below the step's slip rate
  (`SimProblem.slip_rates`: `slip_rate`, or with `crux` > 0 most of the difficulty in one
  step); nothing in the text says so. A path is right until its first slip and wrong from
  there on (no recovery).
- Siblings are not independent tries: a `step_correlation` share of the steps written after
  one prefix take that prefix's modal outcome (one slip-or-not draw per prefix and step), the
  rest draw their own; which share a step is in is hashed from its own signature. First
  steps (after the problem alone) always draw their own: openings vary more than the moves
  after them. Every step keeps its slip rate; what changes is how often sampling k steps
  from one prefix and keeping the best (beam search, DVTS) finds a right one.
- The final answer is the problem's answer iff no step slipped. A wrong path's answer is drawn
  by a hash of its signature up to its first slip from the problem's own wrong answers: the
  most common one takes `wrong_top` of the wrong paths, the others a geometric tail. Paths that
  went wrong at the same place agree; two problems with the same answer do not share wrong
  answers.
- PRM: it sees text, never the problem's answer. Each scored segment gets a latent value from a
  normal distribution of unit variance, mean +d'/2 while the path is still right and -d'/2 (plus
  the path's deception) once it went wrong, drawn by a hash of the signature up to the segment:
  per problem and path, never per answer text. A `prm_persistence` share of that variance is the
  path's drift (the normalised sum of one draw per step so far, so a child inherits most of its
  parent's error) and the rest is drawn afresh per segment. d' is `prm_discrimination` times the
  problem's `prm_skill` (AUC = Phi(d' / sqrt 2); a negative skill is a problem the PRM gets
  backwards). Deception belongs to a wrong path (its signature at the first slip): a
  `prm_fooled_rate` share of the paths to the most common wrong answer (and a quarter of that
  share of the others) are raised by d'/2 to d', and every continuation inherits it, so search
  can over-optimise the PRM. p_pos = sigmoid(1.5 + 1.5 (latent - d'/2)).
- The defaults and `math500_problem` are fitted to published MATH-500 curves
  (asynctts/testing/README.md).
- Tokens are whitespace-separated words: `max_tokens`, usage and the context check count words.
  Stop strings and EOS cost nothing.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

TAG_LENGTH = 6  # hex digits of a step's tag
STEP_PATTERN = r"Step (?P<index>\d+): [a-z ]+ \((?P<tag>[0-9a-f]{6})\)\."
CONCLUSION_PATTERN = (
    r"Therefore, the final answer is: \$\\boxed\{(?P<answer>.*?)\}\$\. I hope it is correct\."
)
_STEP_RE = re.compile(STEP_PATTERN)
_CONCLUSION_RE = re.compile(CONCLUSION_PATTERN)
_MARK_RE = re.compile(f"{STEP_PATTERN}|{CONCLUSION_PATTERN}")
_WORD_RE = re.compile(r"\S+")

# Words a step is made of: lowercase only, so the step regex above always matches them.
_VOCAB = (
    *("add", "both", "sides", "so", "we", "get", "then", "note", "that", "the", "sum", "is"),
    *("compute", "simplify", "factor", "substitute", "divide", "multiply", "terms", "value"),
    *("expand", "square", "root", "solve", "for", "cancel", "common", "and", "check", "each"),
)

# The fit of asynctts/testing/README.md (Llama-3.2-1B-Instruct on MATH-500, judged by
# Qwen2.5-Math-PRM-7B): the PRM's discrimination and how often a wrong path fools it.
PRM_DISCRIMINATION = 2.5
PRM_FOOLED_RATE = 0.3
# Share of the PRM's noise a path carries from step to step (its "taste" for a line of
# reasoning) rather than drawing afresh at each step: what makes a wide beam over-optimise the
# PRM where independent subtrees (DVTS) and votes do not.
PRM_PERSISTENCE = 0.25
# Share of the steps sampled after one prefix that take its modal outcome (right or slip)
# instead of drawing their own: a model's samples from one prefix tend to make the same move,
# which is what limits picking among siblings (beam search, DVTS) more than resampling a
# whole pool of different prefixes (particle filtering).
STEP_CORRELATION = 0.65
# How much less often a path to a rare wrong answer fools the PRM than one to the most common.
TAIL_FOOLED_SHARE = 0.25
# Geometric ratio of the wrong answers after the most common one: rank r+1 is this much as
# frequent as rank r, so hard problems scatter their wrong answers over a long tail.
WRONG_TAIL_RATIO = 0.75
# MATH-500 level -> (mean pass@1 of a single sample, steps per solution); a problem's own
# pass@1 is u ** (1 / mean - 1) for a uniform u hashed from its text, so every level holds
# problems the model nearly always solves and problems it nearly never does.
LEVELS: Mapping[int, tuple[float, int]] = {
    1: (0.65, 4),
    2: (0.45, 5),
    3: (0.30, 6),
    4: (0.18, 7),
    5: (0.07, 8),
}
# Per problem, the share of wrong paths on its most common wrong answer: uniform in this range.
WRONG_TOP_RANGE = (0.1, 0.5)
# Share of a MATH problem's difficulty in its crux step (`SimProblem.crux`).
CRUX = 0.5
# A MATH problem's `prm_skill` is uniform in 1 +- this.
PRM_SKILL_SPREAD = 1.2

_FIX_ATTEMPTS = 64  # redraws of a step a right-drawn revision makes before it keeps a slip
_P_UNKNOWN = 0.5  # text the simulated PRM does not recognise as a step
_P_EPS = 1e-4
_HEAD_CACHE_SIZE = 8192
_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class SimProblem:
    """A problem the simulated model knows.

    Args:
        answer: the correct final answer (what `\\boxed{}` holds on a path without slips).
        n_steps: steps before the conclusion.
        slip_rate: chance that a step is a slip; one slip makes the final answer wrong, so a
            sample is right with chance (1 - slip_rate) ** n_steps.
        wrong_top: share of wrong paths that reach the problem's most common wrong answer.
        crux: share of the difficulty concentrated in one step (its place hashed from the
            problem): 0 spreads `slip_rate` evenly over the steps, 1 puts every slip in the
            crux step. Resampling a step helps little when one step holds the difficulty,
            which is what keeps tree search from fixing every path step by step.
        prm_skill: multiplies the PRM's discrimination on this problem (PRMs judge some
            problems far better than others).
    """

    answer: str
    n_steps: int = 4
    slip_rate: float = 0.2
    wrong_top: float = 0.3
    crux: float = 0.0
    prm_skill: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError(f"SimProblem answer={self.answer!r}: need a non-empty string")
        if self.n_steps < 0:
            raise ValueError(f"SimProblem n_steps={self.n_steps}: need >= 0")
        if not 0.0 <= self.slip_rate <= 1.0:
            raise ValueError(f"SimProblem slip_rate={self.slip_rate}: need 0 <= rate <= 1")
        if not 0.0 <= self.wrong_top <= 1.0:
            raise ValueError(f"SimProblem wrong_top={self.wrong_top}: need 0 <= share <= 1")
        if not 0.0 <= self.crux <= 1.0:
            raise ValueError(f"SimProblem crux={self.crux}: need 0 <= share <= 1")

    @property
    def pass_at_1(self) -> float:
        """The chance that one sample is right."""
        return (1.0 - self.slip_rate) ** self.n_steps

    def slip_rates(self, identity: str) -> tuple[float, ...]:
        """The slip chance of each step (index 0: step 1); their survival chances multiply
        to `pass_at_1`."""
        if self.crux == 0.0 or self.n_steps < 2:
            return (self.slip_rate,) * self.n_steps
        keep = 1.0 - self.slip_rate
        crux_at = _digest("crux", identity)[0] % self.n_steps
        crux_keep = keep ** (1.0 + self.crux * (self.n_steps - 1))
        other_keep = keep ** (1.0 - self.crux)
        return tuple(1.0 - (crux_keep if i == crux_at else other_keep) for i in range(self.n_steps))


def math500_problem(
    text: str,
    answer: str,
    level: int,
    *,
    crux: float = CRUX,
    prm_skill_spread: float = PRM_SKILL_SPREAD,
) -> SimProblem:
    """A `SimProblem` with the difficulty of a MATH `level` (1-5) problem for a
    Llama-3.2-1B-like model (`LEVELS`); its own pass@1 and `wrong_top` are hashed from
    `text`, so a problem keeps them from run to run."""
    if level not in LEVELS:
        raise ValueError(f"math500_problem level={level}: choose one of {sorted(LEVELS)}")
    mean, n_steps = LEVELS[level]
    d = _digest("difficulty", text)
    pass_at_1 = _unit(d[:8]) ** (1.0 / mean - 1.0)
    low, high = WRONG_TOP_RANGE
    return SimProblem(
        answer=answer,
        n_steps=n_steps,
        slip_rate=1.0 - pass_at_1 ** (1.0 / n_steps),
        wrong_top=low + (high - low) * _unit(d[8:16]),
        crux=crux,
        prm_skill=1.0 + prm_skill_spread * (2.0 * _unit(d[16:24]) - 1.0),
    )


@dataclass(frozen=True, slots=True)
class StepMark:
    """A step found in a prompt: its number and its 6-hex tag."""

    index: int
    tag: str


@dataclass(frozen=True, slots=True)
class Reading:
    """What the model read from a prompt."""

    key: str | None  # the registered problem's text, None for an unregistered problem
    identity: str  # seeds sampling: the key, or the unregistered problem's text
    problem: SimProblem
    steps: tuple[StepMark, ...]  # steps already written, in order
    concluded: bool  # the conclusion is already written: only EOS remains
    # the steps of the earlier solution the current turn revises; None when it revises none
    revised: tuple[StepMark, ...] | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One choice of a completion, shaped like vLLM's."""

    text: str
    finish_reason: Literal["stop", "length"]
    stop_reason: str | None  # the stop string that fired; None at EOS or on "length"
    tokens: int


def count_tokens(text: str) -> int:
    """Tokens of `text`: its whitespace-separated words."""
    return len(text.split())


def _digest(*parts: object) -> bytes:
    text = "\x1f".join(map(str, parts))
    return hashlib.blake2b(text.encode(), digest_size=32).digest()


def _unit(data: bytes) -> float:
    """A number in [0, 1) from 8 bytes of a digest."""
    return int.from_bytes(data[:8], "big") / 2.0**64


def _normal(data: bytes) -> float:
    """A standard normal number from 8 bytes of a digest."""
    return _NORMAL.inv_cdf((int.from_bytes(data[:8], "big") + 0.5) / 2.0**64)


def _cut_words(text: str, limit: int) -> str:
    """`text` up to the end of its `limit`-th word."""
    for seen, match in enumerate(_WORD_RE.finditer(text), start=1):
        if seen == limit:
            return text[: match.end()]
    return text


def _step(
    identity: str, index: int, signature: str, sample_seed: int, attempt: int
) -> tuple[str, str]:
    """The tag and words of step `index` after `signature`; attempts past the first are the
    redraws of a revision drawn right."""
    parts: tuple[object, ...] = ("step", identity, index, signature, sample_seed)
    d = _digest(*parts, attempt) if attempt else _digest(*parts)
    words = " ".join(_VOCAB[b % len(_VOCAB)] for b in d[12 : 12 + 3 + d[11] % 6])
    return d[8:11].hex(), words


def conclusion(answer: str) -> str:
    return f"Therefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct."


def slipped(signature: str, slip_rate: float, correlation: float) -> bool:
    """Whether the step that ends `signature` (the tags of a path's steps so far) is a slip:
    with chance `correlation` (hashed from the signature) the modal outcome of the steps
    after its prefix, else its own draw. A first step (its prefix is the problem alone,
    `signature_start`) always draws its own."""
    prefix = signature[:-TAG_LENGTH]
    first = prefix.endswith("|")
    if correlation and not first and _unit(_digest("follows", signature)) < correlation:
        return _unit(_digest("slip-mode", prefix)) < slip_rate
    return _unit(_digest("slip", signature)) < slip_rate


def signature_start(problem_key: str | None) -> str:
    """Where a path's signature starts: its registered problem ("" for an unregistered one),
    so hidden truth and PRM errors belong to (problem, path)."""
    return f"{problem_key or ''}|"


def first_slip(
    tags: Sequence[str],
    slip_rates: Sequence[float],
    problem_key: str | None,
    correlation: float,
) -> str | None:
    """The signature up to a path's first slip; None for a path without one. Steps past
    `slip_rates` (more than the problem has) never slip; `correlation` as in `slipped`."""
    signature = signature_start(problem_key)
    for tag, rate in zip(tags, slip_rates, strict=False):
        signature += tag
        if slipped(signature, rate, correlation):
            return signature
    return None


def wrong_rank(problem: SimProblem, wrong_path: str) -> int:
    """Which of its problem's wrong answers the wrong path whose signature at its first slip
    is `wrong_path` reaches: rank 0 (the most common) with chance `problem.wrong_top`, else
    rank r >= 1 with a geometric chance (`WRONG_TAIL_RATIO`)."""
    d = _digest("wrong", wrong_path)
    if _unit(d[:8]) < problem.wrong_top:
        return 0
    return 1 + int(math.log(1.0 - _unit(d[8:16])) / math.log(WRONG_TAIL_RATIO))


def wrong_answer(problem: SimProblem, identity: str, wrong_path: str) -> str:
    """The answer of the wrong path `wrong_path` (see `wrong_rank`): never `problem.answer`."""
    rank = wrong_rank(problem, wrong_path)
    # rank -> offset: an affine bijection mod a prime, drawn per problem, so problems with the
    # same answer get different wrong answers and ranks never collide
    shape = _digest("wrong-values", identity)
    a = 1 + int.from_bytes(shape[:4], "big") % 996
    b = int.from_bytes(shape[4:8], "big") % 997
    offset = 1 + (a * rank + b) % 997 + 997 * (rank // 997)
    try:
        return str(int(problem.answer) + offset)
    except ValueError:
        return f"{problem.answer}+{offset}"


class SimModel:
    """Reads prompts, writes steps and scores them; deterministic given its inputs.

    Args:
        problems: problem text -> `SimProblem`.
        step_tag: the PRM's step marker (pooling inputs have one after every step).
        prm_discrimination: d' between the PRM's scores of right and wrong paths (0: scores
            carry no information; large: an oracle).
        prm_fooled_rate: share of wrong paths the PRM scores like right ones, or better.
        prm_persistence: share (0-1) of the PRM's noise a path inherits along its steps
            instead of drawing it afresh per step.
        step_correlation: share (0-1) of the steps sampled after one prefix that take its
            modal outcome instead of their own (0: every sample an independent try).
        refine_gain: chance (0-1) that a revision of a wrong earlier solution is drawn from
            the solutions that stay right (0: revising by prompt fixes nothing).
    """

    def __init__(
        self,
        problems: Mapping[str, SimProblem],
        *,
        step_tag: str = "<extra_0>",
        prm_discrimination: float = PRM_DISCRIMINATION,
        prm_fooled_rate: float = PRM_FOOLED_RATE,
        prm_persistence: float = PRM_PERSISTENCE,
        step_correlation: float = STEP_CORRELATION,
        refine_gain: float = 0.0,
    ) -> None:
        if not step_tag:
            raise ValueError("SimModel step_tag is empty")
        if not 0.0 <= prm_discrimination <= 20.0:
            raise ValueError(
                f"SimModel prm_discrimination={prm_discrimination}: need 0 <= d' <= 20"
            )
        if not 0.0 <= prm_fooled_rate <= 1.0:
            raise ValueError(f"SimModel prm_fooled_rate={prm_fooled_rate}: need 0 <= rate <= 1")
        if not 0.0 <= prm_persistence <= 1.0:
            raise ValueError(f"SimModel prm_persistence={prm_persistence}: need 0 <= share <= 1")
        if not 0.0 <= step_correlation <= 1.0:
            raise ValueError(f"SimModel step_correlation={step_correlation}: need 0 <= share <= 1")
        if not 0.0 <= refine_gain <= 1.0:
            raise ValueError(f"SimModel refine_gain={refine_gain}: need 0 <= chance <= 1")
        for key in problems:
            if not key:
                raise ValueError("SimModel problems: a problem text is empty")
        self.problems = dict(problems)
        self.step_tag = step_tag
        self.prm_discrimination = prm_discrimination
        self.prm_fooled_rate = prm_fooled_rate
        self.prm_persistence = prm_persistence
        self.step_correlation = step_correlation
        self.refine_gain = refine_gain
        # Longest first, so a problem whose text contains another's text wins.
        self._keys = sorted(self.problems, key=len, reverse=True)
        # Requests of one problem share the text before the first step (template + problem),
        # so the linear scan over all problems runs once per distinct head.
        self._heads: OrderedDict[str, str | None] = OrderedDict()

    def read(self, prompt: str) -> Reading:
        """Find the problem in `prompt` and the steps already written after it."""
        marks = list(_STEP_RE.finditer(prompt))
        head_end = marks[0].start() if marks else len(prompt)
        key = self._problem_in(prompt[:head_end])
        if key is None:
            identity = prompt[:head_end]
            answer = int.from_bytes(_digest("answer", identity)[:8], "big") % 1000
            problem = SimProblem(answer=str(answer))
            body_start = head_end
        else:
            identity = key
            problem = self.problems[key]
            body_start = prompt.find(key) + len(key)
        # Turn boundaries: the ends of conclusions that more text follows. Searched only past
        # the problem: system prompts often quote the conclusion's wording.
        ends = [
            c.end()
            for c in _CONCLUSION_RE.finditer(prompt, body_start)
            if prompt[c.end() :].strip()
        ]
        starts = [body_start, *ends]
        revised = None
        if ends:
            revised = self._marks(marks, starts[-2], starts[-1])
        steps = self._marks(marks, starts[-1], len(prompt))
        concluded = _CONCLUSION_RE.search(prompt, starts[-1]) is not None
        return Reading(key, identity, problem, steps, concluded, revised)

    @staticmethod
    def _marks(marks: Sequence[re.Match[str]], start: int, end: int) -> tuple[StepMark, ...]:
        return tuple(
            StepMark(index=int(m["index"]), tag=m["tag"]) for m in marks if start <= m.start() < end
        )

    def locate(self, text: str) -> str | None:
        """The registered problem whose text occurs in `text` before its first step."""
        first = _STEP_RE.search(text)
        return self._problem_in(text[: first.start() if first else len(text)])

    def _problem_in(self, head: str) -> str | None:
        if head in self._heads:
            self._heads.move_to_end(head)
            return self._heads[head]
        found = next((key for key in self._keys if key in head), None)
        self._heads[head] = found
        if len(self._heads) > _HEAD_CACHE_SIZE:
            self._heads.popitem(last=False)
        return found

    def continuation(self, reading: Reading, sample_seed: int) -> Iterator[str]:
        """The rest of the solution, one step (with its "\\n\\n") at a time; the last piece is
        the conclusion, after which the model emits EOS."""
        if reading.concluded:
            return
        problem = reading.problem
        rates = problem.slip_rates(reading.identity)
        tags = [s.tag for s in reading.steps]
        signature = signature_start(reading.key) + "".join(tags)
        wrong_path = first_slip(tags, rates, reading.key, self.step_correlation)
        attempts = _FIX_ATTEMPTS if self._fixes(reading, rates, sample_seed) else 1
        for index in range(len(reading.steps) + 1, problem.n_steps + 1):
            rate = rates[index - 1]
            for attempt in range(attempts):
                tag, words = _step(reading.identity, index, signature, sample_seed, attempt)
                if wrong_path is not None or not slipped(
                    signature + tag, rate, self.step_correlation
                ):
                    break
            yield f"Step {index}: {words} ({tag}).\n\n"
            signature += tag
            if wrong_path is None and slipped(signature, rate, self.step_correlation):
                wrong_path = signature
        if wrong_path is None:
            yield conclusion(problem.answer)
        else:
            yield conclusion(wrong_answer(problem, reading.identity, wrong_path))

    def _fixes(self, reading: Reading, rates: Sequence[float], sample_seed: int) -> bool:
        """Whether this sample revises a wrong earlier solution into a right one
        (`refine_gain`)."""
        if not self.refine_gain or reading.revised is None:
            return False
        tags = [s.tag for s in reading.revised]
        if first_slip(tags, rates, reading.key, self.step_correlation) is None:
            return False
        return _unit(_digest("refine", reading.identity, *tags, sample_seed)) < self.refine_gain

    def sample(
        self,
        reading: Reading,
        sample_seed: int,
        *,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        max_tokens: int | None = None,
    ) -> Sample:
        """One choice: the continuation up to the first stop string, EOS or `max_tokens` words,
        whichever comes first (vLLM's `finish_reason` / `stop_reason` semantics)."""
        stops = [s for s in stop if s]
        longest = max(map(len, stops), default=0)
        text = ""
        hit: tuple[int, str] | None = None
        for piece in self.continuation(reading, sample_seed):
            start = max(0, len(text) - longest + 1)
            text += piece
            found = [(i, s) for s in stops if (i := text.find(s, start)) >= 0]
            if found:
                hit = min(found, key=lambda f: f[0])
                break
        body = text if hit is None else text[: hit[0]]
        tokens = count_tokens(body)
        if max_tokens is not None and tokens > max_tokens:
            return Sample(_cut_words(body, max_tokens), "length", None, tokens=max_tokens)
        if hit is None:
            return Sample(text, "stop", None, tokens)
        position, stop_str = hit
        end = position + len(stop_str) if include_stop_str_in_output else position
        return Sample(text[:end], "stop", stop_str, tokens)

    def deception(self, problem: SimProblem, wrong_path: str, half: float) -> float:
        """How much the PRM's latent value of the wrong path `wrong_path` (its signature at the
        first slip) is raised: 0 for most, d'/2 to d' for a `prm_fooled_rate` share of the
        paths to the problem's most common wrong answer (a plausible mistake) and a quarter
        of that share of the others (`half` is d'/2 on this problem)."""
        d = _digest("deceptive", wrong_path)
        rate = self.prm_fooled_rate
        if wrong_rank(problem, wrong_path) > 0:
            rate *= TAIL_FOOLED_SHARE
        if _unit(d[:8]) >= rate:
            return 0.0
        return half * (1.0 + _unit(d[8:16]))

    def score(self, text: str) -> list[list[float]]:
        """PRM rows `[p_neg, p_pos]`, one per step tag in `text` (STEP pooling): each row judges
        the path up to the segment that ends at that tag."""
        segments = text.split(self.step_tag)[:-1]
        if not segments:
            return []
        key = self.locate(text)
        problem = self.problems[key] if key is not None else SimProblem("0")
        rates = problem.slip_rates(key or "")
        half = self.prm_discrimination * problem.prm_skill / 2.0
        rows: list[list[float]] = []
        signature = signature_start(key)
        steps = 0
        wrong_path: str | None = None
        drift = 0.0
        keep = math.sqrt(self.prm_persistence)
        fresh = math.sqrt(1.0 - self.prm_persistence)
        for segment in segments:
            marks = list(_MARK_RE.finditer(segment))
            mark = marks[-1] if marks else None  # the last mark is the step this tag closes
            if mark is None:
                rows.append([1.0 - _P_UNKNOWN, _P_UNKNOWN])
                continue
            if mark["tag"] is not None:
                signature += mark["tag"]
                steps += 1
                rate = rates[steps - 1] if steps <= len(rates) else 0.0
                if wrong_path is None and slipped(signature, rate, self.step_correlation):
                    wrong_path = signature
                judged = signature
                drift += _normal(_digest("prm-drift", signature))
            else:
                judged = signature + ":end"
            mean = half if wrong_path is None else -half + self.deception(problem, wrong_path, half)
            bias = drift / math.sqrt(steps) if steps else 0.0
            latent = mean + keep * bias + fresh * _normal(_digest("prm", judged))
            logit = 1.5 + 1.5 * (latent - half)
            p_pos = min(1.0 - _P_EPS, max(_P_EPS, 1.0 / (1.0 + math.exp(-logit))))
            rows.append([1.0 - p_pos, p_pos])
        return rows


__all__ = [
    "CONCLUSION_PATTERN",
    "CRUX",
    "LEVELS",
    "PRM_DISCRIMINATION",
    "PRM_FOOLED_RATE",
    "PRM_PERSISTENCE",
    "PRM_SKILL_SPREAD",
    "STEP_CORRELATION",
    "STEP_PATTERN",
    "Reading",
    "Sample",
    "SimModel",
    "SimProblem",
    "StepMark",
    "conclusion",
    "count_tokens",
    "first_slip",
    "math500_problem",
    "signature_start",
    "slipped",
    "wrong_answer",
    "wrong_rank",
]
