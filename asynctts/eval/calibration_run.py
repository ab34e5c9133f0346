"""The calibration run of compute-optimal scaling (`asynctts calibrate`): every option (a
strategy and its settings) at every budget over a calibration set, run, journaled and resumed
as `asynctts eval` runs them, then one record per problem and the table of those records.

Rules:
- The grid. The best-of-N family runs once, weighted best-of-N at the largest budget M, and
  is read as majority, best-of-N and weighted best-of-N at every budget (its samples are in
  generation order); it grades every candidate's answer too (the oracle pass@1). Beam search
  and DVTS run at every budget N with width 4 and with width round(sqrt(N)), once when the
  two are equal. A (strategy, width, N) the strategy refuses is left out and listed. The
  searches without a width (`asynctts.calibration.STEPWISE`: particle filtering, REBASE,
  PRM-guided revision) run once at every budget they accept.
- Everything a table needs is in the journal, so the table is rebuilt from the journal alone:
  a finished run resumed with other --probe, --bins, --folds, --settle or --confidence sends
  no request.
- A problem's probe of k samples is the family run's candidates among its first k samples:
  the samples a probe of that size draws (a lost one stays lost), read as compute_optimal
  reads its own probe (asynctts/search/difficulty.py); every probe size the table uses is
  read. Its pass@1 is the share of the family's candidates that are right. An option's
  outcome at N is its own selection rule's grade at N; the option "probe" (stop after a probe
  of k) is the weighted vote of those k samples, graded by the family's verdict on that
  answer.
- Spend per outcome: policy generated tokens and PRM prompt tokens of the journaled ledger
  totals. A tree search's are its own run's. The family ran once at M, so at N its totals
  are scaled by N / M (samples are drawn alike: the first N cost N / M of the M on average);
  majority needs no PRM, so its PRM tokens are 0.
- A table is valid for the endpoints and prompts of its run (`asynctts.calibration.
  table_identity`), and records the aggregate its strategies used.
- Outputs in the run directory: calibration.json (the table), calibration.txt (its summary,
  the problems used, the fold, the budgets refused, the spend rule) and calibration.png
  (accuracy per difficulty bin vs budget, one line per option, the chosen ones marked);
  eval's report of the same journal sits beside them. Plots use matplotlib's object API,
  imported only when a plot is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asynctts.answers import weighted_vote
from asynctts.calibration import (
    DEFAULT_MAX_DEPTH,
    STEPWISE,
    CalibrationTable,
    Cell,
    Option,
    Outcome,
    ProbeRecord,
    ProblemRecord,
)
from asynctts.errors import ConfigError
from asynctts.eval.plan import FAMILY, Job, StrategySettings, build_strategy, plan_jobs, tree_job
from asynctts.eval.report import RunData
from asynctts.protocols import Finish
from asynctts.protocols import Path as SearchPath
from asynctts.search.aggregate import AggregateName
from asynctts.search.difficulty import read_probe
from asynctts.search.tree_search import TreeSearch

__all__ = [
    "CALIBRATION_JSON",
    "CALIBRATION_PLOT",
    "CALIBRATION_TEXT",
    "SPEND_RULE",
    "TREE_SEARCHES",
    "Grid",
    "Refusal",
    "RunSettings",
    "plan_grid",
    "plot_calibration",
    "records_of",
    "tree_widths",
    "write_calibration",
]

CALIBRATION_JSON = "calibration.json"
CALIBRATION_TEXT = "calibration.txt"
CALIBRATION_PLOT = "calibration.png"
TREE_SEARCHES = ("beam_search", "dvts")
_FIXED_WIDTH = TreeSearch().width
SPEND_RULE = (
    "tokens are policy generated + PRM prompt tokens per problem; the best-of-N family ran"
    " once at the largest N, its totals scaled by N / that N; majority counts no PRM tokens"
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An option the grid left out at one budget, and the strategy's reason."""

    option: str
    n: int
    reason: str

    def __str__(self) -> str:
        return f"{self.option} at N={self.n}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Grid:
    """The jobs of a calibration run and the options it could not run."""

    jobs: tuple[Job, ...]
    refused: tuple[Refusal, ...]


def tree_widths(n: int) -> tuple[int, ...]:
    """The widths a tree search runs with at budget n: 4 and round(sqrt(n)), ascending."""
    return tuple(sorted({_FIXED_WIDTH, max(1, round(math.sqrt(n)))}))


