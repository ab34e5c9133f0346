"""Reports of evaluation runs, computed from their journals alone.

Rules:
- A report is a pure function of the journal: accuracy per line (strategy and selection
  rule) and budget n, per level and per subject (at each line's largest n), tokens and
  requests per problem, and wall time; JSON-ready, with exact counts beside every rate.
- Accuracy is correct / done: a run that is still going (or was killed) reports what it has,
  and says how many problems are done out of how many were planned. Problems that failed as
  a whole, had no answer or could not be graded count as done and wrong. Beside each accuracy
  is its 95% interval from a seeded bootstrap over the done problems (asynctts/eval/bootstrap.py).
- Spend per problem, for every line and n (means over the done problems): policy generated
  tokens, PRM prompt tokens, their sum, and generations. The best-of-N family runs once at
  its largest n, so at a smaller n its tokens are scaled by n / that n (its samples are drawn
  alike), and majority counts no PRM tokens (it needs no scores); every other job spent what
  its ledgers say. Generations are n, except for compute_optimal: the samples and paths it drew (its
  decision's `samples`; n for a problem that failed as a whole, which has no decision), and
  for revise: its candidates and lost branches, one generation each (it draws at most n:
  what solutions that need no revision leave is not spent; n for a problem that failed as a
  whole with nothing recorded).
- A compute_optimal job also reports its decisions: problems per difficulty bin (1 easiest),
  with their accuracy, spend, samples drawn, early exits and the table's choices (the option
  chosen for the bin, counted also when the answers settled before it ran or finished). With
  a batch token budget it also reports the budget, the tokens spent against it, the branches
  the budget cut, and per bin the allotments ("option@N'", or "probe") and the tokens spent.
- The oracle line ("compute_optimal/oracle", asynctts/eval/plan.py) is a compute_optimal line
  like the predicted one (compared at equal spend, its decisions reported), binned by the
  true pass@1; its decisions name the family job the pass@1 came from and count the problems
  solved with the predicted bins (their family run failed). A compute_optimal run without
  it says why (the journal's info).
- The plot has two panels: accuracy vs n, and accuracy vs mean tokens per problem (lines
  compared at equal spend), each accuracy with its interval.
- When a problem was redone (`retry_errors`) or re-graded (a resume decides grades that timed
  out), its last record counts.
- The report names the asynctts and math-verify versions that wrote the results: those of the
  journal's config line, then each allowed change (`--allow-version-change`), in order.
- Wall time of a job sums its sessions: a killed session counts until its last result.
- A report pooled over seed runs (asynctts/eval/pooled.py) is written by the same functions:
  its header names the seeds, and after the spend table come the seed runs (done per job,
  unfinished ones named) and each line's accuracy per seed.
- Plots use matplotlib's object API on the Agg canvas (no pyplot, no global backend); it is
  imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from asynctts.eval.bootstrap import CONFIDENCE, RESAMPLES, SEED, accuracy_interval
from asynctts.eval.equal_spend import equal_spend_section
from asynctts.eval.journal import last_per_key, read_journal
from asynctts.eval.plan import ORACLE_SKIPPED
from asynctts.eval.runner import JOURNAL_NAME, TABLE_INFO

__all__ = [
    "REPORT_JSON",
    "REPORT_PLOT",
    "REPORT_TEXT",
    "RunData",
    "decisions_of",
    "format_comparison",
    "format_report",
    "load_run",
    "plot_accuracy",
    "save_report",
    "summarize",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
REPORT_PLOT = "accuracy.png"
COMPUTE_OPTIMAL = "compute_optimal"
# Strategies whose every result (candidate or lost branch) is one generation drawn.
ONE_GENERATION_PER_RESULT = frozenset({"revise"})
BUDGET_CUT = "batch budget exhausted"  # the reason of a branch the batch budget cut
SPEND_NOTE = (
    "tokens: policy generated + PRM prompt tokens per problem; the best-of-N family runs once"
    " at its largest n, so at a smaller n its tokens are scaled by n / that n; majority counts"
    " no PRM tokens"
)

_USAGE_FIELDS = (
    "completion_tokens",
    "prompt_tokens",
    "cached_tokens",
    "prm_tokens",
    "requests",
    "retries",
    "failures",
    "wall_s",
)


@dataclass(frozen=True, slots=True)
class RunData:
    """A run directory's journal, parsed: config, events in order, last result per key."""

    run_dir: Path
    config: dict[str, Any]
    events: tuple[dict[str, Any], ...]
    results: dict[tuple[str, str], dict[str, Any]]
    torn: bool


