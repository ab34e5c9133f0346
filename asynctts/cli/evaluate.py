"""`asynctts eval`: strategies at budgets over a data set, into a resumable run directory.

Rules:
- Bad input (data, strategies, budgets, endpoints flags, a calibration table that cannot be
  read or was made for other endpoints, a journal of another configuration) is reported
  before any request; nothing is written either (a journal is read when resuming).
- `--calibration TABLE` goes with `--strategy compute_optimal` and nothing else; the table's
  absolute path is recorded in the journal's info (its content's sha256 is in the identity).
  So does `--budget-tokens B` (in the identity too); it must cover the probes of the problems.
- `--seeds S1 S2 ...` makes RUN_DIR a seeds directory (asynctts/eval/pooled.py): one ordinary
  run per request seed in RUN_DIR/seed-S, all over the problems `--seed` selects, one after
  another, then the report pooled over every seed run there. Every seed run's journal is
  opened before the first request, so its checks (resume or not) hold for every seed up
  front, and a seed run not started yet already has its journal: the pooled report names it.
  Without `--seeds` nothing changes (same files, same journal identity). A single run's
  directory and a seeds directory are never mixed up: each refuses the other's command.
- The report goes to stdout, the progress bar to stderr, structured logs to RUN_DIR/eval.log.
- No secrets on the command line: API keys come from the environment variable named by
  `--api-key-env` / `--prm-api-key-env` (never logged or journaled).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from asynctts.api import check_metrics
from asynctts.cli.arguments import (
    add_endpoint_arguments,
    add_sampling_arguments,
    add_search_arguments,
    add_stepwise_arguments,
    endpoints_of,
    non_negative_int,
    port_number,
    positive_int,
    sampling_of,
    strategy_settings_of,
    system_prompt_of,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.eval.data import Fold, load_dataset, select
from asynctts.eval.plan import NAMES, EvalPlan, Job, plan_jobs
from asynctts.eval.pooled import seed_run_dir, seed_run_dirs, write_pooled_report
from asynctts.eval.report import REPORT_PLOT, REPORT_TEXT, write_report
from asynctts.eval.runner import (
    JOURNAL_NAME,
    LOG_NAME,
    TABLE_INFO,
    JobOutcome,
    RunOptions,
    open_journal,
    run_eval,
)
from asynctts.logs import configure_logging

__all__ = [
    "EVAL_DESCRIPTION",
    "LogFile",
    "Prepared",
    "add_data_arguments",
    "add_eval_arguments",
    "add_how_arguments",
    "add_run_dir_arguments",
    "eval_async",
    "plan_of",
    "prepare_eval",
    "run_logged",
    "run_options_of",
    "seed_runs",
    "write_outcomes",
]

EVAL_DESCRIPTION = (
    "Run strategies at budgets N over MATH-500 (or a JSONL file), grade every answer,"
    " journal every result, then write report.txt, report.json and accuracy.png."
    " The best-of-N family (majority, best_of_n, weighted_best_of_n) runs once at"
    " the largest N and reports every smaller n from the same samples. compute_optimal"
    " chooses a strategy per problem by the table of `asynctts calibrate` (--calibration);"
    " with the best-of-N family in the run, compute_optimal/oracle also chooses by the"
    " bins of each problem's true pass@1 (the family's share of right samples)."
    " The report gives each accuracy a 95% bootstrap interval and its spend per problem;"
    " with --seeds, one run per request seed and a report pooled over them."
)


def add_eval_arguments(run: argparse.ArgumentParser) -> None:
    """The flags of `asynctts eval` (examples/batch_math500.py adds its own to these)."""
    what = run.add_argument_group("what to run")
    what.add_argument(
        "--strategy",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME[@N,...]",
        help=f"one or more of {', '.join(NAMES)} (or repeat the flag); NAME@4,8,16 gives"
        " the strategy its own budgets",
    )
    what.add_argument(
        "--n",
        nargs="+",
        type=positive_int,
        metavar="N",
        help="budgets of the strategies given without their own, e.g. 1 2 4 8 16",
    )
    what.add_argument(
        "--calibration",
        type=Path,
        metavar="TABLE",
        help="the calibration.json `asynctts calibrate` wrote for these endpoints and system"
        " prompt: the table compute_optimal chooses by (only with --strategy compute_optimal)",
    )
    what.add_argument(
        "--budget-tokens",
        type=positive_int,
        metavar="B",
        help="one budget of policy generated + PRM prompt tokens that each compute_optimal job"
        " spends over all its problems: probe all, close the settled, then give the rest to"
        " the problems the table predicts gain most per token (only with compute_optimal)",
    )
    add_search_arguments(what)
    add_stepwise_arguments(what)
    add_run_dir_arguments(what)
    data = run.add_argument_group("data")
    add_data_arguments(data)
    data.add_argument(
        "--seeds",
        nargs="+",
        type=non_negative_int,
        metavar="S",
        help="two or more request seeds: one ordinary, resumable run per seed in"
        " RUN_DIR/seed-S, all over the same problems (those --seed selects), one after"
        " another, then RUN_DIR/report.txt, report.json and accuracy.png pooled over every"
        " seed run in RUN_DIR (default: one run in RUN_DIR, its requests seeded by --seed)",
    )
    add_sampling_arguments(run.add_argument_group("sampling"))
    add_endpoint_arguments(run)
    add_how_arguments(run.add_argument_group("how"))


def add_run_dir_arguments(group: argparse._ArgumentGroup) -> None:
    """--out and the flags of resuming the run there."""
    group.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run directory")
    group.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    group.add_argument(
        "--retry-errors", action="store_true", help="with --resume: redo problems that failed"
    )
    group.add_argument(
        "--allow-version-change",
        action="store_true",
        help="with --resume: continue a run written with other asynctts or math-verify versions"
        " (refused otherwise; the change is journaled)",
    )


def add_data_arguments(data: argparse._ArgumentGroup) -> None:
    """Where the problems come from and which of them run (`select_problems`)."""
    data.add_argument(
        "--data",
        metavar="SOURCE",
        help="where the problems come from: 'hub' for HuggingFaceH4/MATH-500 (test split) from"
        " the Hugging Face hub, or a JSONL file with 'problem' and 'answer' per line"
        " (default: the copy of MATH-500 shipped with asynctts, read with no network)",
    )
    data.add_argument(
        "--limit", type=positive_int, help="first K problems, after filtering (default: all)"
    )
    data.add_argument(
        "--levels", nargs="+", type=int, metavar="L", help="e.g. 1 2 (default: all levels)"
    )
    data.add_argument(
        "--subjects",
        nargs="+",
        metavar="S",
        help='e.g. Algebra "Number Theory" (default: all subjects)',
    )
    data.add_argument(
        "--fold",
        metavar="I/K",
        help="only part I of a K-way split of the problems by a hash of their id and --seed,"
        " after --levels and --subjects and before --limit: `calibrate --fold 1/2` and"
        " `eval --fold 2/2` with the same --seed share no problem (default: every problem)",
    )
    data.add_argument("--shuffle", action="store_true", help="shuffle (with --seed) first")
    data.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the selection (--shuffle, --fold: the same seed, the same problems) and"
        " the requests' sampling; with `eval --seeds`, the selection only",
    )


def add_how_arguments(how: argparse._ArgumentGroup) -> None:
    """Concurrency, grading workers, the progress bar and the log level of a run."""
    how.add_argument(
        "--max-problems-in-flight",
        type=positive_int,
        default=64,
        help="problems solved at once",
    )
    how.add_argument(
        "--grading-workers", type=positive_int, default=2, help="processes grading answers"
    )
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics (requests, retries, failures, tokens, in flight, latency,"
        " problems) at http://HOST:PORT/metrics while the run goes on; needs"
        " `pip install 'asynctts[metrics]'` (default: none)",
    )
    how.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address --metrics-port listens on (0.0.0.0: every interface)",
    )
    how.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="of the structured logs in RUN_DIR/eval.log",
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    plan: EvalPlan
    policy: Endpoint
    prm: Endpoint | None
    run_dir: Path
    options: RunOptions
    info: Mapping[str, Any] = field(default_factory=dict)  # recorded in the journal


def prepare_eval(args: argparse.Namespace) -> Prepared:
    """Everything `eval` needs, checked; nothing is sent and nothing is written.

    Raises:
        ConfigError: any bad input, named.
    """
    _check_run_dir(args.out, args.seeds)
    policy, prm = endpoints_of(args)
    jobs = plan_jobs(
        args.strategy,
        args.n,
        settings=strategy_settings_of(args),
        calibration=args.calibration,
        budget_tokens=args.budget_tokens,
    )
    options = run_options_of(args)
    plan = plan_of(args, jobs)
    plan.check(has_prm=prm is not None)
    info: dict[str, Any] = {}
    if args.calibration is not None:
        try:
            plan.check_endpoints(policy, prm)
        except ConfigError as err:
            raise ConfigError(f"--calibration {args.calibration}: {err}") from err
        info[TABLE_INFO] = str(args.calibration.resolve())
    return Prepared(plan, policy, prm, args.out, options, info)


def _check_run_dir(run_dir: Path, seeds: Sequence[int] | None) -> None:
    """`--seeds` are distinct, two or more, and name a directory that holds no single run;
    without them, the directory holds no seed runs.

    Raises:
        ConfigError: naming the seeds or the directory.
    """
    if seeds is None:
        held = seed_run_dirs(run_dir)
        if held:
            raise ConfigError(
                f"{run_dir} holds runs of request seeds ({', '.join(p.name for p in held)}):"
                " continue them with --seeds, or choose another output directory"
            )
        return
    given = " ".join(map(str, seeds))
    if len(seeds) < 2:
        raise ConfigError(f"--seeds {given}: give two or more seeds (one run's seed is --seed)")
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise ConfigError(f"--seeds {given}: seed {twice[0]} is given twice")
    if (run_dir / JOURNAL_NAME).exists():
        raise ConfigError(
            f"{run_dir} holds a single run ({JOURNAL_NAME}): --seeds needs a directory of its"
            " own, or drop --seeds to continue that run"
        )


def seed_runs(prepared: Prepared, seeds: Sequence[int]) -> list[Prepared]:
    """`prepared` once per request seed, each in its own run directory RUN_DIR/seed-S (the
    problems stay those `prepared` selected)."""
    return [
        dataclasses.replace(
            prepared,
            plan=dataclasses.replace(prepared.plan, seed=seed),
            run_dir=seed_run_dir(prepared.run_dir, seed),
        )
        for seed in seeds
    ]


def _open_journals(runs: Sequence[Prepared]) -> None:
    """Open and close every seed run's journal before the first request: the existing ones
    first, so that one that does not fit is refused before anything is created; then the
    missing ones are created (see the module rules).

    Raises:
        ConfigError: a journal that does not fit (`open_journal`).
    """
    for run in sorted(runs, key=lambda r: not (r.run_dir / JOURNAL_NAME).exists()):
        with open_journal(
            run.plan,
            policy=run.policy,
            prm=run.prm,
            run_dir=run.run_dir,
            options=run.options,
            info=run.info,
        ):
            pass


def run_options_of(args: argparse.Namespace) -> RunOptions:
    """The `RunOptions` of `add_run_dir_arguments`' and `add_how_arguments`' flags.

    Raises:
        ConfigError: a resume-only flag without --resume; a --metrics-port that cannot be
            served (prometheus_client missing, the port in use).
    """
    for flag, given in (
        ("--retry-errors", args.retry_errors),
        ("--allow-version-change", args.allow_version_change),
    ):
        if given and not args.resume:
            raise ConfigError(f"{flag} only applies with --resume")
    if args.metrics_port is not None:
        check_metrics(args.metrics_port, args.metrics_host)
    return RunOptions(
        resume=args.resume,
        retry_errors=args.retry_errors,
        allow_version_change=args.allow_version_change,
        max_problems_in_flight=args.max_problems_in_flight,
        progress=not args.no_progress,
        grading_workers=args.grading_workers,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def plan_of(args: argparse.Namespace, jobs: Sequence[Job]) -> EvalPlan:
    """The plan of `jobs` over the problems `add_data_arguments`' flags select, with the
    sampling flags' settings (not yet checked against the endpoints).

    Raises:
        ConfigError: a bad data file, fold or selection.
    """
    fold = None if args.fold is None else Fold.parse(args.fold)
    dataset = load_dataset(args.data)
    selection = {
        "limit": args.limit,
        "levels": sorted(args.levels) if args.levels else None,
        "subjects": sorted(args.subjects) if args.subjects else None,
        "shuffle": args.shuffle,
        "shuffle_seed": args.seed if args.shuffle else None,
    }
    if fold is not None:  # absent without a fold: earlier journals keep their identity
        selection["fold"] = str(fold)
        selection["fold_seed"] = args.seed
    problems = select(
        dataset.problems,
        limit=args.limit,
        levels=args.levels,
        subjects=args.subjects,
        shuffle=args.shuffle,
        seed=args.seed,
        fold=fold,
    )
    return EvalPlan(
        data=dataset,
        problems=tuple(problems),
        selection=selection,
        jobs=tuple(jobs),
        sampling=sampling_of(args),
        seed=args.seed,
        system_prompt=system_prompt_of(args),
    )


class LogFile:
    """The run's log file as structlog's stream. Writes after `close()` are dropped: loggers
    cache their stream on first use, and the run (not the process) owns this file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("a", encoding="utf-8")

    def write(self, text: str) -> int:
        return self._file.write(text) if self._file is not None else 0

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


