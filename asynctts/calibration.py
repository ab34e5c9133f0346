"""The calibration table of compute-optimal scaling: difficulty bin x budget -> the strategy
and settings that did best there, built from per-problem outcomes of a calibration run.

Rules:
- The probe follows the budget: a solve with budget N probes with `probes[N]` samples
  (default `default_probe`: a quarter of N, 2 to 8). One part of the table per probe size
  k serves every budget probing with k: a problem's predicted difficulty is the mean PRM
  value of its first k samples (asynctts/search/difficulty.py), the part's bins are
  quantiles of it over the calibration problems (bin 1 the easiest, highest values; a value
  on an edge goes to the easier bin), and its cells cover every calibrated N >= k, so a
  batch budget can read what smaller budgets buy for a problem probed with k.
- An option (a strategy and its settings) competes at budget N only when every calibration
  problem has its outcome there; "probe" (stop after the probe) always competes, with the
  part's probe. In each (bin, N) the option with the highest accuracy is chosen; ties go to
  fewer tokens (policy generated + PRM prompt), then to the label.
- Honest accuracy of choosing per bin comes from K-fold cross-validation within each bin
  (folds seeded): a problem is scored by the option chosen on the other folds of its bin, so
  it never picks its own strategy. The oracle reading does the same with bins of the true
  pass@1 (Snell et al.'s upper bound), when every record has one. Each (bin, N) also keeps
  its choice valued that way (`ProbePart.validated`: the cross-validated accuracy, the
  choice's own tokens), what a batch budget prices the choice at. Each budget is validated
  with the part its solves use.
- Oracle bins: when every record has a pass@1 each part also stores quantile bins of it (the
  same edge rules, as many bins asked) and their cells, ranked alike; bin 1 holds the highest
  pass@1. `choose_oracle` looks a problem up by a known pass@1 (eval's oracle line). They are
  optional in the saved table: one without them loads, and has no oracle.
- A table is valid for one policy/PRM pair and prompt format (`identity`); `check_identity`
  refuses another, naming every field that differs. It answers for budgets >= its smallest
  (a larger N than calibrated uses the largest calibrated budget at or below it, and its
  probe). A table of the earlier layout (one probe for every budget) is refused by `load`
  with the command that rebuilds it.
- Ties: when many problems share a predicted difficulty, tied quantiles merge, so the table
  has fewer bins than asked (never an empty one) and its notes say so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.protocols import STEP_DELIMITER
from asynctts.search.aggregate import AggregateName
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.compute_optimal import Decision
from asynctts.search.difficulty import SETTLE_RULES, SettleRule
from asynctts.search.dvts import DVTS
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.particle_filter import ParticleFilter
from asynctts.search.rebase import Rebase
from asynctts.search.revise import Revise
from asynctts.search.strategy import Strategy
from asynctts.search.tree_search import TreeSearch
from asynctts.search.weighted_best_of_n import WeightedBestOfN

FORMAT = 2  # bump when the saved layout changes (2: one part per probe size)
PROBE = "probe"  # the option of stopping at the probe: its samples' weighted vote
# The early exit's defaults: on the calibrated simulator (benchmarks/early_exit_sim.py, 500
# problems x 3 seeds) the PRM-weighted rule at 0.9 saves 31% of weighted best-of-N's tokens at
# N=64 with accuracy unchanged; the count rule at 0.95 saves 28% at -0.3 points, at 0.9 36% at
# -0.6.
SETTLE_RULE: SettleRule = "weighted"
CONFIDENCE = 0.9
# The probe's default size. On the calibrated simulator (benchmarks/compute_optimal_sim.py) a
# probe of 8 at N=16 leaves the search 8 generations and compute_optimal falls 3.8 points
# below beam search at equal generations; a probe of 4 there is level (-1.0), but at N=64 a
# probe of 4 reads difficulty worse than 8 (56.4 vs 58.2). A quarter of the budget keeps both.
PROBE_SHARE = 4
PROBE_RANGE = (2, 8)
_SAMPLERS: dict[str, Callable[[AggregateName], Strategy]] = {
    "majority": lambda aggregate: MajorityVote(),
    "best_of_n": lambda aggregate: BestOfN(aggregate=aggregate),
    "weighted_best_of_n": lambda aggregate: WeightedBestOfN(aggregate=aggregate),
}
_TREES: dict[str, type[BeamSearch] | type[DVTS]] = {"beam_search": BeamSearch, "dvts": DVTS}
DEFAULT_MAX_DEPTH = TreeSearch.max_depth
# searches without a width: built with the aggregate and the depth cap alone (revise has no
# depth cap: it revises whole solutions)
STEPWISE: dict[str, Callable[[AggregateName, int], Strategy]] = {
    "particle_filter": lambda aggregate, depth: ParticleFilter(
        aggregate=aggregate, max_depth=depth
    ),
    "rebase": lambda aggregate, depth: Rebase(aggregate=aggregate, max_depth=depth),
    "revise": lambda aggregate, depth: Revise(aggregate=aggregate),
}


@dataclass(frozen=True, slots=True)
class Option:
    """A strategy and its settings, as the table names it: "best_of_n", "dvts(width=8)", or
    "probe" (stop after the probe, answer with its samples' weighted vote)."""

    strategy: str
    width: int | None = None

    def __post_init__(self) -> None:
        if self.strategy in (*_SAMPLERS, *STEPWISE, PROBE) and self.width is None:
            return
        if self.strategy in _TREES and self.width is not None and self.width >= 1:
            return
        raise ConfigError(
            f"option {self.strategy!r} width={self.width}: choose {PROBE!r}, one of "
            f"{sorted([*_SAMPLERS, *STEPWISE])}"
            f" (no width) or {sorted(_TREES)} with a width >= 1"
        )

    @property
    def label(self) -> str:
        return self.strategy if self.width is None else f"{self.strategy}(width={self.width})"

    @classmethod
    def parse(cls, label: str) -> Option:
        name, _, rest = label.partition("(width=")
        if not rest:
            return cls(name)
        if not rest.endswith(")") or not rest[:-1].isdigit():
            raise ConfigError(f"option {label!r}: write NAME or NAME(width=W)")
        return cls(name, int(rest[:-1]))

    def build(
        self, aggregate: AggregateName, *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> Strategy | None:
        """The strategy to run after the probe; None for "probe" (stop there)."""
        if self.strategy == PROBE:
            return None
        if self.strategy in STEPWISE:
            return STEPWISE[self.strategy](aggregate, max_depth)
        if self.width is None:
            return _SAMPLERS[self.strategy](aggregate)
        return _TREES[self.strategy](width=self.width, max_depth=max_depth, aggregate=aggregate)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One option's result on one problem at one budget."""

    correct: bool
    policy_tokens: float  # generated by the policy
    prm_tokens: float  # PRM prompt tokens


def default_probe(n: int) -> int:
    """The probe of a solve with budget n: a quarter of n, kept within `PROBE_RANGE` and
    never above n."""
    low, high = PROBE_RANGE
    return min(n, max(low, min(high, n // PROBE_SHARE)))


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """What a probe of one size read on one problem, and the outcome of stopping there."""

    predicted: float  # the probe's mean PRM value (higher: easier)
    agreement: float  # the probe's share on its most common answer
    outcome: Outcome  # the option "probe": the weighted vote of the probe's samples


@dataclass(frozen=True, slots=True)
class ProblemRecord:
    """What the calibration run learnt about one problem."""

    problem_id: str
    probes: Mapping[int, ProbeRecord]  # probe size -> its reading
    pass_at_1: float | None  # oracle: the share of the problem's samples that are right
    outcomes: Mapping[tuple[str, int], Outcome]  # (Option.label, N) -> outcome (not "probe")


@dataclass(frozen=True, slots=True)
class Cell:
    """An option's record in one bin at one budget."""

    option: str
    accuracy: float
    policy_tokens: float  # means per problem
    prm_tokens: float
    problems: int

    @property
    def tokens(self) -> float:
        return self.policy_tokens + self.prm_tokens


@dataclass(frozen=True, slots=True)
class Validation:
    """Cross-validated accuracy at one budget: choosing per bin (predicted and oracle bins)
    beside every option used for all problems alike."""

    budget: int
    predicted: float
    oracle: float | None
    fixed: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class OracleBins:
    """Bins of the true pass@1 and their cells, ranked as the predicted bins' are."""

    edges: tuple[float, ...]  # ascending cut points of pass@1 (bins - 1 of them)
    cells: Mapping[tuple[int, int], tuple[Cell, ...]]  # (bin, N) -> options, the chosen first

    @property
    def bins(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True, slots=True)
class ProbePart:
    """The table's part for solves that probe with `probe` samples: bins of that probe's
    predicted difficulty and, per (bin, N), the options ranked at every calibrated N >= probe."""

    probe: int
    edges: tuple[float, ...]  # ascending cut points of predicted difficulty (bins - 1 of them)
    cells: Mapping[tuple[int, int], tuple[Cell, ...]]  # (bin, N) -> options, the chosen first
    # (bin, N) -> the chosen option (its tokens) with the cross-validated accuracy of choosing
    # there: what the choice is worth on problems it was not chosen on
    validated: Mapping[tuple[int, int], Cell]
    oracle: OracleBins | None = None  # bins of the true pass@1 (None: records had none)

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(sorted({n for _, n in self.cells}))

    def bin_of(self, predicted: float) -> int:
        """1 (easiest) .. bins (hardest)."""
        return _bin_of(self.edges, predicted)


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    identity: Mapping[str, str]
    aggregate: AggregateName
    settle_rule: SettleRule
    confidence: float
    budgets: tuple[int, ...]
    probes: Mapping[int, int]  # budget N -> the probe's size at N
    parts: Mapping[int, ProbePart]  # probe size -> its part
    validation: tuple[Validation, ...] = ()
    problems: int = 0
    notes: tuple[str, ...] = field(default=())
    max_depth: int = DEFAULT_MAX_DEPTH  # the calibrated tree searches' depth cap

    def strategy_of(self, label: str) -> Strategy | None:
        """The option `label` built with the settings the table was calibrated with."""
        return Option.parse(label).build(self.aggregate, max_depth=self.max_depth)

    @property
    def has_oracle(self) -> bool:
        return all(part.oracle is not None for part in self.parts.values())

    def budget_for(self, n: int) -> int:
        """The calibrated budget whose cells answer for a solve with budget `n`."""
        fitting = [b for b in self.budgets if b <= n]
        if not fitting:
            raise ConfigError(
                f"budget n={n} is below the calibration table's smallest budget "
                f"{self.budgets[0]}; calibrate with a smaller --n or raise n"
            )
        return max(fitting)

    def probe_for(self, n: int) -> int:
        """The probe's size for a solve with budget `n`."""
        return self.probes[self.budget_for(n)]

    def part_for(self, n: int) -> ProbePart:
        """The part a solve with budget `n` reads."""
        return self.parts[self.probe_for(n)]

    def choose(self, predicted: float, budget: int) -> Decision:
        """The table's choice for a problem of `predicted` difficulty solved with `budget`
        (`predicted` read from a probe of `probe_for(budget)` samples)."""
        part = self.part_for(budget)
        level = part.bin_of(predicted)
        return self._decision(level, part.cells[(level, self.budget_for(budget))][0])

    def choose_oracle(self, pass_at_1: float, budget: int) -> Decision:
        """The oracle's choice for a problem whose true pass@1 is known, solved with `budget`.

        Raises:
            ConfigError: the table has no oracle bins, or pass@1 is outside [0, 1].
        """
        oracle = self.part_for(budget).oracle
        if oracle is None:
            raise ConfigError(
                "this calibration table has no oracle bins (its records had no pass@1): run"
                " `asynctts calibrate` again"
            )
        if not 0.0 <= pass_at_1 <= 1.0:
            raise ConfigError(f"pass@1 {pass_at_1} is outside [0, 1]")
        level = _bin_of(oracle.edges, pass_at_1)
        return self._decision(level, oracle.cells[(level, self.budget_for(budget))][0])

    def _decision(self, level: int, chosen: Cell) -> Decision:
        return Decision(bin=level, label=chosen.option, strategy=self.strategy_of(chosen.option))

    def check_identity(self, identity: Mapping[str, str]) -> None:
        """Raise ConfigError naming every field where `identity` differs from the table's."""
        differing = [
            f"{key}: table {self.identity.get(key)!r}, this run {identity.get(key)!r}"
            for key in sorted(set(self.identity) | set(identity))
            if self.identity.get(key) != identity.get(key)
        ]
        if differing:
            raise ConfigError(
                "the calibration table was made for another policy, PRM or prompt format ("
                + "; ".join(differing)
                + "); run `asynctts calibrate` for this one"
            )

    def summary(self) -> str:
        probes = ", ".join(f"N={n}: {self.probes[n]}" for n in self.budgets)
        lines = [
            f"calibration: {self.problems} problems, budgets {list(self.budgets)}, probe sizes"
            f" {probes} (bin 1 easiest)",
            f"early exit: {self.settle_rule} rule at confidence {self.confidence}",
            "",
            f"  {'probe':>5}  {'bin':>3}  {'N':>4}  {'choice':<24}  {'acc %':>6}  {'tokens':>8}"
            f"  {'problems':>8}",
        ]
        for k, part in sorted(self.parts.items()):
            for (level, n), cells in sorted(part.cells.items(), key=lambda item: item[0][::-1]):
                best = cells[0]
                lines.append(
                    f"  {k:>5}  {level:>3}  {n:>4}  {best.option:<24}  {100 * best.accuracy:>6.1f}"
                    f"  {best.tokens:>8.0f}  {best.problems:>8}"
                )
        for k, part in sorted(self.parts.items()):
            if part.oracle is None:
                continue
            edges = ", ".join(f"{edge:g}" for edge in part.oracle.edges)
            lines += [
                "",
                f"oracle (probe {k}): {part.oracle.bins} bins of the true pass@1 (bin 1"
                f" highest), edges [{edges}]; choices:",
            ]
            for n in part.budgets:
                chosen = ", ".join(
                    f"{level} {part.oracle.cells[(level, n)][0].option}"
                    for level in range(1, part.oracle.bins + 1)
                )
                lines.append(f"  N={n}: {chosen}")
        if self.validation:
            lines += ["", "cross-validated accuracy (%), choosing per bin vs one option for all:"]
            for check in self.validation:
                oracle = "-" if check.oracle is None else f"{100 * check.oracle:.1f}"
                top_label, top = max(check.fixed.items(), key=lambda item: item[1])
                lines.append(
                    f"  N={check.budget} (probe {self.probes[check.budget]}): predicted bins"
                    f" {100 * check.predicted:.1f}, oracle bins {oracle}, best single option"
                    f" {top_label} {100 * top:.1f}"
                )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "identity": dict(self.identity),
            "aggregate": self.aggregate,
            "max_depth": self.max_depth,
            "settle_rule": self.settle_rule,
            "confidence": self.confidence,
            "budgets": list(self.budgets),
            "probes": [{"n": n, "probe": self.probes[n]} for n in self.budgets],
            "parts": [_part_dict(part) for _, part in sorted(self.parts.items())],
            "problems": self.problems,
            "validation": [
                {
                    "n": v.budget,
                    "predicted": v.predicted,
                    "oracle": v.oracle,
                    "fixed": dict(v.fixed),
                }
                for v in self.validation
            ],
            "notes": list(self.notes),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationTable:
        """A table `save` wrote. Raises ConfigError naming the file and what is wrong."""
        source = Path(path)
        try:
            document = json.loads(source.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"calibration table {source}: cannot read it ({err})") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"calibration table {source}: not JSON ({err.msg})") from err
        if isinstance(document, dict) and document.get("format") == 1:
            raise ConfigError(
                f"calibration table {source}: written by an earlier asynctts (one probe size"
                " for every budget); rebuild it with `asynctts calibrate --resume --out"
                " RUN_DIR` on its run directory (no request is repeated)"
            )
        try:
            if not isinstance(document, dict):
                raise TypeError(f"a JSON {type(document).__name__}, not an object")
            return cls.from_dict(document)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"calibration table {source}: not a table `asynctts calibrate` wrote "
                f"({type(err).__name__}: {err})"
            ) from err

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> CalibrationTable:
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
        parts = {int(p["probe"]): _part_of(p) for p in document["parts"]}
        table = cls(
            identity={str(k): str(v) for k, v in document["identity"].items()},
            aggregate=document["aggregate"],
            max_depth=int(document["max_depth"]),
            settle_rule=_settle_rule(document["settle_rule"]),
            confidence=float(document["confidence"]),
            budgets=tuple(int(b) for b in document["budgets"]),
            probes={int(p["n"]): int(p["probe"]) for p in document["probes"]},
            parts=parts,
            validation=tuple(
                Validation(v["n"], v["predicted"], v["oracle"], v["fixed"])
                for v in document["validation"]
            ),
            problems=int(document["problems"]),
            notes=tuple(document["notes"]),
        )
        for n in table.budgets:
            k = table.probes.get(n)
            if k is None or k not in parts or k > n:
                raise ValueError(f"no probe part for budget N={n} (probe {k})")
        for k, part in parts.items():
            held = [
                ("", part.bins, part.cells),
                ("validated ", part.bins, {key: (c,) for key, c in part.validated.items()}),
            ]
            if part.oracle is not None:
                held.append(("oracle ", part.oracle.bins, part.oracle.cells))
            for name, bins, cells in held:
                missing = [
                    (level, n)
                    for level in range(1, bins + 1)
                    for n in table.budgets
                    if n >= k and not cells.get((level, n))
                ]
                if missing:
                    raise ValueError(f"probe {k}: no {name}cell for (bin, N) {missing}")
        return table


@dataclass(frozen=True, slots=True)
class OracleChoice:
    """A table as compute_optimal's chooser for one problem whose true pass@1 is known: the
    choice of the problem's oracle bin, whatever its probe reads (the probe still runs: its
    samples are candidates and decide the early exit, as on the predicted line).

    Raises:
        ConfigError: the table has no oracle bins, or pass@1 is outside [0, 1].
    """

    table: CalibrationTable
    pass_at_1: float

    def __post_init__(self) -> None:
        self.table.choose_oracle(self.pass_at_1, self.table.budgets[-1])  # refuses bad input

    @property
    def aggregate(self) -> AggregateName:
        return self.table.aggregate

    @property
    def settle_rule(self) -> SettleRule:
        return self.table.settle_rule

    @property
    def confidence(self) -> float:
        return self.table.confidence

    def budget_for(self, n: int) -> int:
        return self.table.budget_for(n)

    def probe_for(self, n: int) -> int:
        return self.table.probe_for(n)

    def choose(self, predicted: float, budget: int) -> Decision:
        return self.table.choose_oracle(self.pass_at_1, budget)


def _part_dict(part: ProbePart) -> dict[str, Any]:
    document: dict[str, Any] = {
        "probe": part.probe,
        "edges": list(part.edges),
        "cells": _cells_list(part.cells),
        "validated": _cells_list({key: (cell,) for key, cell in part.validated.items()}),
    }
    if part.oracle is not None:
        document["oracle"] = {
            "edges": list(part.oracle.edges),
            "cells": _cells_list(part.oracle.cells),
        }
    return document


def _part_of(document: Mapping[str, Any]) -> ProbePart:
    oracle = None
    if document.get("oracle") is not None:
        oracle = OracleBins(
            edges=tuple(float(e) for e in document["oracle"]["edges"]),
            cells=_cells_of(document["oracle"]["cells"]),
        )
    return ProbePart(
        probe=int(document["probe"]),
        edges=tuple(float(e) for e in document["edges"]),
        cells=_cells_of(document["cells"]),
        validated={key: ranked[0] for key, ranked in _cells_of(document["validated"]).items()},
        oracle=oracle,
    )


def _cells_list(cells: Mapping[tuple[int, int], tuple[Cell, ...]]) -> list[dict[str, Any]]:
    return [
        {"bin": level, "n": n, "options": [_cell_dict(c) for c in ranked]}
        for (level, n), ranked in sorted(cells.items())
    ]


def _cells_of(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int], tuple[Cell, ...]]:
    return {
        (int(row["bin"]), int(row["n"])): tuple(Cell(**c) for c in row["options"]) for row in rows
    }


def _cell_dict(cell: Cell) -> dict[str, Any]:
    return {
        "option": cell.option,
        "accuracy": cell.accuracy,
        "policy_tokens": cell.policy_tokens,
        "prm_tokens": cell.prm_tokens,
        "problems": cell.problems,
    }


def table_identity(
    policy: Endpoint, prm: Endpoint | None, system_prompt: str | None
) -> dict[str, str]:
    """What a table is valid for: the models and how they are prompted (never a URL or key)."""
    identity = {
        "policy.model": policy.model,
        "policy.mode": policy.mode,
        "policy.prompt_format": str(policy.prompt_format),
        "system_prompt": str(system_prompt),
        "step_delimiter": STEP_DELIMITER,
    }
    if prm is not None:
        identity |= {
            "prm.model": prm.model,
            "prm.scoring": prm.scoring,
            "prm.prompt_format": str(prm.prompt_format),
            "prm.step_tag": prm.step_tag,
        }
    return identity


@dataclass(frozen=True, slots=True)
class _Row:
    """A record as one part reads it: its probe's predicted difficulty, and its outcomes with
    the option "probe" (that probe's) at every budget."""

    predicted: float
    pass_at_1: float | None
    outcomes: Mapping[tuple[str, int], Outcome]


def probe_sizes(probe: int | Mapping[int, int] | None, budgets: Sequence[int]) -> dict[int, int]:
    """Budget -> probe size: one size for every budget, a size per budget, or (None) the
    default of each.

    Raises:
        ConfigError: a budget without a size, a size < 1 or above its budget.
    """
    if probe is None:
        sizes = {n: default_probe(n) for n in budgets}
    elif isinstance(probe, int):
        sizes = dict.fromkeys(budgets, probe)
    else:
        missing = sorted(set(budgets) - set(probe))
        if missing:
            raise ConfigError(f"no probe size for budgets {missing}")
        sizes = {n: probe[n] for n in budgets}
    for n, k in sorted(sizes.items()):
        if not 1 <= k <= n:
            raise ConfigError(
                f"probe of {k} samples at budget N={n}: need 1 <= probe <= N (the probe's"
                " samples are the first of the budget)"
            )
    return sizes


def build_table(
    records: Sequence[ProblemRecord],
    *,
    identity: Mapping[str, str],
    budgets: Sequence[int],
    probe: int | Mapping[int, int] | None = None,
    bins: int = 5,
    folds: int = 5,
    seed: int = 0,
    aggregate: AggregateName = "last",
    max_depth: int = DEFAULT_MAX_DEPTH,
    settle_rule: str = SETTLE_RULE,
    confidence: float = CONFIDENCE,
) -> CalibrationTable:
    """The table of `records` (see the module rules).

    Args:
        probe: the probe's size, for every budget (an int) or per budget (a mapping); None:
            `default_probe` of each budget.

    Raises:
        ConfigError: bad settings, too few problems for the bins, ties that leave a bin
            empty, a record without a reading of a probe size used, or a budget no option
            covers.
    """
    if bins < 1:
        raise ConfigError(f"bins={bins}: need >= 1")
    if folds < 2:
        raise ConfigError(f"folds={folds}: need >= 2 (cross-validation)")
    rule = _settle_rule(settle_rule)
    if not 0.5 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence}: need 0.5 < confidence < 1")
    if not budgets:
        raise ConfigError("no budget to calibrate")
    budgets = tuple(sorted(set(budgets)))
    probes = probe_sizes(probe, budgets)
    if len(records) < bins:
        raise ConfigError(f"{len(records)} calibration problems cannot fill {bins} bins")
    unread = sorted({k for k in probes.values() for r in records if k not in r.probes})
    if unread:
        raise ConfigError(f"records without a reading of a probe of {unread} samples")
    options = {n: _complete_options(records, n) for n in budgets}
    notes = []
    for n in budgets:
        if not options[n]:  # "probe" alone would be chosen only because nothing else ran
            raise ConfigError(f"budget N={n}: no option has an outcome on every problem")
        partial = sorted(
            {label for r in records for (label, m) in r.outcomes if m == n} - set(options[n])
        )
        if partial:
            notes.append(f"N={n}: left out {partial} (not run on every problem)")
    parts = {}
    validation: list[Validation] = []
    for k in sorted(set(probes.values())):
        rows = [
            _Row(
                predicted=r.probes[k].predicted,
                pass_at_1=r.pass_at_1,
                outcomes={
                    **r.outcomes,
                    **{(PROBE, n): r.probes[k].outcome for n in budgets if n >= k},
                },
            )
            for r in records
        ]
        competing = {n: [*options[n], PROBE] for n in budgets if n >= k}
        parts[k] = _part(rows, k, competing, bins, folds, seed)
        if parts[k].bins < bins:
            notes.append(
                f"probe {k}: {parts[k].bins} difficulty bins, not {bins}: calibration problems"
                " share predicted difficulties at the quantiles, and a bin must hold problems"
            )
        oracle = parts[k].oracle
        if oracle is not None and oracle.bins < bins and k == min(probes.values()):
            notes.append(
                f"{oracle.bins} oracle bins, not {bins}: calibration problems share "
                "pass@1 values at the quantiles, and a bin must hold problems"
            )
        for n in (n for n in budgets if probes[n] == k):
            validation.append(_validation(rows, parts[k], competing[n], n, folds, seed))
    return CalibrationTable(
        identity=dict(identity),
        aggregate=aggregate,
        max_depth=max_depth,
        settle_rule=rule,
        confidence=confidence,
        budgets=budgets,
        probes=probes,
        parts=parts,
        validation=tuple(sorted(validation, key=lambda v: v.budget)),
        problems=len(records),
        notes=tuple(notes),
    )


def _part(
    rows: Sequence[_Row],
    k: int,
    competing: Mapping[int, Sequence[str]],
    bins: int,
    folds: int,
    seed: int,
) -> ProbePart:
    """The part of probe size `k`: its bins and, at each budget, `competing` ranked per bin
    and the choice's cross-validated value."""
    edges = _quantile_edges([r.predicted for r in rows], bins)
    by_bin = _group(rows, lambda r: _bin_of(edges, r.predicted))
    cells = {
        (level, n): _ranked(members, options, n)
        for n, options in competing.items()
        for level, members in by_bin.items()
    }
    validated = {
        (level, n): _validated_cell(members, options, n, folds, f"{seed}:{level}:{n}")
        for n, options in competing.items()
        for level, members in by_bin.items()
    }
    oracle = None
    if all(r.pass_at_1 is not None for r in rows):
        oracle_edges = _quantile_edges([r.pass_at_1 or 0.0 for r in rows], bins)
        oracle_bins = _group(rows, lambda r: _bin_of(oracle_edges, r.pass_at_1 or 0.0))
        oracle = OracleBins(
            oracle_edges,
            {
                (level, n): _ranked(members, options, n)
                for n, options in competing.items()
                for level, members in oracle_bins.items()
            },
        )
    return ProbePart(probe=k, edges=edges, cells=cells, validated=validated, oracle=oracle)


def _validation(
    rows: Sequence[_Row], part: ProbePart, options: Sequence[str], n: int, folds: int, seed: int
) -> Validation:
    """Cross-validated accuracy at budget `n` of choosing per bin of `part` (and per oracle
    bin), beside each option for all."""
    oracle = None
    if part.oracle is not None:
        edges = part.oracle.edges
        groups = _group(rows, lambda r: _bin_of(edges, r.pass_at_1 or 0.0))
        oracle = _cross_validated(groups, options, n, folds, seed)
    return Validation(
        budget=n,
        predicted=_cross_validated(
            _group(rows, lambda r: part.bin_of(r.predicted)), options, n, folds, seed
        ),
        oracle=oracle,
        fixed={o: _accuracy(rows, o, n) for o in options},
    )


def _settle_rule(name: str) -> SettleRule:
    for rule in SETTLE_RULES:
        if rule == name:
            return rule
    raise ConfigError(f"settle rule {name!r}: choose one of {list(SETTLE_RULES)}")


def _quantile_edges(values: Sequence[float], bins: int) -> tuple[float, ...]:
    """Cut points at the 1/bins, 2/bins, ... quantiles; tied quantiles merge into one cut
    and a cut at the smallest value is dropped, so no bin is empty (there are fewer bins)."""
    ordered = sorted(values)
    cuts = {ordered[math.ceil(len(ordered) * q / bins)] for q in range(1, bins)}
    return tuple(sorted(cut for cut in cuts if cut > ordered[0]))


def _group(records: Sequence[_Row], key: Callable[[_Row], int]) -> dict[int, list[_Row]]:
    groups: dict[int, list[_Row]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _bin_of(edges: Sequence[float], value: float) -> int:
    """The bin of `value` under ascending cut points `edges`: 1 above the last cut (easiest),
    len(edges) + 1 below the first; a value on a cut goes to the easier side."""
    return len(edges) + 1 - sum(1 for edge in edges if value >= edge)


def _complete_options(records: Sequence[ProblemRecord], n: int) -> list[str]:
    labels = {label for r in records for (label, m) in r.outcomes if m == n}
    return sorted(label for label in labels if all((label, n) in r.outcomes for r in records))


def _accuracy(records: Sequence[_Row], option: str, n: int) -> float:
    return sum(r.outcomes[(option, n)].correct for r in records) / len(records)


def _ranked(records: Sequence[_Row], options: Sequence[str], n: int) -> tuple[Cell, ...]:
    cells = [
        Cell(
            option=option,
            accuracy=_accuracy(records, option, n),
            policy_tokens=sum(r.outcomes[(option, n)].policy_tokens for r in records)
            / len(records),
            prm_tokens=sum(r.outcomes[(option, n)].prm_tokens for r in records) / len(records),
            problems=len(records),
        )
        for option in options
    ]
    return tuple(sorted(cells, key=lambda c: (-c.accuracy, c.tokens, c.option)))


def _cross_validated(
    groups: Mapping[int, Sequence[_Row]],
    options: Sequence[str],
    n: int,
    folds: int,
    seed: int,
) -> float:
    """The accuracy of choosing per group, each problem judged by the choice made without it."""
    outcomes = [
        outcome
        for level, members in sorted(groups.items())
        for outcome in _held_out(members, options, n, folds, f"{seed}:{level}:{n}")
    ]
    return sum(o.correct for o in outcomes) / len(outcomes)


def _held_out(
    members: Sequence[_Row], options: Sequence[str], n: int, folds: int, shuffle: str
) -> list[Outcome]:
    """Each member's outcome at `n` under the option chosen on the other folds of `members`
    (folds drawn by a shuffle seeded with `shuffle`)."""
    shuffled = list(members)
    random.Random(shuffle).shuffle(shuffled)
    k = min(folds, len(shuffled))
    outcomes = []
    for fold in range(k):
        held = shuffled[fold::k]
        rest = [r for i, r in enumerate(shuffled) if i % k != fold]
        choice = _ranked(rest, options, n)[0].option if rest else options[0]
        outcomes += [r.outcomes[(choice, n)] for r in held]
    return outcomes


def _validated_cell(
    members: Sequence[_Row], options: Sequence[str], n: int, folds: int, shuffle: str
) -> Cell:
    """The option chosen on all of `members` (its own tokens), valued as choosing is worth:
    the cross-validated accuracy of choosing within them."""
    outcomes = _held_out(members, options, n, folds, shuffle)
    accuracy = sum(o.correct for o in outcomes) / len(outcomes)
    return dataclasses.replace(_ranked(members, options, n)[0], accuracy=accuracy)


__all__ = [
    "CONFIDENCE",
    "FORMAT",
    "PROBE",
    "SETTLE_RULE",
    "CalibrationTable",
    "Cell",
    "Option",
    "OracleBins",
    "OracleChoice",
    "Outcome",
    "ProbePart",
    "ProbeRecord",
    "ProblemRecord",
    "Validation",
    "build_table",
    "default_probe",
    "probe_sizes",
    "table_identity",
]
