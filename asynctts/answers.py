"""Final answers: extraction from a solution, a canonical string form, and votes.

Rules:
- Pure functions: no I/O, no logging, standard library only.
- `extract_boxed` reads the LAST `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` of a text; a last box
  that is unbalanced (a truncated solution) or empty is no answer (None).
- `normalize` only rewrites notation, never meaning: tuples, intervals and sets keep their
  brackets and order; a bare top-level list is written "a, b" so it can never be mistaken for
  a number with thousands separators ("1,000" is 1000, "1, 000" stays a list). It is
  idempotent: it applies one rewriting pass until nothing changes.
- Mathematical equivalence (0.5 == \\frac{1}{2}) is not decided here but by
  `asynctts.equivalence`, which hands the votes their group ids.
- Votes take `groups[i]`, the equivalence class of answer i (None: no answer). No answer
  never wins; ties go to the group seen first; all sums use `math.fsum`, so a vote does not
  depend on the order of the members.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["best_of", "extract_boxed", "majority_vote", "normalize", "weighted_vote"]

# ---------------------------------------------------------------------------------------------
# Extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in `text`.

    Args:
        text: a solution, e.g. "... so the answer is $\\boxed{\\frac{1}{2}}$."

    Returns:
        The box's content with surrounding whitespace removed ("\\frac{1}{2}"), or None when
        the text has no box, its last box is unbalanced (cut off), or that box is empty.
    """
    starts = [m.end() for m in _BOX_COMMAND.finditer(text)]
    if not starts:
        return None
    pos = starts[-1]
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        open_at = pos + len(rest) - len(stripped)
        close_at = _matching_brace(text, open_at)
        if close_at is None:
            return None
        content = text[open_at + 1 : close_at].strip()
    else:
        # "\boxed 5$": the argument runs to the next space or "$" (as in the MATH grader)
        match = re.match(r"\s*([^\s$]+)", rest)
        content = match.group(1) if match else ""
    return content or None


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the "}" closing the "{" at `open_at`; escaped braces (\\{ \\}) do not count."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


# ---------------------------------------------------------------------------------------------
# Normalization

_MAX_PASSES = 32  # each pass shortens or canonicalises; real answers settle in 2-3 passes

_TEXT_ALIASES = re.compile(r"\\(?:textrm|textnormal|textup|textbf|textit|mbox)(?![A-Za-z])")
_GREEK = (
    r"alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|"
    r"xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|"
    r"Psi|Omega"
)

# "\\\\" (a row break) is matched first so that its second backslash never starts a "\\ "
_SPACING = re.compile(r"(\\\\)|\\[,;:! ]|\\q?quad(?![A-Za-z])|~")
_THIN_SPACE_SEPARATOR = re.compile(r"(?<=\d),\\!\s*(?=\d{3})")  # 10,\!080
_LEFT_RIGHT_DOT = re.compile(r"\\(?:left|right)\s*\.")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_BINOM_VARIANTS = re.compile(r"\\[dt]binom(?![A-Za-z])")
_DROPPED_COMMANDS = re.compile(r"\\(?:displaystyle|textstyle|limits)(?![A-Za-z])")
_BARE_SQRT = re.compile(r"(?<![\\A-Za-z])sqrt(?![A-Za-z])")
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_WHOLE_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_GROUP = re.compile(r"\\text\s*\{")
_CHOICE = re.compile(r"\(([A-Z])\)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z])|°")
_DEGREE_WORD = re.compile(r"(?<=\d)\s*degrees?$")
_TRAILING_UNIT = re.compile(r"\\text\s*\{[A-Za-z .]*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?$")
_PERCENT = re.compile(r"\\?%")
_DOLLAR_SIGN = re.compile(r"\\\$")
_ASSIGNMENT = re.compile(
    r"^(?:[A-Za-z]|\\(?:" + _GREEK + r"))"  # a variable: x, \theta
    r"(?:_\{?[A-Za-z0-9]+\}?)?'*"  # x_1, y_{n}, f'
    r"\s*(?:=|\\in(?![A-Za-z]))\s*"
)
_CONTROL_WORD = re.compile(r"\\[A-Za-z]+")
_BRACED_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_ZEROS = re.compile(r"(?<![\d.])(\d+)\.(\d*?)0+(?![\d.])")
_BARE_POINT = re.compile(r"(?<![\dA-Za-z.}\\)\]])\.(?=\d)")
_FRAC_OR_SQRT = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
_SQRT_INDEX = re.compile(r"\s*(\[[^\]]*\])")
_OPENING = frozenset({"(", "[", "{", "\\{"})
_CLOSING = frozenset({")", "]", "}", "\\}"})


