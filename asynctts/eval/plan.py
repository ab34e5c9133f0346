"""What an evaluation will run, decided and checked before any request is sent.

Rules:
- A strategy is given as `NAME` (budgets from the shared list) or `NAME@N1,N2,...` (its own).
- The best-of-N family (majority, best_of_n, weighted_best_of_n) runs ONCE, at the largest
  budget any member asked for: its samples are in generation order, so `Solution.votes(n)`
  is exactly what a run with budget n would have answered. That one run reports majority,
  best-of-N and weighted best-of-N (only majority when no member needs a PRM, since then
  nothing is scored) at every requested n.
- Beam search and DVTS run once per budget; each reports its own selection rule ("primary")
  and, in the JSON report, the other two rules over the same finished paths.
- compute_optimal runs once per budget too, as a tree search does (its answer is the weighted
  vote over every candidate: the probe's and its choice's). It needs a calibration table,
  and a table is only for compute_optimal: either without the other is an error. The table
  must fit the endpoints and system prompt (`EvalPlan.check_endpoints`); its content's
  sha256 (`table_sha256`) is in the job's identity, so a resume with another table is refused.
- A batch token budget (`budget_tokens`, compute_optimal only) is spent by each compute_optimal
  job over its problems (`solve_many(..., budget_tokens=B)`); it is in the job's identity, and
  it must cover the probes the table expects for the selected problems.
- A tree-search job may carry a width of its own (a calibration grid runs several per budget):
  a width other than the strategy's default is named in the job's key and line labels
  ("dvts[width=8]@64", "dvts[width=8]/majority"). A job at the default width, and every job of
  `plan_jobs` (whose width is the shared setting), keeps the plain key ("dvts@64"), so eval
  journals stay valid.
- A job may also grade every candidate's answer (`grade_candidates`): its results then record
  the share of candidates that are right, the oracle pass@1 a calibration bins by.
- The oracle line (Snell et al.'s upper bound): when compute_optimal's table has oracle bins
  (bins of the true pass@1) and the best-of-N family is in the run, the family job grades its
  candidates (so its identity has `grade_candidates` in exactly these runs) and a job
  "compute_optimal/oracle@N" follows every compute_optimal job at the end of the plan, after
  the family's. It runs compute_optimal as the predicted job does, but each problem's choice
  is that of the oracle bin of its pass@1, the share of the family's candidates that are
  right (`Job.oracle_from` names the family job). Without the family, with a batch token
  budget (the oracle line is not allotted one), or with a table without oracle bins, there is
  no oracle job, and `oracle_skipped` says why (recorded in the journal's info as
  `ORACLE_SKIPPED`, shown by the report).
- Every (problem, job) pair passes the library's own checks (`make_strategy`,
  `check_request`, `check_budget`) here, so bad input fails before the first request.
- The run's identity (what decides its results) never holds an endpoint URL, a limit or a
  secret: those go to `info`, which is recorded but not compared on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asynctts.api import (
    STRATEGIES,
    Calibration,
    check_request,
    check_turns_rendered,
    make_strategy,
)
from asynctts.backends.context import Sampling
from asynctts.batch_budget import check_batch_budget
from asynctts.calibration import CalibrationTable, table_identity
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError
from asynctts.eval.data import DataSet, Problem
from asynctts.search.compute_optimal import Chooser, ComputeOptimal
from asynctts.search.strategy import Selection, Strategy
from asynctts.search.tree_search import TreeSearch

__all__ = [
    "FAMILY",
    "NAMES",
    "ORACLE",
    "ORACLE_SKIPPED",
    "EvalPlan",
    "Job",
    "Line",
    "StrategySettings",
    "build_strategy",
    "calibration_tables",
    "endpoint_identity",
    "endpoint_info",
    "oracle_skipped",
    "parse_strategy",
    "plan_jobs",
    "table_sha256",
    "tree_job",
]

FAMILY = ("majority", "best_of_n", "weighted_best_of_n")
NAMES = tuple(sorted([*STRATEGIES, ComputeOptimal.name]))  # every strategy eval runs
SELECTIONS: tuple[Selection, ...] = ("majority", "best", "weighted")
# the family's report lines: each member is the family run read with its own rule
_FAMILY_LINES: tuple[tuple[str, Selection], ...] = (
    ("majority", "majority"),
    ("best_of_n", "best"),
    ("weighted_best_of_n", "weighted"),
)
_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?:@(?P<budgets>[0-9]+(?:,[0-9]+)*))?$")
_FORMAT = 1  # bump when the journal's record layout changes
ORACLE = "/oracle"  # the oracle job's tag: "compute_optimal/oracle@16"
ORACLE_SKIPPED = "oracle_skipped"  # info's key for why a compute_optimal run has no oracle line


@dataclass(frozen=True, slots=True)
class Line:
    """One curve of the report: the answers `selection` picks in the runs of `strategy`."""

    label: str  # "weighted_best_of_n", "dvts", "dvts/majority"
    strategy: str
    selection: Selection
    primary: bool  # drawn in the plot and the text table


@dataclass(frozen=True, slots=True)
class Job:
    """One pass over the problems: `strategy` at budget `n`, graded at each of `points`."""

    strategy: Strategy
    n: int
    points: tuple[int, ...]
    lines: tuple[Line, ...]
    all_candidates: bool  # vote over every finished path (tree search) vs the first n samples
    tag: str = ""  # "[width=8]": a setting of the job's own, named in its key
    grade_candidates: bool = False  # also record the share of candidates that are right
    budget_tokens: float | None = None  # one token budget over the job's problems
    oracle_from: str | None = None  # the oracle line: the family job giving each pass@1

    @property
    def key(self) -> str:
        return f"{self.strategy.name}{self.tag}@{self.n}"

    @property
    def selections(self) -> tuple[Selection, ...]:
        return tuple(line.selection for line in self.lines)

    @property
    def headline(self) -> Line:
        """The line of the strategy's own selection rule (its `Solution.answer`)."""
        return next(line for line in self.lines if line.selection == self.strategy.selection)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {
            "key": self.key,
            "strategy": self.strategy.name,
            "n": self.n,
            "settings": _settings_of(self.strategy),
            "points": list(self.points),
            "lines": [
                {"label": line.label, "selection": line.selection, "primary": line.primary}
                for line in self.lines
            ],
            "all_candidates": self.all_candidates,
        }
        if self.grade_candidates:  # absent otherwise: eval journals keep their identity
            identity["grade_candidates"] = True
        if self.budget_tokens is not None:  # likewise
            identity["budget_tokens"] = self.budget_tokens
        if self.oracle_from is not None:
            identity["oracle_from"] = self.oracle_from
        return identity


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySettings:
    """Knobs passed to every strategy that has them (None: the strategy's default)."""

    width: int | None = None
    max_depth: int | None = None
    aggregate: str | None = None
    per_request: int | None = None
    lookahead: int | None = None
    weight_temperature: float | None = None
    resampling: str | None = None
    ess_threshold: float | None = None
    resample_inactive: bool | None = None
    anneal_below: float | None = None
    anneal_until: float | None = None
    threshold: float | None = None
    cut: str | None = None
    continuations: int | None = None
    rounds: int | None = None
    revision: str | None = None
    critique: str | None = None


