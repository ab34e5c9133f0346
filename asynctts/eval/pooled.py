"""Reports pooled over runs that differ only in their request seed (`asynctts eval --seeds`).

Rules:
- Pooled runs have one configuration but for their request seed: the same jobs, problems
  (data and selection), sampling, system prompt and endpoints, and each seed once. Anything
  else is refused, naming the runs and every field that differs.
- Per line and n, a problem's value is the share of the seed runs holding its result that got
  it right. The accuracy is the mean of the values over the problems: the mean of the seeds'
  accuracies when every seed run did every problem. Its 95% interval is the seeded percentile
  bootstrap over problems of those values (asynctts/eval/bootstrap.py, `mean_interval`), the
  problems in id order: lines over the same problems resample the same problems (paired).
- `correct`, `done` and the reasons count (seed, problem) results, and each point lists every
  seed run's correct, done and accuracy. Per level and subject, likewise at the line's largest n.
- Spend and cost per problem are the mean over the seed runs of each run's means (a run with
  no result yet is left out); totals (tokens, requests, errors, lost branches, wall time) sum.
- A job's `planned` and `done` count results over the seed runs (problems x seeds planned);
  `seeds` gives each seed run's done and planned per job and whether it is finished: a seed
  run that is unfinished, or not started (a journal without results), is reported, never
  left out.
- compute_optimal's decisions (bins, early exits, choices) are those of every seed run's
  results together, except the batch budget's spend, which is per seed run (the mean).
- The pooled report keeps a single run's keys (asynctts/eval/report.py) where they mean the
  same; `seeds` replaces `seed`.
- A seeds directory (what `asynctts eval --seeds S1 S2 ... --out DIR` makes) holds one
  ordinary run directory per request seed, DIR/seed-S, and no journal of its own; its report
  pools every seed run in it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from asynctts.errors import ConfigError
from asynctts.eval.bootstrap import mean_interval
from asynctts.eval.equal_spend import equal_spend_section
from asynctts.eval.report import (
    RunData,
    decisions_of,
    format_report,
    load_run,
    save_report,
    summarize,
)
from asynctts.eval.runner import JOURNAL_NAME

__all__ = [
    "is_seeds_dir",
    "pool_runs",
    "seed_run_dir",
    "seed_run_dirs",
    "write_pooled_report",
]

_SEED_DIR = re.compile(r"seed-(?P<seed>\d+)")
_ABSENT = object()
_REASONS = ("no_answer", "timeout", "error")


def seed_run_dir(directory: str | Path, seed: int) -> Path:
    """The run directory of request seed `seed` in a seeds directory."""
    return Path(directory) / f"seed-{seed}"


def seed_run_dirs(directory: str | Path) -> list[Path]:
    """The seed run directories in `directory` (those holding a journal), by seed."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [
        (int(match["seed"]), path)
        for path in root.iterdir()
        if (match := _SEED_DIR.fullmatch(path.name)) and (path / JOURNAL_NAME).is_file()
    ]
    return [path for _, path in sorted(found)]


def is_seeds_dir(directory: str | Path) -> bool:
    """Whether `directory` is a seeds directory: seed runs in it and no journal of its own."""
    return not (Path(directory) / JOURNAL_NAME).exists() and bool(seed_run_dirs(directory))


def write_pooled_report(directory: str | Path, *, plot: bool = True) -> tuple[dict[str, Any], str]:
    """Pool every seed run of the seeds directory `directory` and write report.json,
    report.txt and accuracy.png into it.

    Returns:
        The pooled summary and its text report.

    Raises:
        ConfigError: no seed run there, a corrupt journal, or runs that cannot be pooled.
    """
    root = Path(directory)
    run_dirs = seed_run_dirs(root)
    if not run_dirs:
        raise ConfigError(f"{root}: no seed runs there (directories seed-S with a journal)")
    summary = pool_runs([load_run(path) for path in run_dirs], run_dir=root)
    text = format_report(summary)
    seeds = ", ".join(str(s["seed"]) for s in summary["seeds"])
    save_report(
        root,
        summary,
        text,
        plot=plot,
        title=f"MATH-500: accuracy vs. test-time compute, pooled over request seeds {seeds}",
    )
    return summary, text