def normalize(answer: str) -> str:
    """A canonical string for `answer`, so that notational variants compare equal as strings.

    Removes surrounding `$`, `\\(...\\)`, a whole `\\boxed{}` or `\\text{}`, `\\left`/`\\right`,
    spacing commands, a trailing period, trailing unit words in `\\text{}`, degree signs,
    `\\%` and `\\$`, a leading variable assignment ("x = 5", "x \\in [0, 1]") when the rest is
    a value; writes `\\dfrac`/`\\tfrac` as `\\frac`, `\\frac12` as `\\frac{1}{2}`, `\\sqrt2` as
    `\\sqrt{2}`, "1{,}000" and "1,000" as "1000", "0.50" as "0.5", ".5" as "0.5", "(B)" as "B".
    Whitespace is dropped except inside `\\text{}`, after a control word followed by a letter
    ("\\pi r"), and after a top-level comma of a list ("3, 5, 7").

    "10\\%" becomes "10", as math-verify (and the MATH grader) count them equal.

    Args:
        answer: an answer string, typically the output of `extract_boxed`.

    Returns:
        The canonical form; `normalize(normalize(x)) == normalize(x)`.

    Raises:
        TypeError: `answer` is not a str.
    """
    if not isinstance(answer, str):
        raise TypeError(f"normalize() needs a str, got {type(answer).__name__}: {answer!r}")
    current = answer
    for _ in range(_MAX_PASSES):
        rewritten = _normalize_pass(current)
        if rewritten == current:
            break
        current = rewritten
    return current


