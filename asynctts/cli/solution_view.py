"""A `Solution` for people (terminal text) and for programs (JSON), as `asynctts solve`
prints it.

Rules:
- The text stays a screen long at any n: one row per distinct answer (equivalent forms
  together), then the top candidates only; the rest is counted, and `--json` has them all.
- Answers are ordered by the strategy's own selection rule (summed value for a weighted
  vote, count for a majority, best value for best-of), so the chosen answer comes first;
  equal keys keep the order the answers were first seen in, as the votes break ties.
- Numbers are the Solution's own: values as aggregated by the strategy, tokens and requests
  from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asynctts.api import STRATEGIES
from asynctts.search.strategy import Selection
from asynctts.solution import Candidate, Solution, votes_of

__all__ = ["AnswerRow", "answer_rows", "solution_json", "solution_text"]

_CELL = 24  # widest answer or branch cell; longer ones are cut with an ellipsis
_RULE = {"majority": "majority vote", "best": "best value", "weighted": "weighted vote"}
_ORDER = {"majority": "count", "best": "best value", "weighted": "summed value"}


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """One distinct answer: its forms (equivalent answers grouped), how many candidates gave
    it, their summed and best values (None without scores), and whether it was chosen."""

    forms: tuple[str, ...]  # first seen first; () for candidates without an answer
    count: int
    weight: float | None
    best: float | None
    chosen: bool

    @property
    def label(self) -> str:
        return " = ".join(self.forms) if self.forms else "(no answer)"


def answer_rows(solution: Solution) -> list[AnswerRow]:
    """The distinct answers of `solution`'s candidates, in the order of its selection rule."""
    members: dict[int | None, list[Candidate]] = {}
    for candidate in solution.candidates:
        members.setdefault(candidate.group, []).append(candidate)
    answer = solution.answer
    groups = (c.group for c in solution.candidates if c.answer == answer)
    chosen = next(groups, None) if answer is not None else None
    rows = []
    for group, candidates in members.items():
        values = [c.value for c in candidates if c.value is not None]
        forms = tuple(dict.fromkeys(c.answer for c in candidates if c.answer is not None))
        rows.append(
            AnswerRow(
                forms=forms,
                count=len(candidates),
                weight=sum(values) if values else None,
                best=max(values) if values else None,
                chosen=group is not None and group == chosen,
            )
        )
    selection = _ordering(solution)

    def rank(row: AnswerRow) -> tuple[bool, float]:
        key = {"majority": row.count, "best": row.best, "weighted": row.weight}[selection]
        return (not row.forms, -(key if key is not None else float("-inf")))

    return sorted(rows, key=rank)  # stable: equal keys stay in first-seen order


def _selection(solution: Solution) -> Selection:
    strategy = STRATEGIES.get(solution.strategy)
    return strategy.selection if strategy is not None else "majority"


def _ordering(solution: Solution) -> Selection:
    """The rule the answers table is ordered by: the strategy's, or the count when no
    candidate has a value to weigh."""
    if any(c.value is not None for c in solution.candidates):
        return _selection(solution)
    return "majority"


def _ranked(solution: Solution) -> list[Candidate]:
    """Candidates by value, best first (ties: generation order); unscored ones in
    generation order."""
    return sorted(
        solution.candidates,
        key=lambda c: (c.value is None, -(c.value or 0.0), c.index),
    )


