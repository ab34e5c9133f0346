"""The `asynctts` command: `asynctts eval ...` runs an evaluation into a run directory,
`asynctts report RUN_DIR [RUN_DIR ...]` reports one run or compares several.

Rules:
- Bad input (data, strategies, budgets, endpoints flags, a journal of another configuration)
  is reported before any request as `asynctts <command>: error: ...`, exit status 2 (as
  argparse does for bad flags). An endpoint that cannot serve exits 1; Ctrl-C exits 130, and
  `--resume` continues.
- Reports go to stdout, the progress bar to stderr, structured logs to RUN_DIR/eval.log.
- No secrets on the command line: API keys come from the environment variable named by
  `--api-key-env` / `--prm-api-key-env` (never logged or journaled).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from asynctts.api import STRATEGIES
from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT, Sampling
from asynctts.config import load_endpoints
from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError, EndpointError
from asynctts.eval.data import load_dataset, select
from asynctts.eval.plan import EvalPlan, StrategySettings, plan_jobs
from asynctts.eval.report import (
    REPORT_PLOT,
    REPORT_TEXT,
    format_comparison,
    plot_accuracy,
    write_report,
)
from asynctts.eval.runner import LOG_NAME, RunOptions, run_eval
from asynctts.gc_tuning import throughput_gc
from asynctts.logs import configure_logging

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ENDPOINT",
    "EXIT_INTERRUPTED",
    "Prepared",
    "add_eval_arguments",
    "build_parser",
    "eval_async",
    "exit_status",
    "main",
    "prepare_eval",
]

EXIT_BAD_INPUT = 2
EXIT_ENDPOINT = 1
EXIT_INTERRUPTED = 130
_SAMPLING = Sampling()  # the defaults


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _escapes(text: str) -> str:
    r"""Prompt formats on a command line: "\n" and "\t" stand for a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynctts",
        description="Test-time compute scaling for math: evaluate strategies on MATH-500.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "eval",
        help="run strategies over a data set into a run directory (resumable)",
        description=EVAL_DESCRIPTION,
    )
    add_eval_arguments(run)
    report = commands.add_parser(
        "report",
        help="report one run, or compare several side by side",
        description="(Re)write each run's report.txt, report.json and accuracy.png and print"
        " the report; with several runs, print them side by side.",
    )
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--plot", type=Path, help="with several runs: one plot of all of them")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


EVAL_DESCRIPTION = (
    "Run strategies at budgets N over MATH-500 (or a JSONL file), grade every answer,"
    " journal every result, then write report.txt, report.json and accuracy.png."
    " The best-of-N family (majority, best_of_n, weighted_best_of_n) runs once at"
    " the largest N and reports every smaller n from the same samples."
)


