"""Solve a handful of problems with every strategy and print each answer and its ledger.

Runs against asynctts's simulated vLLM-shaped server on 127.0.0.1 (a real HTTP server with
a deterministic step-by-step "model" and PRM), so it needs no GPU and no model download.
Point `policy` and `prm` at real endpoints to do the same against vLLM.
"""

from __future__ import annotations

import asyncio

from asynctts import Endpoint, Solver, configure_logging
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer

PROBLEMS = {
    "What is $1+1$?": SimProblem(answer="2", slip_rate=0.3),
    "Simplify $\\frac{6}{12}$.": SimProblem(answer="\\frac{1}{2}", slip_rate=0.3),
    "Solve $3x = 27$ for $x$.": SimProblem(answer="9", slip_rate=0.4),
    "What is the remainder when $2^{10}$ is divided by $7$?": SimProblem(answer="2", slip_rate=0.5),
}


async def main() -> None:
    configure_logging()
    latency = LatencyModel.h200_1b(time_scale=1.0)
    async with SimulatedServer(prm_model="sim-prm", problems=PROBLEMS, latency=latency) as server:
        policy = Endpoint(
            base_url=server.base_url,
            model="sim-policy",
            prompt_format="{system}\n\nProblem: {problem}\n\nSolution:\n",
        )
        prm = Endpoint(
            base_url=server.base_url,
            model="sim-prm",
            prompt_format="Problem: {problem}\n\nSolution:\n{solution}",
        )
        async with Solver(policy=policy, prm=prm) as solver:
            for strategy in ("majority", "weighted_best_of_n", "beam_search", "dvts"):
                async for sol in solver.solve_many(
                    PROBLEMS, strategy=strategy, n=16, seed=0, max_problems_in_flight=4
                ):
                    truth = PROBLEMS[sol.problem].answer
                    usage = sol.ledger.totals()
                    print(
                        f"{strategy:>18} | {sol.problem[:40]:40} | answer {sol.answer!s:>12}"
                        f" ({'right' if sol.answer == truth else 'wrong'}) | "
                        f"{usage.requests} requests, {usage.completion_tokens:.0f} tokens, "
                        f"{sol.ledger.wall_s:.2f} s"
                    )


if __name__ == "__main__":
    asyncio.run(main())