def plan_grid(budgets: Sequence[int], settings: StrategySettings | None = None) -> Grid:
    """The calibration grid at `budgets` (see the module rules).

    Args:
        budgets: the budgets N (each >= 1).
        settings: knobs every strategy gets (its width is replaced by the grid's).

    Raises:
        ConfigError: no budget, a budget < 1, or a knob a strategy refuses.
    """
    knobs = settings or StrategySettings()
    if not budgets:
        raise ConfigError("no budget given (--n N1 N2 ...)")
    (family,) = plan_jobs(list(FAMILY), budgets, settings=knobs)
    jobs = [dataclasses.replace(family, grade_candidates=True)]
    refused: list[Refusal] = []
    for name in TREE_SEARCHES:
        for n in sorted(set(budgets)):
            for width in tree_widths(n):
                strategy = build_strategy(name, dataclasses.replace(knobs, width=width))
                try:
                    strategy.check_budget(n)
                except ValueError as err:
                    refused.append(Refusal(Option(name, width).label, n, str(err)))
                    continue
                jobs.append(tree_job(strategy, n, own_width=True))
    for name in STEPWISE:
        for n in sorted(set(budgets)):
            strategy = build_strategy(name, knobs)
            try:
                strategy.check_budget(n)
            except ValueError as err:
                refused.append(Refusal(Option(name).label, n, str(err)))
                continue
            jobs.append(tree_job(strategy, n))
    return Grid(tuple(jobs), tuple(refused))


def _family_of(run: RunData) -> Mapping[str, Any]:
    for job in run.config.get("identity", {}).get("jobs", []):
        if job.get("grade_candidates"):
            return dict(job)
    raise ConfigError(
        f"{run.run_dir} is not a calibration run: no best-of-N family run grading its"
        " candidates in its journal"
    )


@dataclass(frozen=True, slots=True)
class RunSettings:
    """The strategy settings a calibration run used, which its table must run with."""

    aggregate: AggregateName
    max_depth: int


def records_of(
    run: RunData, problem_ids: Sequence[str], *, probes: Collection[int]
) -> tuple[list[ProblemRecord], RunSettings]:
    """One record per problem of a finished calibration run, from its journal alone.

    Args:
        run: the run's journal (`asynctts.eval.report.load_run`).
        problem_ids: the problems, in the order the records keep.
        probes: the probe sizes to read (each <= the largest budget).

    Returns:
        The records and the settings the run's strategies used.

    Raises:
        ConfigError: not a calibration run, a probe above the largest budget, or a (job,
            problem) without a result (the run did not finish: resume it).
    """
    family = _family_of(run)
    aggregate: AggregateName = family["settings"]["aggregate"]
    points = [int(n) for n in family["points"]]
    if max(probes) > points[-1]:
        raise ConfigError(
            f"a probe of {max(probes)} samples is above the largest budget N={points[-1]}"
        )
    jobs = run.config["identity"]["jobs"]
    missing = [
        f"{job['key']}/{pid}"
        for job in jobs
        for pid in problem_ids
        if (job["key"], pid) not in run.results
    ]
    if missing:
        raise ConfigError(
            f"{len(missing)} results missing from {run.run_dir} (e.g. {missing[:3]}):"
            " resume the run (--resume) to finish it"
        )
    records = []
    for pid in problem_ids:
        outcomes: dict[tuple[str, int], Outcome] = {}
        for job in jobs:
            result = run.results[(job["key"], pid)]
            outcomes.update(_outcomes(job, result))
        result = run.results[(family["key"], pid)]
        records.append(
            ProblemRecord(
                problem_id=pid,
                probes={k: _probe_record(result, k, points[-1], aggregate) for k in probes},
                pass_at_1=float(result["candidate_correct"]),
                outcomes=outcomes,
            )
        )
    depths = {int(job["settings"]["max_depth"]) for job in jobs if "max_depth" in job["settings"]}
    (max_depth,) = depths or {DEFAULT_MAX_DEPTH}
    return records, RunSettings(aggregate, max_depth)


def _outcomes(job: Mapping[str, Any], result: Mapping[str, Any]) -> dict[tuple[str, int], Outcome]:
    """The outcomes one job's result gives: every family member at every point, or the
    tree search's own selection rule at its budget."""
    usage = result["usage"]
    policy_tokens = float(usage.get("completion_tokens", 0.0))
    prm_tokens = float(usage.get("prm_tokens", 0.0))
    grades = result["grades"]
    if job["all_candidates"]:
        (primary,) = (line for line in job["lines"] if line["primary"])
        width = job["settings"].get("width")
        option = Option(job["strategy"], None if width is None else int(width)).label
        return {
            (option, int(job["n"])): Outcome(
                correct=bool(grades[primary["selection"]][-1]["correct"]),
                policy_tokens=policy_tokens,
                prm_tokens=prm_tokens,
            )
        }
    largest = int(job["n"])
    out = {}
    for line in job["lines"]:
        for index, n in enumerate(job["points"]):
            share = n / largest
            out[(Option(line["label"]).label, int(n))] = Outcome(
                correct=bool(grades[line["selection"]][index]["correct"]),
                policy_tokens=policy_tokens * share,
                prm_tokens=0.0 if line["selection"] == "majority" else prm_tokens * share,
            )
    return out