def add_eval_arguments(run: argparse.ArgumentParser) -> None:
    """The flags of `asynctts eval` (examples/batch_math500.py adds its own to these)."""
    what = run.add_argument_group("what to run")
    what.add_argument(
        "--strategy",
        action="append",
        required=True,
        metavar="NAME[@N,...]",
        help=f"one of {', '.join(sorted(STRATEGIES))}; repeat for several; NAME@4,8,16 gives"
        " the strategy its own budgets",
    )
    what.add_argument(
        "--n", nargs="+", type=_positive_int, metavar="N", help="budgets, e.g. 1 2 4 8 16"
    )
    what.add_argument("--width", type=_positive_int, help="beam width M (beam_search, dvts)")
    what.add_argument("--max-depth", type=_positive_int, help="most steps (beam_search, dvts)")
    what.add_argument("--aggregate", choices=("last", "min", "prod"), help="PRM aggregation")
    what.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run directory")
    what.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    what.add_argument(
        "--retry-errors", action="store_true", help="with --resume: redo problems that failed"
    )
    data = run.add_argument_group("data")
    data.add_argument(
        "--data", type=Path, help="JSONL with problem/answer (default: MATH-500 from the hub)"
    )
    data.add_argument("--limit", type=_positive_int, help="first K problems (after filtering)")
    data.add_argument("--levels", nargs="+", type=int, metavar="L", help="e.g. 1 2")
    data.add_argument("--subjects", nargs="+", metavar="S", help='e.g. Algebra "Number Theory"')
    data.add_argument("--shuffle", action="store_true", help="shuffle (with --seed) first")
    data.add_argument("--seed", type=int, default=0, help="shuffle and request seed (0)")
    sampling = run.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=_SAMPLING.temperature)
    sampling.add_argument("--top-p", type=float, default=_SAMPLING.top_p)
    sampling.add_argument("--max-tokens", type=_positive_int, default=_SAMPLING.max_tokens)
    prompt = sampling.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt", help="default: the search-and-learn math prompt")
    prompt.add_argument("--no-system-prompt", action="store_true")
    ends = run.add_argument_group("endpoints")
    ends.add_argument(
        "--endpoints",
        type=Path,
        help="endpoints file (JSON/TOML, as servers/launch.py writes) instead of the flags below",
    )
    ends.add_argument("--policy-url", help="e.g. http://127.0.0.1:8000/v1")
    ends.add_argument("--policy-model")
    ends.add_argument("--mode", choices=("completions", "chat"), help="default: completions")
    ends.add_argument("--tokenizer", help="policy tokenizer (default: the model name)")
    ends.add_argument(
        "--prompt-format", type=_escapes, help=r'policy format, e.g. "{system}\n\n{problem}"'
    )
    ends.add_argument("--api-key-env", help="variable holding the policy's API key")
    ends.add_argument("--prm-url", help="default: --policy-url")
    ends.add_argument("--prm-model")
    ends.add_argument("--scoring", choices=("pooling", "logprob"), help="default: pooling")
    ends.add_argument("--prm-tokenizer")
    ends.add_argument("--prm-prompt-format", type=_escapes)
    ends.add_argument("--prm-api-key-env")
    ends.add_argument(
        "--max-in-flight", type=_positive_int, help="requests in flight per endpoint (512)"
    )
    how = run.add_argument_group("how")
    how.add_argument("--max-problems-in-flight", type=_positive_int, default=64)
    how.add_argument("--grading-workers", type=_positive_int, default=2)
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True, slots=True)
class Prepared:
    plan: EvalPlan
    policy: Endpoint
    prm: Endpoint | None
    run_dir: Path
    options: RunOptions


_ENDPOINT_FLAGS = (
    "policy_url",
    "policy_model",
    "mode",
    "tokenizer",
    "prompt_format",
    "api_key_env",
    "prm_url",
    "prm_model",
    "scoring",
    "prm_tokenizer",
    "prm_prompt_format",
    "prm_api_key_env",
)


def _endpoints(args: argparse.Namespace) -> tuple[Endpoint, Endpoint | None]:
    limits: dict[str, Any] = {}
    if args.max_in_flight is not None:
        limits["max_in_flight"] = args.max_in_flight
    if args.endpoints is not None:
        flags = [f for f in _ENDPOINT_FLAGS if getattr(args, f) is not None]
        if flags:
            named = ", ".join("--" + f.replace("_", "-") for f in flags)
            raise ConfigError(
                f"--endpoints and {named} both given: put every endpoint setting in the file"
            )
        loaded = load_endpoints(args.endpoints)
        prm = loaded.get("prm")
        return (
            dataclasses.replace(loaded["policy"], **limits),
            None if prm is None else dataclasses.replace(prm, **limits),
        )
    if not args.policy_url or not args.policy_model:
        raise ConfigError("give --policy-url and --policy-model (or --endpoints PATH)")
    policy = Endpoint(
        base_url=args.policy_url,
        model=args.policy_model,
        **_given(mode=args.mode, tokenizer=args.tokenizer, prompt_format=args.prompt_format),
        **_given(api_key_env=args.api_key_env),
        **limits,
    )
    if args.prm_model is None:
        if args.prm_url is not None:
            raise ConfigError("--prm-url needs --prm-model")
        return policy, None
    prm = Endpoint(
        base_url=args.prm_url or args.policy_url,
        model=args.prm_model,
        **_given(scoring=args.scoring, tokenizer=args.prm_tokenizer),
        **_given(prompt_format=args.prm_prompt_format, api_key_env=args.prm_api_key_env),
        **limits,
    )
    return policy, prm


def _given(**fields: Any) -> dict[str, Any]:
    """The flags that were given; the others keep `Endpoint`'s defaults."""
    return {name: value for name, value in fields.items() if value is not None}


