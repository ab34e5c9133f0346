"""Evaluate test-time compute strategies on MATH-500: `asynctts eval` plus `--simulate`.

Without `--simulate` this is exactly `asynctts eval` (same flags, same run directory): point
it at real endpoints with `--policy-url/--policy-model/--prm-url/--prm-model` (or
`--endpoints PATH`). With `--simulate` it first starts asynctts's simulated vLLM-shaped server
in this process (real HTTP on 127.0.0.1) and registers every selected problem with it, harder
by level (`math500_problem`: each problem's pass@1, steps and wrong answers as fitted to
Llama-3.2-1B-Instruct's published MATH-500 curves, judged by a PRM fitted to
Qwen2.5-Math-PRM-7B's; see asynctts/testing/README.md), so the accuracy-vs-N curves behave
like the published ones (no GPU, no download). The problems are the MATH-500 copy packaged with
asynctts unless `--data` names a JSONL file (or `hub`).

    # both families over all 500 problems, N = 1..16 (DVTS needs multiples of its width 4)
    python examples/batch_math500.py --simulate \\
        --strategy weighted_best_of_n --strategy dvts@4,8,16 --n 1 2 4 8 16 \\
        --out runs/sim500
    asynctts report runs/sim500                  # the table again; runs/sim500/accuracy.png

    # killed halfway (SIGKILL), then resumed: ends with exactly 500 results per job
    python examples/batch_math500.py --simulate \\
        --strategy weighted_best_of_n --n 1 2 4 8 16 --out runs/killed \\
        --sim-latency h200_1b & sleep 20; kill -KILL $!
    python examples/batch_math500.py --simulate \\
        --strategy weighted_best_of_n --n 1 2 4 8 16 --out runs/killed \\
        --sim-latency h200_1b --resume

    # three request seeds over the same problems, one report pooled over them
    python examples/batch_math500.py --simulate \\
        --strategy weighted_best_of_n --n 1 2 4 --seeds 0 1 2 --out runs/seeds
    asynctts report runs/seeds                   # the pooled report again

    # two runs side by side, one plot
    asynctts report runs/sim500 runs/killed --plot runs/compare.png

Against real servers (see servers/), e.g. vLLM on the CPU with a few problems:

    asynctts eval --policy-url http://127.0.0.1:8000/v1 --policy-model MODEL \\
        --prm-url http://127.0.0.1:8001/v1 --prm-model PRM \\
        --strategy weighted_best_of_n --n 1 2 4 --limit 5 --out runs/cpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from asynctts import configure_logging
from asynctts.cli import (
    EVAL_DESCRIPTION,
    HelpFormatter,
    add_eval_arguments,
    eval_async,
    exit_status,
    run_owning_process,
)
from asynctts.errors import ConfigError
from asynctts.eval.data import Problem, load_dataset
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer, math500_problem
from asynctts.testing.cli import add_sim_arguments, sim_settings
from asynctts.testing.sim_model import LEVELS

POLICY_FORMAT = "{system}\n\nProblem: {problem}\n\nSolution:\n"
PRM_FORMAT = "Problem: {problem}\n\nSolution:\n{solution}"


def simulated_problems(problems: Iterable[Problem]) -> dict[str, SimProblem]:
    """Each problem with its reference answer and its level's difficulty (level 3 when it
    has none)."""
    out: dict[str, SimProblem] = {}
    for problem in problems:
        level = problem.level if problem.level in LEVELS else 3
        out[problem.problem] = math500_problem(problem.problem, problem.answer, level)
    return out


async def run(args: argparse.Namespace) -> int:
    if not args.simulate:
        return await eval_async(args)
    given = [f for f in ("endpoints", "policy_url", "prm_url") if getattr(args, f) is not None]
    if given:
        raise ConfigError(f"--simulate serves its own endpoints; drop --{given[0]}")
    latency = (
        LatencyModel.h200_1b(time_scale=args.sim_time_scale)
        if args.sim_latency == "h200_1b"
        else LatencyModel.zero()
    )
    problems = simulated_problems(load_dataset(args.data).problems)
    async with SimulatedServer(
        model="sim-policy",
        prm_model="sim-prm",
        problems=problems,
        latency=latency,
        **sim_settings(args, "sim-"),
        keep_records=False,
    ) as server:
        args.policy_url, args.policy_model = server.base_url, "sim-policy"
        args.prm_model, args.scoring = "sim-prm", "pooling"
        args.prompt_format, args.prm_prompt_format = POLICY_FORMAT, PRM_FORMAT
        return await eval_async(args)


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown, the description and epilog kept as written."""


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="batch_math500.py",
        description=EVAL_DESCRIPTION,
        formatter_class=_HelpFormatter,
        epilog=__doc__,
    )
    add_eval_arguments(parser)
    sim = parser.add_argument_group("simulated server (--simulate)")
    sim.add_argument("--simulate", action="store_true", help="serve a simulated model here")
    sim.add_argument("--sim-latency", choices=("zero", "h200_1b"), default="zero")
    sim.add_argument("--sim-time-scale", type=float, default=1.0)
    add_sim_arguments(sim, "sim-")
    args = parser.parse_args()
    configure_logging()  # warnings only until `eval` sends the logs to RUN_DIR/eval.log

    return exit_status("eval", lambda: run_owning_process(run(args)))


if __name__ == "__main__":
    sys.exit(main())
