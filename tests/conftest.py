from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from asynctts.equivalence import Equivalence

# Hypothesis's default 200 ms deadline per example measures this shared 2-core machine, not
# the code: one pause of the process fails an example that reruns cannot reproduce.
settings.register_profile("asynctts", deadline=None)
settings.load_profile("asynctts")

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


@pytest.fixture(scope="session")
def math500() -> list[dict[str, Any]]:
    """The canonical MATH-500 test split (read from ../shared, never copied into the repo)."""
    with MATH500.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def equivalence() -> Iterator[Equivalence]:
    """One Equivalence for the session: its worker process starts once. Pebble's pool is not
    bound to an event loop, so each test's loop can await it."""
    instance = Equivalence()
    yield instance
    asyncio.run(instance.aclose())