def _normalize_pass(s: str) -> str:
    # Peel wrappers and decorations first, so that what they hide (a number with thousands
    # separators, say) is visible before the spacing step makes bare lists "a, b".
    s = s.replace("\u2212", "-").strip()
    s = s.rstrip(".").strip()
    s = _strip_wrappers(s)
    s = _unwrap_whole(s, _WHOLE_BOX)
    s = _TEXT_ALIASES.sub(r"\\text", s)
    s = _unwrap_whole(s, _TEXT_GROUP)
    s = _THIN_SPACE_SEPARATOR.sub(",", s)
    s = _SPACING.sub(lambda m: m.group(1) or " ", s)
    s = _LEFT_RIGHT_DOT.sub("", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _DROPPED_COMMANDS.sub("", s)
    s = _FRAC_VARIANTS.sub(r"\\frac", s)
    s = _BINOM_VARIANTS.sub(r"\\binom", s)
    s = _BARE_SQRT.sub(r"\\sqrt", s)
    s = _DEGREES.sub("", s)
    s = _PERCENT.sub("", s)
    s = _DOLLAR_SIGN.sub("", s)
    s = _strip_trailing_unit(s).strip()
    s = _DEGREE_WORD.sub("", s)
    s = _strip_assignment(s)
    choice = _CHOICE.fullmatch(s)
    if choice:
        s = choice.group(1)
    s = _BRACED_COMMA.sub("", s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _BARE_POINT.sub("0.", s)
    s = _TRAILING_ZEROS.sub(_drop_trailing_zeros, s)
    s = _brace_arguments(s)
    return _canonical_spacing(s)


def _strip_wrappers(s: str) -> str:
    """Unwrap $x$, \\(x\\) and \\[x\\]; a stray "$" at either end goes too."""
    for opening, closing in _WRAPPERS:
        if s.startswith(opening) and s.endswith(closing) and len(s) >= len(opening + closing):
            return s[len(opening) : len(s) - len(closing)].strip()
    if s.startswith("$"):
        s = s[1:]
    if s.endswith("$") and not s.endswith("\\$"):
        s = s[:-1]
    return s.strip()


def _unwrap_whole(s: str, command: re.Pattern[str]) -> str:
    """Unwrap \\boxed{X} (or \\text{X}) when the command's group spans the whole string."""
    match = command.match(s)
    if match is None:
        return s
    close_at = _matching_brace(s, match.end() - 1)
    content = s[match.end() : close_at].strip() if close_at == len(s) - 1 else ""
    # "\\text{no solution}" keeps its group: without it the spacing step would glue the words
    if not content or (command is _TEXT_GROUP and re.search(r"\s", content)):
        return s
    return content


def _strip_trailing_unit(s: str) -> str:
    """5\\text{ cm}^2 -> 5: only words after something holding a digit are units."""
    match = _TRAILING_UNIT.search(s)
    if match is None:
        return s
    head = s[: match.start()]
    return head if re.search(r"\d", head) else s


def _strip_assignment(s: str) -> str:
    """x = 5 -> 5, but y = 2x + 1 stays: the rest must hold no variable."""
    match = _ASSIGNMENT.match(s)
    if match is None:
        return s
    value = s[match.end() :]
    without_commands = _CONTROL_WORD.sub("", value)
    if not value or re.search(r"[A-Za-z=]", without_commands):
        return s
    return value


def _drop_trailing_zeros(match: re.Match[str]) -> str:
    whole, fraction = match.group(1), match.group(2)
    return f"{whole}.{fraction}" if fraction else whole


def _brace_arguments(s: str) -> str:
    """Brace the single-token arguments of \\frac and \\sqrt: \\frac12 -> \\frac{1}{2}."""
    out: list[str] = []
    i = 0
    while i < len(s):
        command = _FRAC_OR_SQRT.match(s, i)
        if command is None:
            # a control symbol such as \{ is one token, never the start of a command
            step = 2 if s[i] == "\\" else 1
            out.append(s[i : i + step])
            i += step
            continue
        j = command.end()
        arity = 2 if command.group(1) == "frac" else 1
        index = ""
        if command.group(1) == "sqrt":
            optional = _SQRT_INDEX.match(s, j)
            if optional:
                index, j = optional.group(1), optional.end()
        arguments: list[str] = []
        for _ in range(arity):
            argument = _read_argument(s, j)
            if argument is None:
                break
            content, j = argument
            arguments.append("{" + _brace_arguments(content) + "}")
        if len(arguments) < arity:
            out.append(command.group(0))  # malformed: leave it as written
            i = command.end()
            continue
        out.append(command.group(0) + index + "".join(arguments))
        i = j
    return "".join(out)


def _read_argument(s: str, start: int) -> tuple[str, int] | None:
    """The argument of a command at `start`: a {group}, a control word or one character.

    Returns the argument's content and where it ends, or None when there is none."""
    i = start
    while i < len(s) and s[i].isspace():
        i += 1
    if i == len(s):
        return None
    if s[i] == "{":
        close_at = _matching_brace(s, i)
        return None if close_at is None else (s[i + 1 : close_at], close_at + 1)
    word = _CONTROL_WORD.match(s, i)
    if word:
        return word.group(0), word.end()
    if s[i].isalnum():
        return s[i], i + 1
    return None


def _canonical_spacing(s: str) -> str:
    """Drop whitespace except where it carries meaning (see `normalize`)."""
    out: list[str] = []
    depth = 0  # bracket depth: only a top-level comma separates list items
    i = 0
    previous_was_word = False
    while i < len(s):
        char = s[i]
        if char.isspace():
            while i < len(s) and s[i].isspace():
                i += 1
            if previous_was_word and i < len(s) and s[i].isalpha():
                out.append(" ")  # "\\pi r" is not "\\pir"
            continue
        previous_was_word = False
        text = _TEXT_GROUP.match(s, i)
        if text and (close_at := _matching_brace(s, text.end() - 1)) is not None:
            words = " ".join(s[text.end() : close_at].split())
            out.append("\\text{" + words + "}")
            i = close_at + 1
            continue
        word = _CONTROL_WORD.match(s, i)
        if word:
            out.append(word.group(0))
            i = word.end()
            previous_was_word = True
            continue
        token = s[i : i + 2] if char == "\\" else char
        if token in _OPENING:
            depth += 1
        elif token in _CLOSING:
            depth = max(depth - 1, 0)
        out.append(token)
        i += len(token)
        if token == "," and depth == 0:
            while i < len(s) and s[i].isspace():
                i += 1
            if i < len(s):
                out.append(" ")
    return "".join(out).strip()


# ---------------------------------------------------------------------------------------------
# Votes


def majority_vote(groups: Sequence[int | None]) -> int | None:
    """The most frequent answer group (Wang et al. 2023, self-consistency).

    Args:
        groups: `groups[i]` is the equivalence class of answer i, None when i has no answer.

    Returns:
        The index (into `groups`) of the first member of the most frequent group; ties go to
        the group seen first. None when no member has an answer.
    """
    counts: dict[int, int] = {}
    first_member: dict[int, int] = {}
    for index, group in enumerate(groups):
        if group is None:
            continue
        counts[group] = counts.get(group, 0) + 1
        first_member.setdefault(group, index)
    if not counts:
        return None
    # dicts keep first-seen order and max() keeps the first of equal maxima: ties -> first seen
    winner = max(counts, key=counts.__getitem__)
    return first_member[winner]


def weighted_vote(groups: Sequence[int | None], weights: Sequence[float]) -> int | None:
    """The answer group with the largest summed weight (weighted best-of-N, Li et al. 2023).

    Args:
        groups: `groups[i]` is the equivalence class of answer i, None when i has no answer.
        weights: one finite weight per member (the aggregated PRM score).

    Returns:
        The index of the highest-weighted member (ties: the first) of the heaviest group;
        ties between groups go to the group seen first. None when no member has an answer.

    Raises:
        ValueError: the lengths differ, or a weight is not finite.
    """
    _check_lengths("weights", groups, weights)
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        weight = weights[index]
        if not math.isfinite(weight):
            raise ValueError(f"weights[{index}]={weight!r}: weights must be finite")
        if group is not None:
            members.setdefault(group, []).append(index)
    if not members:
        return None
    # fsum is exactly rounded, so a group's weight does not depend on its members' order
    totals = {group: math.fsum(weights[i] for i in indices) for group, indices in members.items()}
    winner = max(totals, key=totals.__getitem__)
    return max(members[winner], key=weights.__getitem__)


def best_of(values: Sequence[float | None], has_answer: Sequence[bool] | None = None) -> int | None:
    """The member with the highest value (best-of-N by aggregated PRM score).

    As in the reference best-of-N, a member without an answer can win when `has_answer` is
    not given. Given `has_answer`, only members with an answer compete, so the result is
    None when none of them has both an answer and a value.

    Args:
        values: one value per member, None for a member that has none (not scored).
        has_answer: optional, whether each member has an answer.

    Returns:
        The index of the highest value (ties: the first), or None when no member competes.

    Raises:
        ValueError: the lengths differ, or a value is NaN.
    """
    if has_answer is not None:
        _check_lengths("has_answer", values, has_answer)
    scored: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None or (has_answer is not None and not has_answer[index]):
            continue
        if math.isnan(value):
            raise ValueError(f"values[{index}] is NaN: a value must be a number or None")
        scored.append((index, value))
    if not scored:
        return None
    return max(scored, key=lambda pair: pair[1])[0]  # max() keeps the first of equal maxima


def _check_lengths(name: str, groups: Sequence[object], other: Sequence[object]) -> None:
    if len(groups) != len(other):
        raise ValueError(f"{name} has {len(other)} entries for {len(groups)} members")