def _probe_record(
    result: Mapping[str, Any], probe: int, largest: int, aggregate: AggregateName
) -> ProbeRecord:
    """A probe of `probe` samples: the reading of the family's candidates among its first
    `probe` samples, and stopping there: their weighted vote, at `probe / largest` of the
    family's spend."""
    candidates = [c for c in result["solution"]["candidates"] if c["index"] < probe]
    reading = read_probe(
        [
            SearchPath(
                steps=tuple(c["steps"]), scores=tuple(c["scores"]), finish=Finish(c["finish"])
            )
            for c in candidates
        ],
        aggregate,
    )
    chosen = weighted_vote(
        [c["group"] for c in candidates], [c["value"] or 0.0 for c in candidates]
    )
    answer = None if chosen is None else candidates[chosen]["answer"]
    correct = answer is not None and result["answer_verdicts"].get(answer) is True
    usage = result["usage"]
    share = probe / largest
    outcome = Outcome(
        correct=correct,
        policy_tokens=float(usage.get("completion_tokens", 0.0)) * share,
        prm_tokens=float(usage.get("prm_tokens", 0.0)) * share,
    )
    return ProbeRecord(predicted=reading.predicted, agreement=reading.agreement, outcome=outcome)


def write_calibration(
    run_dir: str | Path,
    table: CalibrationTable,
    *,
    notes: Sequence[str] = (),
    plot: bool = True,
) -> str:
    """Write calibration.json, calibration.txt (the table's summary, then `notes`) and, with
    `plot`, calibration.png into `run_dir`.

    Returns:
        The text of calibration.txt.
    """
    directory = Path(run_dir)
    table.save(directory / CALIBRATION_JSON)
    text = table.summary() + "".join(f"{note}\n" for note in notes)
    (directory / CALIBRATION_TEXT).write_text(text, encoding="utf-8")
    if plot:
        plot_calibration(table, directory / CALIBRATION_PLOT)
    return text


def plot_calibration(table: CalibrationTable, path: str | Path) -> Path:
    """Accuracy vs budget (log2 x axis), one row of panels per probe size (one panel per
    difficulty bin), one line per option; the option chosen at each (bin, N) a solve with
    that probe uses is ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    parts = [part for _, part in sorted(table.parts.items())]
    options = sorted(
        {cell.option for part in parts for cells in part.cells.values() for cell in cells}
    )
    palette = [f"C{i % 10}" for i in range(len(options))]
    colour = dict(zip(options, palette, strict=True))
    columns = max(part.bins for part in parts)
    figure = Figure(figsize=(3.2 * columns + 2.5, 4.2 * len(parts)), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(parts), columns, sharey=True, squeeze=False)
    for part, row in zip(parts, grid, strict=True):
        chosen_at = [n for n in part.budgets if table.probes.get(n) == part.probe]
        for level, axes in enumerate(row, start=1):
            if level > part.bins:
                axes.set_visible(False)
                continue
            _plot_bin(axes, part.cells, level, part.budgets, chosen_at, options, colour)
            easiest = " (easiest)" if level == 1 else " (hardest)" if level == part.bins else ""
            axes.set_title(f"probe {part.probe}, bin {level}{easiest}", fontsize=9)
            axes.xaxis.set_major_locator(FixedLocator(list(part.budgets)))
            axes.xaxis.set_minor_locator(NullLocator())
            axes.set_xticklabels([str(n) for n in part.budgets])
        row[0].set_ylabel("accuracy (%)")
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=7)
    figure.suptitle(
        "Calibration: accuracy per difficulty bin (ringed: the table's choice at the budgets"
        " that probe with that size)"
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    return target


def _plot_bin(
    axes: Any,
    cells: Mapping[tuple[int, int], Sequence[Cell]],
    level: int,
    budgets: Sequence[int],
    chosen_at: Sequence[int],
    options: Sequence[str],
    colour: Mapping[str, str],
) -> None:
    for option in options:
        points = [
            (n, 100 * cell.accuracy)
            for n in budgets
            for cell in cells[(level, n)]
            if cell.option == option
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(
                xs, ys, marker="o", markersize=3, linewidth=1.4, color=colour[option], label=option
            )
    for n in chosen_at:
        chosen = cells[(level, n)][0]
        axes.plot(
            [n],
            [100 * chosen.accuracy],
            marker="o",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor="black",
            linestyle="none",
        )
        axes.annotate(  # lines of equal accuracy overlap: name the choice
            chosen.option,
            (n, 100 * chosen.accuracy),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=6,
        )
    axes.set_xscale("log", base=2)
    axes.set_ylim(-3, 108)  # room for the name of a choice at 100%
    axes.set_xlabel("budget N")
    axes.grid(True, alpha=0.3)