def load_run(run_dir: str | Path) -> RunData:
    """Read `run_dir`'s journal (a torn last line is ignored, never changed).

    Raises:
        ConfigError: no journal, or a corrupt one.
    """
    directory = Path(run_dir)
    contents = read_journal(directory / JOURNAL_NAME)
    if contents.config is None:
        return RunData(directory, {"identity": {}, "info": {}}, (), {}, contents.torn)
    return RunData(
        directory,
        contents.config,
        contents.events,
        last_per_key(contents.events),
        contents.torn,
    )


def _rate(correct: int, done: int) -> float | None:
    return correct / done if done else None


def _tally(results: Iterable[Mapping[str, Any]], selection: str, index: int) -> dict[str, Any]:
    counts = {"correct": 0, "done": 0, "no_answer": 0, "timeout": 0, "error": 0}
    for result in results:
        grade = result["grades"][selection][index]
        counts["done"] += 1
        counts["correct"] += bool(grade["correct"])
        if grade["reason"] is not None:
            counts[grade["reason"]] += 1
    interval = None
    if counts["done"]:
        bounds = accuracy_interval(counts["correct"], counts["done"])
        interval = [bounds.low, bounds.high]
    return {**counts, "accuracy": _rate(counts["correct"], counts["done"]), "interval": interval}


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _usage_mean(results: Sequence[Mapping[str, Any]], field: str) -> float | None:
    return _mean([float(r["usage"].get(field, 0.0)) for r in results])


