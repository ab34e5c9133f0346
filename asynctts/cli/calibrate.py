"""`asynctts calibrate`: the calibration table of compute-optimal scaling, from every strategy
at every budget over a calibration set, into a resumable run directory.

Rules:
- It runs as `asynctts eval` runs (same journal, resume, progress bar and RUN_DIR/eval.log;
  asynctts/eval/calibration_run.py says what it runs and how the table is read from the
  journal), then writes calibration.json, calibration.txt, calibration.png and eval's report.
- Bad input (the table's settings, data, budgets, endpoints, a journal of another
  configuration) is reported before any request; nothing is written either.
- The table's settings (--probe, --bins, --folds, --settle, --confidence) decide nothing the
  journal holds: a finished run resumed with others rebuilds the table without a request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from asynctts.calibration import (
    CONFIDENCE,
    PROBE_RANGE,
    SETTLE_RULE,
    build_table,
    probe_sizes,
    table_identity,
)
from asynctts.cli.arguments import (
    add_endpoint_arguments,
    add_sampling_arguments,
    add_search_arguments,
    endpoints_of,
    positive_int,
    strategy_settings_of,
)
from asynctts.cli.evaluate import (
    Prepared,
    add_data_arguments,
    add_how_arguments,
    add_run_dir_arguments,
    plan_of,
    run_logged,
    run_options_of,
    write_outcomes,
)
from asynctts.errors import ConfigError
from asynctts.eval.calibration_run import (
    CALIBRATION_JSON,
    CALIBRATION_PLOT,
    CALIBRATION_TEXT,
    SPEND_RULE,
    Refusal,
    plan_grid,
    records_of,
    write_calibration,
)
from asynctts.eval.report import REPORT_TEXT, RunData, load_run, write_report
from asynctts.search.difficulty import SETTLE_RULES

__all__ = [
    "CALIBRATE_DESCRIPTION",
    "add_calibrate_arguments",
    "calibrate_async",
    "probes_of_flags",
]

CALIBRATE_DESCRIPTION = (
    "Run every strategy at budgets N over a calibration set (the best-of-N family once at the"
    " largest N; beam search and DVTS at every N with width 4 and round(sqrt(N)); particle"
    " filtering at every N), journal"
    " every result, then write the compute-optimal table: difficulty bin x budget -> the"
    " strategy that did best there, chosen by cross-validation within each bin"
    " (calibration.json, what strategy compute_optimal chooses by), its summary"
    " (calibration.txt) and plot (calibration.png), and the run's eval report."
)
DEFAULT_BUDGETS = (4, 16, 64)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `asynctts calibrate`."""
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--n",
        nargs="+",
        type=positive_int,
        default=list(DEFAULT_BUDGETS),
        metavar="N",
        help="budgets (generations per problem) the table covers",
    )
    # a table names a strategy by its name and width alone: only the aggregate and the depth
    # cap, which the table records, may differ from the strategies' defaults
    add_search_arguments(what, settings=("aggregate", "max_depth"))
    add_run_dir_arguments(what)
    table = parser.add_argument_group("the table (changing these on --resume sends no request)")
    low, high = PROBE_RANGE
    table.add_argument(
        "--probe",
        nargs="+",
        type=positive_int,
        metavar="K",
        help="samples that predict a problem's difficulty: one K for every budget, or one per"
        f" --n in its order, each at most its budget (default: a quarter of each budget,"
        f" {low} to {high})",
    )
    table.add_argument(
        "--bins",
        type=positive_int,
        default=5,
        help="difficulty bins: quantiles of the probe's mean PRM value over the problems",
    )
    table.add_argument(
        "--folds",
        type=int,
        default=5,
        help="cross-validation folds within each bin (>= 2)",
    )
    table.add_argument(
        "--settle",
        choices=SETTLE_RULES,
        default=SETTLE_RULE,
        help="early exit rule: the probe's answer counts, or their summed PRM values",
    )
    table.add_argument(
        "--confidence",
        type=float,
        default=CONFIDENCE,
        help="early exit when P(the leading answer beats the second) reaches this",
    )
    add_data_arguments(parser.add_argument_group("data"))
    add_sampling_arguments(parser.add_argument_group("sampling"))
    add_endpoint_arguments(parser)
    add_how_arguments(parser.add_argument_group("how"))


@dataclass(frozen=True, slots=True)
class PreparedCalibration:
    run: Prepared
    identity: dict[str, str]
    refused: tuple[Refusal, ...]
    probes: dict[int, int]  # budget -> probe size