def pool_runs(runs: Sequence[RunData], *, run_dir: str | Path) -> dict[str, Any]:
    """The report pooled over `runs` as a JSON-ready dict (see the module rules).

    Args:
        runs: parsed journals of one configuration, each of its own request seed.
        run_dir: where the pooled report lives (its `run_dir`).

    Raises:
        ConfigError: no run, a run without a configuration, a seed run twice, or runs whose
            configurations differ other than by seed (naming the runs and the fields).
    """
    ordered = _check_poolable(runs)
    summaries = [summarize(run) for run in ordered]
    seeds = [int(run.config["identity"]["seed"]) for run in ordered]
    jobs = {job["key"]: job for job in ordered[0].config["identity"]["jobs"]}
    first = summaries[0]
    values: dict[tuple[str, int], dict[str, float]] = {}  # (line, n) -> problem -> value
    lines = [
        _pooled_line(jobs, ordered, seeds, [s["lines"][i] for s in summaries], values)
        for i in range(len(first["lines"]))
    ]
    versions: list[dict[str, Any] | None] = []
    for summary in summaries:
        versions += [v for v in summary["versions"] if v not in versions]
    return {
        "run_dir": str(run_dir),
        "planned_problems": first["planned_problems"],
        "data": first["data"],
        "sampling": first["sampling"],
        "endpoints": first["endpoints"],
        "seeds": [
            {
                "seed": seed,
                "run_dir": summary["run_dir"],
                "planned": summary["planned_problems"],
                "done": {job["key"]: job["done"] for job in summary["jobs"]},
                "finished": all(job["done"] >= job["planned"] for job in summary["jobs"]),
                "wall_s": summary["wall_s"],
                "versions": summary["versions"],
                "torn_last_line": summary["torn_last_line"],
            }
            for seed, summary in zip(seeds, summaries, strict=True)
        ],
        "torn_last_line": any(s["torn_last_line"] for s in summaries),
        "versions": versions,
        "wall_s": math.fsum(s["wall_s"] for s in summaries),
        "bootstrap": first["bootstrap"],
        "calibration_table": next(
            (s["calibration_table"] for s in summaries if s["calibration_table"] is not None),
            None,
        ),
        "oracle_skipped": first.get("oracle_skipped"),
        "jobs": [
            _pooled_job(jobs[job["key"]], ordered, seeds, [s["jobs"][i] for s in summaries])
            for i, job in enumerate(first["jobs"])
        ],
        "lines": lines,
        "equal_spend": equal_spend_section(lines, values),
    }


def _check_poolable(runs: Sequence[RunData]) -> list[RunData]:
    """`runs` by seed, once checked (see `pool_runs`)."""
    if not runs:
        raise ConfigError("no run to pool")
    by_seed: dict[int, RunData] = {}
    for run in runs:
        identity = run.config.get("identity", {})
        if "seed" not in identity:
            raise ConfigError(f"{run.run_dir}: its journal holds no configuration, nothing to pool")
        seed = int(identity["seed"])
        if seed in by_seed:
            raise ConfigError(
                f"{by_seed[seed].run_dir} and {run.run_dir} both ran request seed {seed}:"
                " pool each seed once"
            )
        by_seed[seed] = run
    ordered = [by_seed[seed] for seed in sorted(by_seed)]
    base = ordered[0]
    for run in ordered[1:]:
        changed = _differences(_but_seed(base), _but_seed(run))
        if changed:
            raise ConfigError(
                f"cannot pool {base.run_dir} and {run.run_dir}: their configurations differ"
                " other than by the request seed:\n  "
                + "\n  ".join(changed)
                + "\npool only the seed runs of one configuration (`asynctts eval --seeds`)"
            )
    return ordered


def _but_seed(run: RunData) -> dict[str, Any]:
    return {k: v for k, v in run.config["identity"].items() if k != "seed"}


def _differences(a: object, b: object, name: str = "") -> list[str]:
    """Dotted names of the fields where `a` and `b` differ, with both values."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [
            line
            for key in sorted(set(a) | set(b), key=str)
            for line in _differences(
                a.get(key, _ABSENT), b.get(key, _ABSENT), f"{name}.{key}" if name else str(key)
            )
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            line
            for index, (x, y) in enumerate(zip(a, b, strict=True))
            for line in _differences(x, y, f"{name}[{index}]")
        ]
    return [] if a == b else [f"{name}: {_show(a)} vs {_show(b)}"]


def _show(value: object) -> str:
    if value is _ABSENT:
        return "absent"
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _results(runs: Sequence[RunData], key: str) -> list[list[dict[str, Any]]]:
    """Each run's results of job `key`, in problem id order."""
    return [[r for (k, _), r in sorted(run.results.items()) if k == key] for run in runs]


def _rights(
    per_run: Sequence[Sequence[Mapping[str, Any]]], selection: str, index: int
) -> dict[str, list[bool]]:
    """Per problem id (in id order): whether each seed run holding its result got it right."""
    rights: dict[str, list[bool]] = defaultdict(list)
    for results in per_run:
        for result in results:
            rights[str(result["problem_id"])].append(
                bool(result["grades"][selection][index]["correct"])
            )
    return dict(sorted(rights.items()))