def _cut(text: str, width: int = _CELL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _count(number: int, word: str) -> str:
    if number == 1:
        return f"1 {word}"
    return f"{number} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _or_none(answer: str | None) -> str:
    return "(none)" if answer is None else answer


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def solution_text(solution: Solution, *, settings: str, top: int) -> str:
    """The terminal report: problem, settings, answer, answers table, top candidates,
    ledger and what degraded.

    Args:
        solution: what `solve` returned.
        settings: one line naming the strategy and its settings.
        top: candidates listed (0: all).
    """
    lines = [f"problem: {_cut(solution.problem, 100)}", settings, ""]
    selection = _selection(solution)
    votes = votes_of(solution.candidates, solution.n)
    scored = any(c.value is not None for c in solution.candidates)
    picks = {"majority": votes.majority, "best": votes.best, "weighted": votes.weighted}
    others = [
        f"{rule} {_or_none(answer)}"
        for rule, answer in picks.items()
        if scored and rule != selection  # without scores only the majority vote exists
    ]
    also = f"; {', '.join(others)}" if others else ""
    chosen = _or_none(solution.answer)
    lines += [f"answer: {chosen}  ({_RULE[selection]}{also})", ""]
    lines += _answers_table(solution, scored)
    lines += [""]
    lines += _candidates_table(solution, scored, top)
    lines += ["", ledger_line(solution), *degraded_lines(solution)]
    return "\n".join(lines) + "\n"


def _answers_table(solution: Solution, scored: bool) -> list[str]:
    rows = answer_rows(solution)
    count = len(solution.candidates)
    order = _ORDER[_ordering(solution)]
    distinct = f"{len(rows)} distinct answer{'' if len(rows) == 1 else 's'}"
    lines = [f"{distinct} over {count} candidates (by {order}):"]
    width = max([len("answer"), *(len(_cut(r.label)) for r in rows)])
    head = f"    {'answer':<{width}}  count"
    lines.append(head + ("  weight   best" if scored else ""))
    for row in rows:
        mark = "  * " if row.chosen else "    "
        line = f"{mark}{_cut(row.label):<{width}}  {row.count:>5}"
        if scored:
            line += f"  {_number(row.weight):>6}  {_number(row.best):>5}"
        lines.append(line)
    return lines


def _candidates_table(solution: Solution, scored: bool, top: int) -> list[str]:
    ranked = _ranked(solution)
    shown = ranked if top == 0 else ranked[:top]
    by = "by value" if scored else "in generation order"
    lines = [f"top {len(shown)} of {len(ranked)} candidates ({by}):"]
    answer_w = max([len("answer"), *(len(_cut(_or_none(c.answer))) for c in shown)])
    branch_w = max([len("branch"), *(len(_cut(c.branch)) for c in shown)])
    lines.append(f"  index  {'branch':<{branch_w}}  {'answer':<{answer_w}}  value  steps  finish")
    for c in shown:
        lines.append(
            f"  {c.index:>5}  {_cut(c.branch):<{branch_w}}  {_cut(_or_none(c.answer)):<{answer_w}}"
            f"  {_number(c.value):>5}  {len(c.steps):>5}  {c.finish.value}"
        )
    if len(shown) < len(ranked):
        lines.append(f"  ... {len(ranked) - len(shown)} more (--top 0 lists all, --json has all)")
    return lines


def ledger_line(solution: Solution) -> str:
    """Requests, retries and tokens from the ledger, and the solve's wall time."""
    usage = solution.ledger.totals()
    counts = ", ".join(
        _count(number, word)
        for number, word in (
            (usage.requests, "request"),
            (usage.retries, "retry"),
            (usage.failures, "failed attempt"),
        )
    )
    return (
        f"ledger: {counts}; tokens: {usage.prompt_tokens:,.0f} prompt"
        f" ({usage.cached_tokens:,.0f} cached), {usage.completion_tokens:,.0f} completion,"
        f" {usage.prm_tokens:,.0f} PRM; wall {solution.ledger.wall_s:.2f} s"
    )


def degraded_lines(solution: Solution) -> list[str]:
    """What fell short of the plan (lost, cut, unfinished, narrowed), with up to three
    reasons branches were lost; one line saying so when nothing did."""
    notes = solution.degradation.notes()
    if not notes and not solution.lost:
        return ["degraded: nothing"]
    lines = ["degraded:"]
    lines += [f"  - {note}" for note in notes]
    reasons = list(dict.fromkeys(f"{b.stage}: {b.reason}" for b in solution.lost))
    lines += [f"  - lost while {reason}" for reason in reasons[:3]]
    if len(reasons) > 3:
        lines.append(f"  - ... {len(reasons) - 3} more reasons (--json lists every branch)")
    return lines


def solution_json(
    solution: Solution, *, settings: Mapping[str, Any], trace: str | None
) -> dict[str, Any]:
    """`Solution.to_dict()` with the settings, every rule's vote, the answers table and the
    trace file."""
    votes = votes_of(solution.candidates, solution.n)
    return {
        **solution.to_dict(),
        "settings": dict(settings),
        "votes": {"majority": votes.majority, "best": votes.best, "weighted": votes.weighted},
        "answers": [
            {
                "forms": list(row.forms),
                "count": row.count,
                "weight": row.weight,
                "best": row.best,
                "chosen": row.chosen,
            }
            for row in answer_rows(solution)
        ],
        "trace": trace,
    }
