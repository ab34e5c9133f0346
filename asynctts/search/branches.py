"""Helpers shared by strategies: run a branch so that its failure becomes a value."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from asynctts.errors import BranchLost

T = TypeVar("T")


async def kept(work: Awaitable[T]) -> T | BranchLost:
    """Await `work`; a `BranchLost` comes back as a value so one lost branch never cancels
    its siblings in a TaskGroup. Every other exception propagates."""
    try:
        return await work
    except BranchLost as lost:
        return lost
