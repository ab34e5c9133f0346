from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


@pytest.fixture(scope="session")
def math500() -> list[dict[str, Any]]:
    """The canonical MATH-500 test split (read from ../shared, never copied into the repo)."""
    with MATH500.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]
