"""Weighted best-of-N (Li et al. 2023): the samples of best-of-N, grouped by equivalent
answer; a group weighs the sum of its members' aggregated values; the heaviest group wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from asynctts.search.best_of_n import BestOfN
from asynctts.search.strategy import Selection


@dataclass(frozen=True, kw_only=True)
class WeightedBestOfN(BestOfN):
    name: ClassVar[str] = "weighted_best_of_n"
    selection: ClassVar[Selection] = "weighted"
