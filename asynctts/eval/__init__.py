"""Evaluation on MATH-500 (or any JSONL of problem/answer): what `asynctts eval` and
`asynctts report` are made of.

- `data`: load the data set (MATH-500 packaged with asynctts, the hub's, or a local JSONL)
  and select problems.
- `plan`: which runs an evaluation makes (the best-of-N family once at the largest N, tree
  searches once per N), checked before any request; the run's identity.
- `grading`: predicted vs reference answer with math-verify in worker processes.
- `journal`: the write-ahead journal that makes runs resumable.
- `runner`: runs a plan through `solve_many`, grading and journaling each problem.
- `report`: accuracy curves, per level and subject, costs, wall time; text, JSON and plot.
- `pooled`: the report pooled over runs that differ only in their request seed.
"""

from asynctts.eval.data import DataSet, Problem, load_dataset, load_problems, select
from asynctts.eval.grading import Grade, grade_answers, grade_solution
from asynctts.eval.journal import Journal, read_journal
from asynctts.eval.plan import EvalPlan, Job, Line, StrategySettings, plan_jobs
from asynctts.eval.pooled import pool_runs, write_pooled_report
from asynctts.eval.report import (
    format_comparison,
    format_report,
    load_run,
    plot_accuracy,
    summarize,
    write_report,
)
from asynctts.eval.runner import JobOutcome, RunOptions, run_eval

__all__ = [
    "DataSet",
    "EvalPlan",
    "Grade",
    "Job",
    "JobOutcome",
    "Journal",
    "Line",
    "Problem",
    "RunOptions",
    "StrategySettings",
    "format_comparison",
    "format_report",
    "grade_answers",
    "grade_solution",
    "load_dataset",
    "load_problems",
    "load_run",
    "plan_jobs",
    "plot_accuracy",
    "pool_runs",
    "read_journal",
    "run_eval",
    "select",
    "summarize",
    "write_pooled_report",
    "write_report",
]