def _decision(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    decision: Mapping[str, Any] | None = (result.get("solution") or {}).get("decision")
    return decision


def _spend(
    job: Mapping[str, Any], results: Sequence[Mapping[str, Any]], n: int, selection: str
) -> dict[str, float | None]:
    """Mean spend per problem of one line at budget n (see the module rules)."""
    policy = _usage_mean(results, "completion_tokens")
    prm = _usage_mean(results, "prm_tokens")
    if policy is None or prm is None:
        return {"policy_tokens": None, "prm_tokens": None, "tokens": None, "generations": None}
    if not job["all_candidates"]:  # the family: one run at its largest n serves every n
        share = n / job["n"]
        policy *= share
        prm = 0.0 if selection == "majority" else prm * share
    drawn = [_generations_drawn(job["strategy"], r, n) for r in results]
    return {
        "policy_tokens": policy,
        "prm_tokens": prm,
        "tokens": policy + prm,
        "generations": math.fsum(drawn) / len(drawn),
    }


def _generations_drawn(strategy: str, result: Mapping[str, Any], n: int) -> float:
    """Generations one problem drew at budget n (see the module rules)."""
    if strategy == COMPUTE_OPTIMAL and (decision := _decision(result)) is not None:
        return float(decision["samples"])
    drawn = result.get("candidates", 0) + result.get("lost", 0)
    if strategy in ONE_GENERATION_PER_RESULT and drawn:
        return float(drawn)
    return float(n)


def _choices(decisions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How often each option was chosen, the most chosen first (then by label)."""
    counts = Counter(str(d["choice"]) for d in decisions)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _decided(decisions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Problems, samples drawn, early exits and choices of some decisions."""
    exits = sum(bool(d["early_exit"]) for d in decisions)
    return {
        "problems": len(decisions),
        "mean_samples": _mean([float(d["samples"]) for d in decisions]),
        "early_exits": exits,
        "early_exit_share": _rate(exits, len(decisions)),
        "choices": _choices(decisions),
    }


def decisions_of(job: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A compute_optimal job's decisions, overall and per difficulty bin (with the accuracy
    and spend of the bin's problems)."""
    (primary,) = (line for line in job["lines"] if line["primary"])
    selection = primary["selection"]
    decided = [(r, d) for r in results if (d := _decision(r)) is not None]
    bins: dict[int, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
    for result, decision in decided:
        bins[int(decision["bin"])].append((result, decision))
    by_bin: dict[str, dict[str, Any]] = {}
    for level in sorted(bins):
        members = [r for r, _ in bins[level]]
        correct = sum(bool(r["grades"][selection][-1]["correct"]) for r in members)
        policy = _usage_mean(members, "completion_tokens")
        prm = _usage_mean(members, "prm_tokens")
        by_bin[str(level)] = {
            **_decided([d for _, d in bins[level]]),
            "correct": correct,
            "accuracy": _rate(correct, len(members)),
            "policy_tokens": policy,
            "prm_tokens": prm,
            "tokens": None if policy is None or prm is None else policy + prm,
        }
    out = {
        **_decided([d for _, d in decided]),
        "n": int(job["n"]),
        "failed": len(results) - len(decided),
        "by_bin": by_bin,
    }
    if job.get("oracle_from") is not None:
        out["oracle_from"] = job["oracle_from"]
        out["predicted_bins"] = sum(r.get("oracle_pass_at_1") is None for r, _ in decided)
    if job.get("budget_tokens") is None:
        return out
    for level in sorted(bins):
        members = [r for r, _ in bins[level]]
        by_bin[str(level)]["allotted"] = _allotted([d for _, d in bins[level]])
        by_bin[str(level)]["spent"] = math.fsum(_tokens_of(r) for r in members)
    cut = sum(
        BUDGET_CUT in str(lost.get("reason", ""))
        for r in results
        for lost in (r.get("solution") or {}).get("lost", ())
    )
    return {
        **out,
        "budget_tokens": float(job["budget_tokens"]),
        "spent": math.fsum(_tokens_of(r) for r in results),
        "budget_cut": cut,
    }


def _tokens_of(result: Mapping[str, Any]) -> float:
    usage = result["usage"]
    return float(usage.get("completion_tokens", 0.0)) + float(usage.get("prm_tokens", 0.0))


def _allotted(decisions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How often each allotment was given, the most given first (then by label)."""
    counts = Counter(
        "probe" if d["allocated"] == "probe" else f"{d['allocated']}@{d['allocated_n']}"
        for d in decisions
        if "allocated" in d
    )
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _by(
    results: Sequence[Mapping[str, Any]], field: str, selection: str, index: int
) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for result in results:
        groups[str(result.get(field))].append(result)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(groups):
        tally = _tally(groups[key], selection, index)
        out[key] = {k: tally[k] for k in ("correct", "done", "accuracy")}
    return out


def _sessions(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Wall seconds per job, summed over its sessions (see the module rules)."""
    wall: dict[str, float] = defaultdict(float)
    current: list[Any] | None = None  # [job, start t, last t]

    def close(end: float) -> None:
        nonlocal current
        if current is not None:
            wall[current[0]] += max(0.0, end - current[1])
            current = None

    for event in events:
        kind = event.get("type")
        if kind == "session_start":
            if current is not None:
                close(current[2])
            current = [event["job"], event["t"], event["t"]]
        elif current is not None and event.get("job") == current[0]:
            if kind == "session_end":
                close(event["t"])
            elif kind == "result":
                current[2] = event["t"]
    if current is not None:
        close(current[2])
    return dict(wall)


def summarize(run: RunData) -> dict[str, Any]:
    """The report of one run as a JSON-ready dict (see the module rules)."""
    identity = run.config.get("identity", {})
    info = run.config.get("info", {})
    planned = int(identity.get("selection", {}).get("problems", 0))
    walls = _sessions(run.events)
    jobs_out: list[dict[str, Any]] = []
    lines: dict[str, dict[str, Any]] = {}
    values: dict[tuple[str, int], dict[str, float]] = {}  # (line, n) -> problem -> right
    for job in identity.get("jobs", []):
        key = job["key"]
        results = [r for (k, _), r in sorted(run.results.items()) if k == key]
        usage_sums = {
            f: math.fsum(float(r["usage"].get(f, 0.0)) for r in results) for f in _USAGE_FIELDS
        }
        done = len(results)
        job_out: dict[str, Any] = {
            "key": key,
            "strategy": job["strategy"],
            "n": job["n"],
            "settings": job["settings"],
            "planned": planned,
            "done": done,
            "errors": sum(r.get("error") is not None for r in results),
            "lost_branches": sum(int(r.get("lost", 0)) for r in results),
            "wall_s": walls.get(key, 0.0),
            "total": usage_sums,
            "per_problem": {f: (v / done if done else None) for f, v in usage_sums.items()},
        }
        if job["strategy"] == COMPUTE_OPTIMAL:
            job_out["decisions"] = decisions_of(job, results)
        jobs_out.append(job_out)
        points = job["points"]
        for spec in job["lines"]:
            line = lines.setdefault(
                spec["label"],
                {
                    "label": spec["label"],
                    "strategy": job["strategy"] if job["all_candidates"] else spec["label"],
                    "selection": spec["selection"],
                    "primary": spec["primary"],
                    "points": [],
                    "_last": None,
                },
            )
            for index, n in enumerate(points):
                values[(spec["label"], n)] = {
                    str(r["problem_id"]): float(
                        bool(r["grades"][spec["selection"]][index]["correct"])
                    )
                    for r in results
                }
                line["points"].append(
                    {
                        "n": n,
                        "job": key,
                        **_tally(results, spec["selection"], index),
                        "spend": _spend(job, results, n, spec["selection"]),
                    }
                )
                if line["_last"] is None or n >= line["_last"][0]:
                    line["_last"] = (n, results, index)
    lines_out: list[dict[str, Any]] = []
    for line in lines.values():
        n, results, index = line.pop("_last")
        line["points"].sort(key=lambda p: p["n"])
        line["largest_n"] = n
        line["by_level"] = _by(results, "level", line["selection"], index)
        line["by_subject"] = _by(results, "subject", line["selection"], index)
        lines_out.append(line)
    return {
        "run_dir": str(run.run_dir),
        "planned_problems": planned,
        "data": {"source": info.get("data_source"), **identity.get("data", {})},
        "seed": identity.get("seed"),
        "sampling": identity.get("sampling"),
        "endpoints": identity.get("endpoints"),
        "torn_last_line": run.torn,
        "versions": _versions(run),
        "wall_s": math.fsum(walls.values()),
        "bootstrap": {"resamples": RESAMPLES, "confidence": CONFIDENCE, "seed": SEED},
        "calibration_table": info.get(TABLE_INFO),
        "oracle_skipped": info.get(ORACLE_SKIPPED),
        "jobs": jobs_out,
        "lines": lines_out,
        "equal_spend": equal_spend_section(lines_out, values),
    }


def _versions(run: RunData) -> list[dict[str, Any] | None]:
    """The versions of the config line (None: unrecorded), then of each "versions" event."""
    return [
        run.config.get("versions"),
        *(e["versions"] for e in run.events if e.get("type") == "versions"),
    ]


def _show_versions(versions: Mapping[str, Any] | None) -> str:
    if versions is None:
        return "unrecorded"
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_report(summary: Mapping[str, Any]) -> str:
    """A readable text report of `summarize`'s output."""
    endpoints = summary.get("endpoints") or {}
    policy = (endpoints.get("policy") or {}).get("model", "?")
    prm = (endpoints.get("prm") or {}).get("model", "none")
    sha = str(summary["data"].get("sha256") or "")[:12]
    seeds = summary.get("seeds")  # a report pooled over seed runs (asynctts/eval/pooled.py)
    seeded = (
        f"seed {summary['seed']}"
        if seeds is None
        else "pooled over request seeds " + ", ".join(str(s["seed"]) for s in seeds)
    )
    out = [
        f"Run {summary['run_dir']}: {summary['planned_problems']} problems"
        f" (data {summary['data'].get('source')}, sha256 {sha}), {seeded},"
        f" policy {policy}, PRM {prm}",
        "Versions: " + "; then ".join(_show_versions(v) for v in summary["versions"]),
        "",
    ]
    primary = [line for line in summary["lines"] if line["primary"]]
    ns = sorted({p["n"] for line in primary for p in line["points"]})
    rows = []
    for line in primary:
        at = {p["n"]: p for p in line["points"]}
        rows.append(
            [line["label"], line["selection"]]
            + [_percent(at[n]["accuracy"]) if n in at else "" for n in ns]
        )
    out += ["Accuracy (%) by budget n"]
    out += _table(["line", "selection", *(f"n={n}" for n in ns)], rows, left=2)
    levels = sorted({lvl for line in primary for lvl in line["by_level"]}, key=_level_key)
    rows = [
        [line["label"], str(line["largest_n"])]
        + [_percent(line["by_level"].get(lvl, {}).get("accuracy")) for lvl in levels]
        for line in primary
    ]
    out += ["", "Accuracy (%) by level, at each line's largest n"]
    out += _table(["line", "n", *(f"L{lvl}" for lvl in levels)], rows, left=1)
    subjects = sorted({s for line in primary for s in line["by_subject"]})
    rows = [
        [subject]
        + [_percent(line["by_subject"].get(subject, {}).get("accuracy")) for line in primary]
        for subject in subjects
    ]
    out += ["", "Accuracy (%) by subject, at each line's largest n"]
    out += _table(["subject", *(line["label"] for line in primary)], rows)
    rows = []
    for job in summary["jobs"]:
        per = job["per_problem"]
        rows.append(
            [
                job["key"],
                f"{job['done']}/{job['planned']}",
                str(job["errors"]),
                _number(per["completion_tokens"]),
                _number(per["prompt_tokens"]),
                _number(per["prm_tokens"]),
                _number(per["requests"], 1),
                _number(job["total"]["retries"]),
                _number(per["wall_s"], 2),
                _number(job["wall_s"], 1),
            ]
        )
    out += ["", "Cost per problem (means) and wall time"]
    out += _table(
        [
            "job",
            "done",
            "errors",
            "gen tokens",
            "prompt tokens",
            "PRM tokens",
            "requests",
            "retries (all)",
            "solve s",
            "job wall s",
        ],
        rows,
    )
    out += ["", *_spend_table(summary)]
    if summary.get("equal_spend"):
        out += ["", *_equal_spend_table(summary["equal_spend"])]
    if seeds is not None:
        out += ["", *_seeds_table(summary)]
    for job in summary["jobs"]:
        if "decisions" in job:
            out += ["", *_decision_table(job, summary.get("calibration_table"))]
    if summary.get("oracle_skipped"):
        out += ["", f"No compute_optimal/oracle line: {summary['oracle_skipped']}"]
    out += ["", f"Total wall time: {summary['wall_s']:.1f} s"]
    if summary.get("torn_last_line"):
        out += ["(the journal's last line is torn: a run was killed mid-write; resume drops it)"]
    return "\n".join(out) + "\n"


def _interval(interval: Sequence[float] | None) -> str:
    return "-" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _spend_table(summary: Mapping[str, Any]) -> list[str]:
    """Accuracy with its interval and spend per problem, for each primary line and n."""
    bootstrap = summary.get("bootstrap") or {}
    rows = []
    for line in summary["lines"]:
        if not line["primary"]:
            continue
        for point in line["points"]:
            spend = point["spend"]
            rows.append(
                [
                    line["label"],
                    str(point["n"]),
                    _percent(point["accuracy"]),
                    _interval(point["interval"]),
                    _number(spend["policy_tokens"]),
                    _number(spend["prm_tokens"]),
                    _number(spend["tokens"]),
                    _number(spend["generations"], 1),
                ]
            )
    header = [
        "line",
        "n",
        "acc %",
        f"{100 * bootstrap.get('confidence', 0.95):.0f}% CI",
        "gen tokens",
        "PRM tokens",
        "tokens",
        "generations",
    ]
    title = (
        f"Accuracy with bootstrap intervals over problems ({bootstrap.get('resamples')}"
        " resamples) and spend per problem (means): compare lines at equal spend"
    )
    return [title, *_table(header, rows), SPEND_NOTE]


def _equal_spend_table(section: Sequence[Mapping[str, Any]]) -> list[str]:
    """compute_optimal beside every fixed line read at its spend (asynctts/eval/equal_spend.py)."""
    rows = []
    for compared in section:
        digits = 0 if compared["axis"] == "tokens" else 1
        head = [compared["line"], str(compared["n"]), compared["axis"]]
        mine = [_number(compared["spend"], digits), _percent(compared["accuracy"])]
        if not compared["readings"]:
            rows.append([*head, "(none measured around it)", "", *mine, "", ""])
        for reading in compared["readings"]:
            low, high = reading["between"]
            low_ci, high_ci = (100 * end for end in reading["interval"])
            rows.append(
                [
                    *head,
                    reading["label"],
                    f"n={low}" if low == high else f"n={low}..{high}",
                    *mine,
                    _percent(reading["accuracy"]),
                    f"{100 * reading['difference']:+.1f} [{low_ci:+.1f}, {high_ci:+.1f}]",
                ]
            )
    header = ["line", "n", "spend", "fixed line", "read at", "per problem", "acc %", "fixed %"]
    title = (
        "At equal spend: each fixed line's accuracy at compute_optimal's mean spend, interpolated"
        " in log spend between its budgets (none outside them), and the difference with a paired"
        " 95% bootstrap interval"
    )
    return [title, *_table([*header, "difference"], rows, left=5)]


def _seeds_table(summary: Mapping[str, Any]) -> list[str]:
    """A pooled report's seed runs: done per job, then each primary line's accuracy per seed."""
    seeds = summary["seeds"]
    rows = [
        [
            str(seed["seed"]),
            seed["run_dir"],
            ", ".join(f"{key} {done}/{seed['planned']}" for key, done in seed["done"].items()),
            "finished" if seed["finished"] else "unfinished",
            f"{seed['wall_s']:.1f}",
        ]
        for seed in seeds
    ]
    out = [
        "Seed runs: the accuracy is the mean over seeds and problems; its interval a bootstrap"
        " over problems of each problem's share of seeds right"
    ]
    out += _table(["seed", "run", "done per job", "state", "wall s"], rows, left=4)
    rows = [
        [line["label"], str(point["n"])] + [_percent(one["accuracy"]) for one in point["per_seed"]]
        for line in summary["lines"]
        if line["primary"]
        for point in line["points"]
    ]
    out += ["", "Accuracy (%) per seed"]
    out += _table(["line", "n", *(f"seed {seed['seed']}" for seed in seeds)], rows)
    return out


def _decision_table(job: Mapping[str, Any], table_path: str | None) -> list[str]:
    """A compute_optimal job's decisions: a summary line, then one row per difficulty bin."""
    decisions = job["decisions"]
    digest = str(job["settings"].get("table_sha256", ""))[:12]
    where = f"table sha256 {digest}" + (f", {table_path}" if table_path else "")
    head = (
        f"{job['key']} ({where}): {decisions['problems']} problems decided,"
        f" early exit on {decisions['early_exits']} ({_percent(decisions['early_exit_share'])}%),"
        f" {_number(decisions['mean_samples'], 1)} of n={decisions['n']} generations drawn on"
        " average"
    )
    if decisions["failed"]:
        head += f"; {decisions['failed']} failed as a whole (no decision)"
    oracle = "oracle_from" in decisions
    if oracle:
        head += (
            f"\nbins of the true pass@1 (the share of {decisions['oracle_from']}'s candidates"
            f" right); {decisions['predicted_bins']} solved with the predicted bins (their"
            " family run failed)"
        )
    budgeted = "budget_tokens" in decisions
    if budgeted:
        budget = decisions["budget_tokens"]
        head += (
            f"\nbatch budget {budget:.0f} tokens: spent {decisions['spent']:.0f}"
            f" ({_percent(decisions['spent'] / budget)}%), {decisions['budget_cut']} branches"
            " cut by it"
        )
    rows = [
        [
            level,
            ", ".join(f"{label} {count}" for label, count in group["choices"].items()),
            str(group["problems"]),
            _percent(group["accuracy"]),
            _number(group["tokens"]),
            _number(group["mean_samples"], 1),
            str(group["early_exits"]),
        ]
        + (
            [
                ", ".join(f"{label} {count}" for label, count in group["allotted"].items()),
                _number(group["spent"]),
            ]
            if budgeted
            else []
        )
        for level, group in decisions["by_bin"].items()
    ]
    header = ["bin", "choices", "problems", "acc %", "tokens", "generations", "early exits"]
    if budgeted:
        header += ["allotted", "spent"]
    easiest = "the highest pass@1" if oracle else "the easiest predicted difficulty"
    return [head, *_table(header, rows, left=2), f"(bin 1: {easiest})"]


def _level_key(level: str) -> tuple[int, str]:
    return (int(level), "") if level.isdigit() else (1 << 30, level)


def format_comparison(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Runs side by side: accuracy of each primary line at each n, one column per run."""
    names = [str(s["run_dir"]) for s in summaries]
    table: dict[tuple[str, int], list[str]] = {}
    for column, summary in enumerate(summaries):
        for line in summary["lines"]:
            if not line["primary"]:
                continue
            for point in line["points"]:
                row = table.setdefault((line["label"], point["n"]), [""] * len(summaries))
                row[column] = _percent(point["accuracy"])
    rows = [[label, str(n), *cells] for (label, n), cells in sorted(table.items())]
    out = ["Accuracy (%) side by side"]
    out += _table(["line", "n", *names], rows, left=1)
    rows = [
        [
            name,
            str(s["planned_problems"]),
            ", ".join(f"{j['key']} {j['done']}" for j in s["jobs"]),
            f"{s['wall_s']:.1f}",
        ]
        for name, s in zip(names, summaries, strict=True)
    ]
    out += ["", "Runs"]
    out += _table(["run", "problems", "done per job", "wall s"], rows)
    return "\n".join(out) + "\n"


def plot_accuracy(
    summaries: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None
) -> Path:
    """Two panels, one curve per primary line (per run when several), each accuracy with its
    bootstrap interval: accuracy vs n (log2 x axis), and accuracy vs mean tokens per problem
    (log x axis; one marker per line and n, labelled with n), where lines compare at equal
    spend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, LogFormatter, NullLocator

    figure = Figure(figsize=(13.0, 4.8), dpi=150)
    FigureCanvasAgg(figure)
    by_n, by_tokens = figure.subplots(1, 2, sharey=True)
    several = len(summaries) > 1
    curves = [
        (f"{Path(summary['run_dir']).name}: {line['label']}" if several else line["label"], points)
        for summary in summaries
        for line in summary["lines"]
        if line["primary"] and (points := [p for p in line["points"] if p["accuracy"] is not None])
    ]
    every_n: set[int] = set()
    for index, (label, points) in enumerate(curves):
        style = {
            "color": f"C{index % 10}",
            "marker": "o",
            "linewidth": 1.8,
            "markersize": 4,
            "capsize": 2,
            "elinewidth": 0.8,
        }
        xs = [p["n"] for p in points]
        every_n.update(xs)
        # curves at the same n side by side, so that each interval shows
        dodge = 2 ** (0.03 * (index - (len(curves) - 1) / 2))
        by_n.errorbar([x * dodge for x in xs], *_with_errors(points), label=label, **style)
        spent = [p for p in points if (p["spend"]["tokens"] or 0.0) > 0.0]
        if spent:
            tokens = [p["spend"]["tokens"] for p in spent]
            by_tokens.errorbar(tokens, *_with_errors(spent), label=label, **style)
            for x, point in zip(tokens, spent, strict=True):
                by_tokens.annotate(
                    str(point["n"]),
                    (x, 100 * point["accuracy"]),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=6,
                    color=style["color"],
                )
    by_n.set_xscale("log", base=2)
    ticks = sorted(every_n) or [1]
    by_n.xaxis.set_major_locator(FixedLocator(ticks))
    by_n.xaxis.set_minor_locator(NullLocator())
    by_n.set_xticklabels([str(n) for n in ticks])
    by_n.set_xlabel("Number of generations per problem (N)")
    by_n.set_ylabel("Accuracy (%)")
    by_n.set_title("accuracy vs. generations (bars: 95% bootstrap intervals)", fontsize=9)
    by_tokens.set_xscale("log")
    by_tokens.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    by_tokens.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    by_tokens.set_xlabel("Mean tokens per problem (policy generated + PRM prompt)")
    by_tokens.set_title("accuracy vs. spend (labels: N)", fontsize=9)
    for axes in (by_n, by_tokens):
        axes.grid(True, alpha=0.3)
    if curves:
        by_n.legend(loc="best", fontsize=8)
    figure.suptitle(title or "MATH-500: accuracy vs. test-time compute")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    return target


def _with_errors(
    points: Sequence[Mapping[str, Any]],
) -> tuple[list[float], list[list[float]]]:
    """Accuracies (%) and their intervals' distances below and above, for `errorbar` (a
    point with an accuracy has an interval)."""
    ys = [100 * p["accuracy"] for p in points]
    below = [y - 100 * p["interval"][0] for y, p in zip(ys, points, strict=True)]
    above = [100 * p["interval"][1] - y for y, p in zip(ys, points, strict=True)]
    return ys, [below, above]


def write_report(run_dir: str | Path, *, plot: bool = True) -> tuple[dict[str, Any], str]:
    """Summarise `run_dir` and write report.json, report.txt and accuracy.png into it.

    Returns:
        The summary and the text report.
    """
    directory = Path(run_dir)
    summary = summarize(load_run(directory))
    text = format_report(summary)
    save_report(directory, summary, text, plot=plot)
    return summary, text


def save_report(
    directory: Path,
    summary: Mapping[str, Any],
    text: str,
    *,
    plot: bool = True,
    title: str | None = None,
) -> None:
    """Write `summary` as report.json, its `text` as report.txt and, with `plot`, its
    accuracy.png (titled `title`) into `directory`."""
    (directory / REPORT_JSON).write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )
    (directory / REPORT_TEXT).write_text(text, encoding="utf-8")
    if plot:
        plot_accuracy([summary], directory / REPORT_PLOT, title=title)