async def run_logged(prepared: Prepared, log_level: str) -> list[JobOutcome]:
    """`run_eval` of a prepared run, its structured logs in RUN_DIR/eval.log."""
    log_file = LogFile(prepared.run_dir / LOG_NAME)
    configure_logging(level=log_level, stream=log_file, json=True)  # type: ignore[arg-type]
    try:
        return await run_eval(
            prepared.plan,
            policy=prepared.policy,
            prm=prepared.prm,
            run_dir=prepared.run_dir,
            options=prepared.options,
            info=prepared.info,
        )  # no argv in the journal: a URL on the command line may carry credentials
    finally:
        log_file.close()


def write_outcomes(outcomes: Sequence[JobOutcome], out: TextIO, *, prefix: str = "") -> None:
    """One line per job, after `prefix`: solved now, from the journal, re-graded, wall time."""
    for outcome in outcomes:
        out.write(
            f"{prefix}{outcome.key}: {outcome.solved} solved now, {outcome.resumed} from the"
            f" journal ({outcome.regraded} re-graded), {outcome.wall_s:.1f} s\n"
        )


async def eval_async(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`asynctts eval` with parsed arguments (examples fill in endpoints first)."""
    prepared = prepare_eval(args)
    stdout = out or sys.stdout
    if args.seeds is not None:
        return await _eval_seeds(prepared, args.seeds, args.log_level, stdout)
    outcomes = await run_logged(prepared, args.log_level)
    _, text = write_report(prepared.run_dir)
    stdout.write(text)
    write_outcomes(outcomes, stdout)
    stdout.write(
        f"report: {prepared.run_dir / REPORT_TEXT}, plot: {prepared.run_dir / REPORT_PLOT}\n"
    )
    return 0


async def _eval_seeds(
    prepared: Prepared, seeds: Sequence[int], log_level: str, stdout: TextIO
) -> int:
    """One run per request seed, each reported in its directory, then the pooled report."""
    runs = seed_runs(prepared, seeds)
    _open_journals(runs)
    for seed, run in zip(seeds, runs, strict=True):
        outcomes = await run_logged(run, log_level)
        write_report(run.run_dir)
        write_outcomes(outcomes, stdout, prefix=f"seed {seed}: ")
    _, text = write_pooled_report(prepared.run_dir)
    stdout.write(text)
    stdout.write(
        f"report: {prepared.run_dir / REPORT_TEXT}, plot: {prepared.run_dir / REPORT_PLOT},"
        f" seed runs: {', '.join(str(run.run_dir) for run in runs)}\n"
    )
    return 0
