"""How a path's per-step PRM scores become one value (Snell et al. 2024 compare all three;
search-and-learn uses "last")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

AggregateName = Literal["last", "min", "prod"]


def last(scores: Sequence[float]) -> float:
    return scores[-1]


def minimum(scores: Sequence[float]) -> float:
    return min(scores)


def product(scores: Sequence[float]) -> float:
    return math.prod(scores)


AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "last": last,
    "min": minimum,
    "prod": product,
}


def value_of(scores: Sequence[float], how: AggregateName) -> float | None:
    """The aggregated value of a path's scores; None for a path with no scored step."""
    if not scores:
        return None
    return AGGREGATES[how](scores)


def check_aggregate(how: str) -> None:
    if how not in AGGREGATES:
        raise ValueError(f"aggregate={how!r}: choose one of {sorted(AGGREGATES)}")
