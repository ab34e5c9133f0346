"""What beam search and DVTS share: a width M that must divide the budget, a depth limit
whose last iteration generates to the end, and paths ranked by aggregated PRM value."""

from __future__ import annotations

from dataclasses import dataclass

from asynctts.protocols import Path
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of


@dataclass(frozen=True, kw_only=True)
class TreeSearch:
    """Args:
    width: children sampled per expanded path (M); n must be a multiple of it.
    max_depth: iterations at most; the last one generates to the end.
    aggregate: how step scores become a path's value: "last", "min" or "prod".
    """

    width: int = 4
    max_depth: int = 40
    aggregate: AggregateName = "last"

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if self.width < 1 or self.max_depth < 1:
            raise ValueError(f"width={self.width}, max_depth={self.max_depth}: need >= 1")

    def check_budget(self, n: int) -> None:
        if n % self.width:
            raise ValueError(f"n={n} is not a multiple of width={self.width}")

    def value(self, path: Path) -> float:
        """The ranking key; an unscored path ranks last."""
        value = value_of(path.scores, self.aggregate)
        return float("-inf") if value is None else value