def prepare_eval(args: argparse.Namespace) -> Prepared:
    """Everything `eval` needs, checked; nothing is sent and nothing is written.

    Raises:
        ConfigError: any bad input, named.
    """
    policy, prm = _endpoints(args)
    jobs = plan_jobs(
        args.strategy,
        args.n,
        settings=StrategySettings(
            width=args.width, max_depth=args.max_depth, aggregate=args.aggregate
        ),
    )
    if args.retry_errors and not args.resume:
        raise ConfigError("--retry-errors only applies with --resume")
    dataset = load_dataset(args.data)
    selection = {
        "limit": args.limit,
        "levels": sorted(args.levels) if args.levels else None,
        "subjects": sorted(args.subjects) if args.subjects else None,
        "shuffle": args.shuffle,
        "shuffle_seed": args.seed if args.shuffle else None,
    }
    problems = select(
        dataset.problems,
        limit=args.limit,
        levels=args.levels,
        subjects=args.subjects,
        shuffle=args.shuffle,
        seed=args.seed,
    )
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    if args.no_system_prompt:
        system_prompt = None
    elif args.system_prompt is not None:
        system_prompt = _escapes(args.system_prompt)
    plan = EvalPlan(
        data=dataset,
        problems=tuple(problems),
        selection=selection,
        jobs=tuple(jobs),
        sampling=Sampling(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens
        ),
        seed=args.seed,
        system_prompt=system_prompt,
    )
    plan.check(has_prm=prm is not None)
    options = RunOptions(
        resume=args.resume,
        retry_errors=args.retry_errors,
        max_problems_in_flight=args.max_problems_in_flight,
        progress=not args.no_progress,
        grading_workers=args.grading_workers,
    )
    return Prepared(plan, policy, prm, args.out, options)


class _LogFile:
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


async def eval_async(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`asynctts eval` with parsed arguments (examples fill in endpoints first)."""
    prepared = prepare_eval(args)
    stdout = out or sys.stdout
    log_file = _LogFile(prepared.run_dir / LOG_NAME)
    configure_logging(level=args.log_level, stream=log_file, json=True)  # type: ignore[arg-type]
    try:
        outcomes = await run_eval(
            prepared.plan,
            policy=prepared.policy,
            prm=prepared.prm,
            run_dir=prepared.run_dir,
            options=prepared.options,
        )  # no argv in the journal: a URL on the command line may carry credentials
    finally:
        log_file.close()
    _, text = write_report(prepared.run_dir)
    stdout.write(text)
    for outcome in outcomes:
        stdout.write(
            f"{outcome.key}: {outcome.solved} solved now, {outcome.resumed} from the journal,"
            f" {outcome.wall_s:.1f} s\n"
        )
    stdout.write(
        f"report: {prepared.run_dir / REPORT_TEXT}, plot: {prepared.run_dir / REPORT_PLOT}\n"
    )
    return 0


def _report(args: argparse.Namespace, out: TextIO) -> int:
    summaries = []
    texts = []
    for run_dir in args.run_dirs:
        summary, text = write_report(run_dir)
        summaries.append(summary)
        texts.append(text)
    if args.json:
        out.write(orjson.dumps(summaries, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif len(summaries) == 1:
        out.write(texts[0])
    else:
        out.write(format_comparison(summaries))
    if args.plot is not None:
        out.write(f"plot: {plot_accuracy(summaries, args.plot)}\n")
    return 0


def exit_status(command: str, call: Callable[[], int]) -> int:
    """Run a command; its known failures become a message on stderr and an exit status."""
    try:
        return call()
    except ConfigError as err:
        sys.stderr.write(f"asynctts {command}: error: {err}\n")
        return EXIT_BAD_INPUT
    except EndpointError as err:
        sys.stderr.write(f"asynctts {command}: error: {err}\n")
        return EXIT_ENDPOINT
    except KeyboardInterrupt:
        sys.stderr.write(
            f"asynctts {command}: interrupted; finished problems are journaled,"
            " continue with --resume\n"
        )
        return EXIT_INTERRUPTED


def run_owning_process(main: Coroutine[Any, Any, int]) -> int:
    """`asyncio.run(main)` for a command that owns its process: under `throughput_gc()`,
    which a library call would leave to its application (gc_tuning.py)."""
    with throughput_gc():
        return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        return exit_status("eval", lambda: run_owning_process(eval_async(args)))
    return exit_status("report", lambda: _report(args, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