def prepare_calibration(args: argparse.Namespace) -> PreparedCalibration:
    """Everything `calibrate` needs, checked; nothing is sent and nothing is written.

    Raises:
        ConfigError: any bad input, named.
    """
    probes = probes_of_flags(args.probe, args.n)
    if args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: need >= 2 (cross-validation within each bin)")
    if not 0.5 < args.confidence < 1.0:
        raise ConfigError(f"--confidence {args.confidence}: need 0.5 < confidence < 1")
    policy, prm = endpoints_of(args)
    if prm is None:
        raise ConfigError(
            "calibrate needs a PRM: give --prm-model (or an endpoints file with 'prm')"
        )
    settings = strategy_settings_of(args)
    grid = plan_grid(args.n, settings)
    options = run_options_of(args)
    plan = plan_of(args, grid.jobs)
    plan.check(has_prm=True)
    if len(plan.problems) < args.bins:
        raise ConfigError(
            f"{len(plan.problems)} problems cannot fill --bins {args.bins}: select more"
            " problems or use fewer bins"
        )
    return PreparedCalibration(
        Prepared(plan, policy, prm, args.out, options),
        table_identity(policy, prm, plan.system_prompt),
        grid.refused,
        probes,
    )


def probes_of_flags(given: Sequence[int] | None, budgets: Sequence[int]) -> dict[int, int]:
    """Budget -> probe size from --probe (none, one, or one per --n in its order).

    Raises:
        ConfigError: a count that fits neither, repeated budgets with one size each, or a
            size `probe_sizes` refuses.
    """
    if given is None or len(given) == 1:
        sizes = probe_sizes(None if given is None else given[0], budgets)
    elif len(given) == len(budgets):
        if len(set(budgets)) != len(budgets):
            raise ConfigError(f"--n {budgets} repeats a budget: give one --probe for all")
        sizes = probe_sizes(dict(zip(budgets, given, strict=True)), budgets)
    else:
        raise ConfigError(
            f"--probe {given}: give one size for every budget, or one per --n {budgets}"
        )
    return sizes


async def calibrate_async(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`asynctts calibrate` with parsed arguments."""
    prepared = prepare_calibration(args)
    run = prepared.run
    stdout = out or sys.stdout
    outcomes = await run_logged(run, args.log_level)
    journal = load_run(run.run_dir)
    records, settings = records_of(
        journal, [p.id for p in run.plan.problems], probes=set(prepared.probes.values())
    )
    try:
        table = build_table(
            records,
            identity=prepared.identity,
            probe=prepared.probes,
            budgets=args.n,
            bins=args.bins,
            folds=args.folds,
            seed=args.seed,
            aggregate=settings.aggregate,
            max_depth=settings.max_depth,
            settle_rule=args.settle,
            confidence=args.confidence,
        )
    except ConfigError as err:
        raise ConfigError(
            f"{err} (every result is journaled: rerun with --resume and other table settings;"
            " no request is repeated)"
        ) from err
    write_report(run.run_dir)
    text = write_calibration(run.run_dir, table, notes=_notes(args, prepared, journal))
    stdout.write(text)
    write_outcomes(outcomes, stdout)
    stdout.write(
        f"table: {run.run_dir / CALIBRATION_JSON}, summary: {run.run_dir / CALIBRATION_TEXT},"
        f" plot: {run.run_dir / CALIBRATION_PLOT}, eval report: {run.run_dir / REPORT_TEXT}\n"
    )
    return 0


def _notes(args: argparse.Namespace, prepared: PreparedCalibration, journal: RunData) -> list[str]:
    """What calibration.txt says below the table: the problems, the spend rule, failures and
    the options left out."""
    plan = prepared.run.plan
    selection = plan.selection
    used = f"problems: {len(plan.problems)} from {plan.data.source}"
    if "fold" in selection:
        fold = selection["fold"]
        used += (
            f", fold {fold} of a split by id with seed {args.seed} (evaluate on the other"
            f" folds: `asynctts eval --fold I/K --seed {args.seed}`)"
        )
    notes = ["", used, f"spend: {SPEND_RULE}"]
    family = plan.jobs[0].key
    failed = sum(journal.results[(family, p.id)].get("error") is not None for p in plan.problems)
    if failed:
        notes.append(f"problems whose family run failed as a whole: {failed} (counted wrong)")
    notes += [f"refused: {refusal}" for refusal in prepared.refused]
    return notes
