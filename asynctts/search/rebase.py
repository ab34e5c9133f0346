"""REBASE, reward balanced search (Wu et al. 2024, "Inference Scaling Laws", arXiv
2408.00724), over the two protocols: a tree grown one depth at a time, whose budget goes to
the nodes the PRM likes in proportion to softmax(value / weight_temperature).

Rules:
- The budget n counts solutions. At each depth the budget left is B = n minus the solutions
  finished so far, and the frontier is the previous depth's unfinished scored children. At
  depth 0 the frontier is the root alone, which gets all n children.
- B is split over the frontier by the sequential ceil rule: with weights w = softmax(value /
  weight_temperature) (value: the node's score under `aggregate`, "last" by default), nodes in
  descending value each get min(ceil(B * w_i), what B has left). The shares sum to exactly
  B, never grow down the order, and the best node always gets at least one child; nodes
  reached after B is spent get none. Ties keep generation order: of equal values the earlier
  node is served first.
- A node given k children is expanded with one request for k children (the server's prefix
  cache serves the shared prefix); child j of the node at key s has key s + (j,), so every
  node has its own key and its own seed. Each child is scored on its own call. Children that
  finished (EOS, max_tokens, an empty step) are solutions; the rest are the next frontier.
- The search stops when n solutions have finished, when the frontier is empty, or after
  `max_depth` depths, the last of which generates to the end (as the tree searches do), so
  every child of the last depth is a solution.
- Lost branches: a failed expansion loses its k children, a failed scoring its one child,
  each as a `BranchLost` under the child's key. Their budget is spent again: B counts only
  finished solutions, so the next depth's frontier shares it. A failed request says nothing
  about the problem, so it should not shrink the vote (the particle filter refills its pool
  and beam search sends stand-ins for the same reason). Budget lost at the last depth, or
  when the whole frontier is lost, is not recovered: the run ends with fewer solutions.
- Results: the solutions in the order they finished (by depth, then generation order); each
  depth draws at most B children, so there are at most n of them; then every lost branch.
- Answer: weighted vote over all the solutions (selection "weighted").

The strategy draws no random numbers: its choices follow from the scores alone, and the
requests' seeds from the keys.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of
from asynctts.search.sampling import scored_children
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class Rebase:
    """Args:
    weight_temperature: of the balance weights softmax(value / weight_temperature); > 0.
        Values lie in [0, 1]: at 0.1 a node scored 0.1 above another weighs e times as much.
    max_depth: depths at most; the last one generates to the end.
    aggregate: how step scores become a node's value: "last", "min" or "prod".
    """

    name: ClassVar[str] = "rebase"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "weighted"
    weight_temperature: float = 0.1
    max_depth: int = 40
    aggregate: AggregateName = "last"

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if not self.weight_temperature > 0:  # also refuses NaN
            raise ValueError(f"weight_temperature={self.weight_temperature}: need > 0")
        if self.max_depth < 1:
            raise ValueError(f"max_depth={self.max_depth}: need >= 1")

    def check_budget(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n={n}: need at least one solution")

    def value(self, path: Path) -> float:
        value = value_of(path.scores, self.aggregate)
        return 0.0 if value is None else value

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        solutions: list[Path] = []
        lost: list[BranchLost] = []
        frontier = [root]
        for depth in range(self.max_depth):
            shares = balanced_shares(
                [self.value(node) for node in frontier], n - len(solutions), self.weight_temperature
            )
            to_end = depth == self.max_depth - 1
            async with asyncio.TaskGroup() as tg:  # the depth's nodes never wait for each other
                broods = [
                    tg.create_task(scored_children(node, k, generate, score, to_end=to_end))
                    for node, k in zip(frontier, shares, strict=True)
                    if k
                ]
            frontier = []
            for brood in broods:
                for child in brood.result():
                    if isinstance(child, BranchLost):
                        lost.append(child)
                    elif child.done:
                        solutions.append(child)
                    else:
                        frontier.append(child)
            if not frontier or len(solutions) == n:
                break
        return [*solutions, *lost]


def balanced_shares(values: Sequence[float], budget: int, temperature: float) -> list[int]:
    """Children per node (in the order of `values`) by the sequential ceil rule: nodes in
    descending value (ties: the earlier first) each get min(ceil(budget * w_i), what is
    left), w = softmax(values / temperature). The shares sum to `budget`."""
    top = max(values)
    # shifted by the largest value so no term overflows; the best node's term is exactly 1
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    shares = [0] * len(values)
    left = budget
    for i in sorted(range(len(values)), key=lambda i: values[i], reverse=True):
        shares[i] = min(math.ceil(budget * exps[i] / total), left)
        left -= shares[i]
    return shares
