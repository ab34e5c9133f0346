"""The deterministic "model" behind `SimulatedServer`: text in, text out; no HTTP, no clock.

Rules:
- A prompt belongs to a registered problem when the problem's text occurs in it before the
  first step (the longest such text wins). Any other prompt is an unregistered problem whose
  answer is an integer derived from a hash of the text before its first step.
- A solution is `n_steps` steps ``"Step {i}: {words} ({ok|slip}, {4 hex}).\\n\\n"`` and then the
  conclusion ``"Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct."``
  followed by EOS. Steps already in the prompt (found by regex wherever they sit, so any chat
  template may surround them) decide which step comes next.
- The final answer is the problem's answer iff no step is a slip; otherwise a wrong answer
  derived from the problem and the indices of the slip steps, so different wrong paths share a
  wrong answer exactly when they slipped at the same steps.
- Step i of a sample depends only on (problem, the steps before it, the sample seed): the same
  seed continues a prefix the same way whether it is asked for one step or to the end.
- Tokens are whitespace-separated words: `max_tokens`, usage and the context check count words.
  Stop strings and EOS cost nothing.
- PRM: p_pos is high for ok steps and correct conclusions, low for slips and wrong conclusions,
  plus noise in [-prm_noise, prm_noise] from a hash of the step's text, clipped into (0, 1).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

STEP_PATTERN = r"Step (?P<index>\d+): [a-z ]+ \((?P<label>ok|slip), (?P<hex>[0-9a-f]{4})\)\."
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

_P_HIGH = 0.9
_P_LOW = 0.1
_P_UNKNOWN = 0.5  # text the simulated PRM does not recognise as a step
_P_EPS = 1e-3
_HEAD_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class SimProblem:
    """A problem the simulated model knows.

    Args:
        answer: the correct final answer (what `\\boxed{}` holds on a path without slips).
        n_steps: steps before the conclusion.
        slip_rate: chance that a step is a slip; one slip makes the final answer wrong.
    """

    answer: str
    n_steps: int = 4
    slip_rate: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError(f"SimProblem answer={self.answer!r}: need a non-empty string")
        if self.n_steps < 0:
            raise ValueError(f"SimProblem n_steps={self.n_steps}: need >= 0")
        if not 0.0 <= self.slip_rate <= 1.0:
            raise ValueError(f"SimProblem slip_rate={self.slip_rate}: need 0 <= rate <= 1")


@dataclass(frozen=True, slots=True)
class StepMark:
    """A step found in a prompt: its number, whether it is a slip, and its 4-hex tag."""

    index: int
    slip: bool
    tag: str


@dataclass(frozen=True, slots=True)
class Reading:
    """What the model read from a prompt."""

    key: str | None  # the registered problem's text, None for an unregistered problem
    identity: str  # seeds sampling: the key, or the unregistered problem's text
    problem: SimProblem
    steps: tuple[StepMark, ...]  # steps already written, in order
    concluded: bool  # the conclusion is already written: only EOS remains


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


def _cut_words(text: str, limit: int) -> str:
    """`text` up to the end of its `limit`-th word."""
    for seen, match in enumerate(_WORD_RE.finditer(text), start=1):
        if seen == limit:
            return text[: match.end()]
    return text


def conclusion(answer: str) -> str:
    return f"Therefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct."


def wrong_answer(answer: str, identity: str, slip_indices: Sequence[int]) -> str:
    """The answer a path with slips at `slip_indices` reaches: never `answer`; one of four
    wrong answers per problem, picked by a hash of the slip positions."""
    offset = 1 + _digest("wrong", identity, tuple(slip_indices))[0] % 4
    try:
        return str(int(answer) + offset)
    except ValueError:
        return f"{answer}+{offset}"


class SimModel:
    """Reads prompts, writes steps and scores them; deterministic given its inputs.

    Args:
        problems: problem text -> `SimProblem`.
        step_tag: the PRM's step marker (pooling inputs have one after every step).
        prm_noise: half-width of the deterministic noise added to PRM scores.
        prm_error_rate: chance that the PRM misjudges a step (scores a slip as ok or an ok
            step as a slip), decided by a hash of the step's text: a PRM as imperfect as real
            ones, so search curves look like the published ones rather than near 100%.
    """

    def __init__(
        self,
        problems: Mapping[str, SimProblem],
        *,
        step_tag: str = "<extra_0>",
        prm_noise: float = 0.1,
        prm_error_rate: float = 0.0,
    ) -> None:
        if not step_tag:
            raise ValueError("SimModel step_tag is empty")
        if not 0.0 <= prm_noise <= 0.5:
            raise ValueError(f"SimModel prm_noise={prm_noise}: need 0 <= noise <= 0.5")
        if not 0.0 <= prm_error_rate <= 1.0:
            raise ValueError(f"SimModel prm_error_rate={prm_error_rate}: need 0 <= rate <= 1")
        for key in problems:
            if not key:
                raise ValueError("SimModel problems: a problem text is empty")
        self.problems = dict(problems)
        self.step_tag = step_tag
        self.prm_noise = prm_noise
        self.prm_error_rate = prm_error_rate
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
        steps = tuple(
            StepMark(index=int(m["index"]), slip=m["label"] == "slip", tag=m["hex"])
            for m in marks
            if m.start() >= body_start
        )
        # Search only past the problem: system prompts often quote the conclusion's wording.
        concluded = _CONCLUSION_RE.search(prompt, body_start) is not None
        return Reading(key, identity, problem, steps, concluded)

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
        slips = [s.index for s in reading.steps if s.slip]
        signature = "".join(s.tag for s in reading.steps)
        for index in range(len(reading.steps) + 1, problem.n_steps + 1):
            d = _digest("step", reading.identity, index, signature, sample_seed)
            slip = _unit(d) < problem.slip_rate
            tag = d[8:10].hex()
            words = " ".join(_VOCAB[b % len(_VOCAB)] for b in d[11 : 11 + 3 + d[10] % 6])
            yield f"Step {index}: {words} ({'slip' if slip else 'ok'}, {tag}).\n\n"
            signature += tag
            if slip:
                slips.append(index)
        final = wrong_answer(problem.answer, reading.identity, slips) if slips else problem.answer
        yield conclusion(final)

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
            return Sample(_cut_words(body, max_tokens), "length", None, max_tokens)
        if hit is None:
            return Sample(text, "stop", None, tokens)
        position, stop_str = hit
        end = position + len(stop_str) if include_stop_str_in_output else position
        return Sample(text[:end], "stop", stop_str, tokens)

    def score(self, text: str) -> list[list[float]]:
        """PRM rows `[p_neg, p_pos]`, one per step tag in `text` (STEP pooling): each row judges
        the segment that ends at that tag."""
        segments = text.split(self.step_tag)[:-1]
        if not segments:
            return []
        key = self.locate(text)
        rows: list[list[float]] = []
        slip_seen = False
        for segment in segments:
            marks = list(_MARK_RE.finditer(segment))
            mark = marks[-1] if marks else None  # the last mark is the step this tag closes
            if mark is None:
                base, judged = _P_UNKNOWN, segment.strip()
            elif mark["label"] is not None:
                slip = mark["label"] == "slip"
                slip_seen = slip_seen or slip
                base, judged = (_P_LOW if slip else _P_HIGH), mark[0]
            else:
                if key is not None:
                    correct = mark["answer"] == self.problems[key].answer
                else:  # unknown problem: the model's own rule, "right iff no slip before"
                    correct = not slip_seen
                base, judged = (_P_HIGH if correct else _P_LOW), mark[0]
            if _unit(_digest("prm-error", judged)) < self.prm_error_rate:
                base = 1.0 - base  # misjudged: ok looks like a slip and a slip looks ok
            noise = (2.0 * _unit(_digest("prm", judged)) - 1.0) * self.prm_noise
            p_pos = min(1.0 - _P_EPS, max(_P_EPS, base + noise))
            rows.append([1.0 - p_pos, p_pos])
        return rows


class PrefixCache:
    """A simple model of vLLM's automatic prefix caching.

    A prompt's cacheable prefixes end at each "\\n\\n" (step boundaries) and at its end; the
    cache remembers the last `capacity` prefixes seen (LRU). A prompt's cached tokens are those
    of its longest remembered prefix, at most all but its last token (vLLM always computes the
    last prompt token).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"PrefixCache capacity={capacity}: need >= 1")
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def lookup(self, prompt: str) -> tuple[int, int]:
        """Remember `prompt`'s prefixes; return (prompt tokens, cached tokens)."""
        chain = 0
        tokens = 0
        cached = 0
        hitting = True
        for part in prompt.split("\n\n"):
            # Hash-chained like vLLM's block hashes: a prefix is known only if all before it are.
            chain = hash((chain, part))
            tokens += count_tokens(part)
            if hitting and chain in self._seen:
                cached = tokens
                self._seen.move_to_end(chain)
            else:
                hitting = False
                self._seen[chain] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return tokens, min(cached, max(tokens - 1, 0))


__all__ = [
    "CONCLUSION_PATTERN",
    "STEP_PATTERN",
    "PrefixCache",
    "Reading",
    "Sample",
    "SimModel",
    "SimProblem",
    "StepMark",
    "conclusion",
    "count_tokens",
    "wrong_answer",
]