def parse_strategy(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """ "dvts@4,8,16" -> ("dvts", (4, 8, 16)); "majority" -> ("majority", None).

    Raises:
        ConfigError: malformed, an unknown name, or a budget < 1.
    """
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ConfigError(f"strategy {spec!r}: write NAME or NAME@N1,N2,... (e.g. dvts@4,8,16)")
    name = match["name"]
    if name not in NAMES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {list(NAMES)}")
    if match["budgets"] is None:
        return name, None
    budgets = tuple(int(part) for part in match["budgets"].split(","))
    if any(b < 1 for b in budgets):
        raise ConfigError(f"strategy {spec!r}: budgets must be >= 1")
    return name, budgets


def plan_jobs(
    specs: Sequence[str],
    budgets: Sequence[int] | None,
    *,
    settings: StrategySettings | None = None,
    calibration: Calibration | None = None,
    budget_tokens: float | None = None,
) -> list[Job]:
    """The jobs to run for the given strategies (see the module rules).

    Args:
        specs: "NAME" or "NAME@N1,N2,..." per strategy.
        budgets: the budgets of strategies given without their own (`--n`).
        settings: strategy knobs (`StrategySettings`: each reaches the strategies that have
            it); compute_optimal takes per_request alone (its options' settings and aggregate
            are its table's).
        calibration: compute_optimal's table (a `CalibrationTable` or the path of the
            calibration.json `asynctts calibrate` writes); only with compute_optimal.
        budget_tokens: one token budget each compute_optimal job spends over its problems;
            only with compute_optimal (checked against the problems by `EvalPlan.check`).

    Raises:
        ConfigError: an unknown strategy, a strategy given twice, a strategy without budgets,
            a budget < 1, or one the strategy cannot use (e.g. DVTS with n not a multiple of
            its width, compute_optimal below its table's probe or smallest budget);
            compute_optimal without a table or a table without compute_optimal; a table that
            cannot be read (named).
    """
    if not specs:
        raise ConfigError("no strategy given (--strategy NAME)")
    wanted: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, own = parse_strategy(spec)
        if name in wanted:
            raise ConfigError(f"strategy {name!r} is given twice; list all its budgets once")
        chosen = own if own is not None else tuple(budgets or ())
        if not chosen:
            raise ConfigError(f"strategy {name!r} has no budget: pass --n or {name}@N1,N2,...")
        if any(b < 1 for b in chosen):
            raise ConfigError(f"strategy {name!r}: budgets {list(chosen)} must be >= 1")
        wanted[name] = tuple(sorted(set(chosen)))
    knobs = settings or StrategySettings()
    tabled: dict[str, Strategy] = {}  # compute_optimal, built with its table
    if ComputeOptimal.name in wanted:
        if calibration is None:
            raise ConfigError(
                "strategy 'compute_optimal' needs a calibration table: pass --calibration"
                " TABLE, the calibration.json `asynctts calibrate` writes for these endpoints"
            )
        tabled[ComputeOptimal.name] = _compute_optimal(calibration, knobs)
    elif calibration is not None:
        raise ConfigError(
            f"a calibration table is only for strategy 'compute_optimal', which is not among"
            f" the strategies {sorted(wanted)}: add it, or drop the table (--calibration)"
        )
    if budget_tokens is not None and ComputeOptimal.name not in wanted:
        raise ConfigError(
            f"a batch token budget is only for strategy 'compute_optimal', which is not among"
            f" the strategies {sorted(wanted)}: add it, or drop --budget-tokens"
        )
    jobs: list[Job] = []
    family = {name: ns for name, ns in wanted.items() if name in FAMILY}
    family_job = _family_job(family, knobs) if family else None
    chooser = tabled.get(ComputeOptimal.name)
    oracle_from = None  # the family job whose graded candidates give the oracle's pass@1
    if (
        family_job is not None
        and isinstance(chooser, ComputeOptimal)
        and _no_oracle_because(chooser.table, has_family=True, budget_tokens=budget_tokens) is None
    ):
        family_job = dataclasses.replace(family_job, grade_candidates=True)
        oracle_from = family_job.key
    if family_job is not None:
        jobs.append(family_job)
    for name, ns in wanted.items():
        if name in FAMILY:
            continue
        strategy = tabled[name] if name in tabled else build_strategy(name, knobs)
        for n in ns:
            _check_budget(strategy, n)
            job = tree_job(strategy, n)
            if isinstance(strategy, ComputeOptimal) and budget_tokens is not None:
                job = dataclasses.replace(job, budget_tokens=budget_tokens)
            jobs.append(job)
    if oracle_from is not None and chooser is not None:
        lines = _tree_lines(chooser, f"{chooser.name}{ORACLE}")
        jobs += [
            Job(chooser, n, (n,), lines, all_candidates=True, tag=ORACLE, oracle_from=oracle_from)
            for n in wanted[ComputeOptimal.name]
        ]
    return jobs


def oracle_skipped(jobs: Sequence[Job]) -> str | None:
    """Why jobs with compute_optimal have no oracle line (None: they have one, or there is no
    compute_optimal job)."""
    if any(job.oracle_from is not None for job in jobs):
        return None
    predicted = [
        (job.strategy.table, job.budget_tokens)
        for job in jobs
        if isinstance(job.strategy, ComputeOptimal)
    ]
    if not predicted:
        return None
    table, budget_tokens = predicted[0]
    has_family = any(not job.all_candidates for job in jobs)
    return _no_oracle_because(table, has_family=has_family, budget_tokens=budget_tokens)


def _no_oracle_because(
    table: Chooser, *, has_family: bool, budget_tokens: float | None
) -> str | None:
    """Why compute_optimal with `table` gets no oracle line in a plan (None: it gets one)."""
    if not isinstance(table, CalibrationTable) or not table.has_oracle:
        return (
            "the calibration table has no oracle bins (its calibration graded no pass@1, or an"
            " older asynctts wrote it): run `asynctts calibrate` again for the oracle line"
        )
    if budget_tokens is not None:
        return "the oracle line is not run with a batch token budget (--budget-tokens)"
    if not has_family:
        return "oracle bins need the best-of-N family in the run: add weighted_best_of_n"
    return None


def tree_job(strategy: Strategy, n: int, *, own_width: bool = False) -> Job:
    """One run of `strategy` (beam search, DVTS or compute_optimal) at budget `n`, reporting
    its own selection rule and the other two over every candidate it returned.

    Args:
        strategy: the configured strategy; its budget is not checked here.
        n: the budget.
        own_width: the job is one of several widths of the strategy: a width other than the
            strategy's default is named in the key and the line labels (see the module rules).
    """
    tag = ""
    if own_width and isinstance(strategy, TreeSearch):
        default = {f.name: f.default for f in dataclasses.fields(strategy)}["width"]
        if strategy.width != default:
            tag = f"[width={strategy.width}]"
    lines = _tree_lines(strategy, f"{strategy.name}{tag}")
    return Job(strategy, n, (n,), lines, all_candidates=True, tag=tag)


def _tree_lines(strategy: Strategy, name: str) -> tuple[Line, ...]:
    """The lines of a run over every candidate: `name` for the strategy's own selection rule,
    "name/rule" for the other two."""
    return tuple(
        Line(
            label=name if selection == strategy.selection else f"{name}/{selection}",
            strategy=strategy.name,
            selection=selection,
            primary=selection == strategy.selection,
        )
        for selection in SELECTIONS
    )


def _family_job(family: Mapping[str, tuple[int, ...]], knobs: StrategySettings) -> Job:
    # the run that serves every member: scored when any member needs scores
    if "weighted_best_of_n" in family:
        runner = "weighted_best_of_n"
    elif "best_of_n" in family:
        runner = "best_of_n"
    else:
        runner = "majority"
    strategy = build_strategy(runner, knobs)
    points = tuple(sorted({n for ns in family.values() for n in ns}))
    for n in points:
        _check_budget(strategy, n)
    lines = tuple(
        Line(label=label, strategy=label, selection=selection, primary=True)
        for label, selection in _FAMILY_LINES
        if strategy.needs_prm or selection == "majority"
    )
    return Job(strategy, points[-1], points, lines, all_candidates=False)


def build_strategy(name: str, knobs: StrategySettings) -> Strategy:
    """The strategy `name` with the knobs it has (the others are ignored).

    Raises:
        ConfigError: an unknown name, or a knob the strategy refuses (named with its value).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    accepted: set[str] = (
        {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    )
    given = {k: v for k, v in dataclasses.asdict(knobs).items() if v is not None and k in accepted}
    try:
        return make_strategy(cls(**given))
    except ValueError as err:  # the strategies validate their own settings
        raise ConfigError(f"strategy {name!r} with {given}: {err}") from err


def _compute_optimal(calibration: Calibration, knobs: StrategySettings) -> ComputeOptimal:
    """compute_optimal with its table (loaded when given as a path: errors name the file)."""
    table = (
        calibration
        if isinstance(calibration, CalibrationTable)
        else CalibrationTable.load(calibration)
    )
    if knobs.per_request is None:
        return ComputeOptimal(table=table)
    return ComputeOptimal(table=table, per_request=knobs.per_request)


def table_sha256(table: CalibrationTable) -> str:
    """The sha256 of a table's content: its JSON with sorted keys and no spaces (so the same
    table saved or indented otherwise has the same digest)."""
    canonical = json.dumps(table.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def calibration_tables(jobs: Sequence[Job]) -> dict[str, CalibrationTable]:
    """The calibration tables of the compute_optimal jobs, by job key."""
    return {
        job.key: job.strategy.table
        for job in jobs
        if isinstance(job.strategy, ComputeOptimal)
        and isinstance(job.strategy.table, CalibrationTable)
    }


def _check_budget(strategy: Strategy, n: int) -> None:
    try:
        strategy.check_budget(n)
    except ValueError as err:
        raise ConfigError(
            f"strategy {strategy.name!r} cannot use budget n={n}: {err}; drop it from --n or"
            f" give {strategy.name}@N1,N2,... with budgets it can use"
        ) from err


def _settings_of(strategy: Strategy) -> dict[str, Any]:
    if isinstance(strategy, ComputeOptimal):  # the table by its digest, not its content
        settings: dict[str, Any] = {
            "early_exit": strategy.early_exit,
            "per_request": strategy.per_request,
        }
        if isinstance(strategy.table, CalibrationTable):
            settings["table_sha256"] = table_sha256(strategy.table)
        return settings
    if dataclasses.is_dataclass(strategy) and not isinstance(strategy, type):
        return dataclasses.asdict(strategy)
    return {}


def endpoint_identity(endpoint: Endpoint | None) -> dict[str, Any] | None:
    """The endpoint fields that decide results (the model and how it is prompted)."""
    if endpoint is None:
        return None
    return {
        "model": endpoint.model,
        "mode": endpoint.mode,
        "scoring": endpoint.scoring,
        "tokenizer": endpoint.tokenizer_name,
        "prompt_format": endpoint.prompt_format,
        "step_tag": endpoint.step_tag,
        "prompt_logprobs": endpoint.prompt_logprobs,
        "max_n_per_request": endpoint.max_n_per_request,
    }


def endpoint_info(endpoint: Endpoint | None) -> dict[str, Any] | None:
    """Where the endpoint was (a list when several URLs) and its limits, with any credentials
    in the URLs removed."""
    if endpoint is None:
        return None
    urls = [_without_credentials(url) for url in endpoint.urls]
    return {
        "base_url": urls[0] if isinstance(endpoint.base_url, str) else urls,
        "api_key_env": endpoint.api_key_env,  # the variable's name, never its value
        "max_in_flight": endpoint.max_in_flight,
        "rate_per_s": endpoint.rate_per_s,
        "tokens_per_min": endpoint.tokens_per_min,
        "max_attempts": endpoint.max_attempts,
        "total_timeout_s": endpoint.total_timeout_s,
    }


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalPlan:
    """Problems, jobs and the settings every job shares."""

    data: DataSet
    problems: tuple[Problem, ...]
    selection: Mapping[str, Any]  # limit, levels, subjects, shuffle (as given)
    jobs: tuple[Job, ...]
    sampling: Sampling
    seed: int
    system_prompt: str | None

    def check(self, *, has_prm: bool) -> None:
        """Every problem against every job, as `solve` would check it.

        Raises:
            ConfigError: the first problem a job cannot run (named by its id).
        """
        if not self.problems:
            raise ConfigError("no problems selected")
        for job in self.jobs:
            for problem in self.problems:
                try:
                    check_request(problem.problem, job.strategy, job.n, has_prm)
                except ConfigError as err:
                    raise ConfigError(f"problem {problem.id!r}, {job.key}: {err}") from err
            if job.budget_tokens is not None:
                try:
                    check_batch_budget(job.strategy, job.budget_tokens, len(self.problems), job.n)
                except ConfigError as err:
                    raise ConfigError(f"{job.key}: {err}") from err

    def check_endpoints(self, policy: Endpoint, prm: Endpoint | None) -> None:
        """Every compute_optimal job's table was made for these endpoints and this system
        prompt (`CalibrationTable.check_identity`), and a job that sends earlier turns
        (prompted revision) has a policy that renders them.

        Raises:
            ConfigError: naming the job and every field where table and run differ, or the
                policy's prompt_format.
        """
        for job in self.jobs:
            try:
                check_turns_rendered(job.strategy, policy)
            except ConfigError as err:
                raise ConfigError(f"{job.key}: {err}") from err
        identity = table_identity(policy, prm, self.system_prompt)
        for key, table in calibration_tables(self.jobs).items():
            try:
                table.check_identity(identity)
            except ConfigError as err:
                raise ConfigError(f"{key}: {err}") from err

    def config(
        self,
        *,
        policy: Endpoint,
        prm: Endpoint | None,
        info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The journal's config: `identity` (compared on resume) and `info` (recorded)."""
        ids = "\n".join(p.id for p in self.problems).encode()
        prompt = self.system_prompt
        identity = {
            "format": _FORMAT,
            "jobs": [job.identity() for job in self.jobs],
            "data": {"sha256": self.data.sha256},
            "selection": {
                **self.selection,
                "problems": len(self.problems),
                "ids_sha256": hashlib.sha256(ids).hexdigest(),
            },
            "sampling": dataclasses.asdict(self.sampling),
            "seed": self.seed,
            "system_prompt_sha256": None
            if prompt is None
            else hashlib.sha256(prompt.encode()).hexdigest(),
            "endpoints": {"policy": endpoint_identity(policy), "prm": endpoint_identity(prm)},
        }
        skipped = oracle_skipped(self.jobs)
        return {
            "identity": identity,
            "info": {
                "data_source": self.data.source,
                "endpoints": {"policy": endpoint_info(policy), "prm": endpoint_info(prm)},
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({} if skipped is None else {ORACLE_SKIPPED: skipped}),
                **(info or {}),
            },
        }