def _value(rights: Sequence[bool]) -> float:
    return sum(rights) / len(rights)


def _pooled_line(
    jobs: Mapping[str, Mapping[str, Any]],
    runs: Sequence[RunData],
    seeds: Sequence[int],
    lines: Sequence[Mapping[str, Any]],
    values: dict[tuple[str, int], dict[str, float]],
) -> dict[str, Any]:
    """One line pooled from its seed runs' lines (see the module rules); its per-problem
    values at each n go into `values`."""
    line = lines[0]
    selection = line["selection"]
    points = []
    at_largest: dict[str, list[bool]] = {}
    for at, point in enumerate(line["points"]):
        seeded = [seed_line["points"][at] for seed_line in lines]
        job = jobs[point["job"]]
        per_run = _results(runs, point["job"])
        rights = _rights(per_run, selection, list(job["points"]).index(point["n"]))
        if point["n"] == line["largest_n"]:
            at_largest = rights
        values[(line["label"], point["n"])] = {pid: _value(r) for pid, r in rights.items()}
        shares = list(values[(line["label"], point["n"])].values())
        interval = None
        if shares:
            bounds = mean_interval(shares)
            interval = [bounds.low, bounds.high]
        points.append(
            {
                "n": point["n"],
                "job": point["job"],
                **{
                    field: sum(p[field] for p in seeded) for field in ("correct", "done", *_REASONS)
                },
                "problems": len(shares),
                "accuracy": _mean(shares),
                "interval": interval,
                "per_seed": [
                    {
                        "seed": seed,
                        "correct": p["correct"],
                        "done": p["done"],
                        "accuracy": p["accuracy"],
                    }
                    for seed, p in zip(seeds, seeded, strict=True)
                ],
                "spend": {
                    field: _mean(p["spend"][field] for p in seeded) for field in point["spend"]
                },
            }
        )
    largest = next(p for p in line["points"] if p["n"] == line["largest_n"])
    one_result = {
        str(r["problem_id"]): r for results in _results(runs, largest["job"]) for r in results
    }
    return {
        "label": line["label"],
        "strategy": line["strategy"],
        "selection": selection,
        "primary": line["primary"],
        "points": points,
        "largest_n": line["largest_n"],
        "by_level": _by(at_largest, one_result, "level"),
        "by_subject": _by(at_largest, one_result, "subject"),
    }


def _by(
    rights: Mapping[str, Sequence[bool]], results: Mapping[str, Mapping[str, Any]], field: str
) -> dict[str, dict[str, Any]]:
    """Per value of `field` (level or subject): correct and done results, and the mean of its
    problems' values."""
    groups: dict[str, list[Sequence[bool]]] = defaultdict(list)
    for pid, problem_rights in rights.items():
        groups[str(results[pid].get(field))].append(problem_rights)
    return {
        key: {
            "correct": sum(sum(r) for r in groups[key]),
            "done": sum(len(r) for r in groups[key]),
            "accuracy": _mean(_value(r) for r in groups[key]),
        }
        for key in sorted(groups)
    }


def _pooled_job(
    job: Mapping[str, Any],
    runs: Sequence[RunData],
    seeds: Sequence[int],
    seeded: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """One job pooled from its seed runs' jobs (see the module rules)."""
    first = seeded[0]
    ran = [s for s in seeded if s["done"]]
    pooled: dict[str, Any] = {
        "key": first["key"],
        "strategy": first["strategy"],
        "n": first["n"],
        "settings": first["settings"],
        "planned": sum(s["planned"] for s in seeded),
        "done": sum(s["done"] for s in seeded),
        "errors": sum(s["errors"] for s in seeded),
        "lost_branches": sum(s["lost_branches"] for s in seeded),
        "wall_s": math.fsum(s["wall_s"] for s in seeded),
        "total": {f: math.fsum(s["total"][f] for s in seeded) for f in first["total"]},
        "per_problem": {f: _mean(s["per_problem"][f] for s in ran) for f in first["per_problem"]},
        "per_seed": [
            {
                "seed": seed,
                "planned": s["planned"],
                "done": s["done"],
                "errors": s["errors"],
                "wall_s": s["wall_s"],
            }
            for seed, s in zip(seeds, seeded, strict=True)
        ],
    }
    if "decisions" in first:
        per_run = _results(runs, job["key"])
        decisions = decisions_of(job, [r for results in per_run for r in results])
        if "budget_tokens" in decisions:  # the budget is each seed run's: its spend per run
            spent = [s["decisions"]["spent"] for s in ran]
            decisions["spent"] = _mean(spent) or 0.0
            for group in decisions["by_bin"].values():
                group["spent"] /= len(ran)
        pooled["decisions"] = decisions
    return pooled
