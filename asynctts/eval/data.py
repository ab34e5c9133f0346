"""MATH-500 and other problem sets: from the Hugging Face hub or a local JSONL file with
the same fields (`problem`, `answer`, optional `unique_id`, `subject`, `level`).

Every malformed input is reported with its file and line before anything is solved.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asynctts.errors import ConfigError

MATH500_REPO = "HuggingFaceH4/MATH-500"
MATH500_FILE = "test.jsonl"


@dataclass(frozen=True, slots=True)
class Problem:
    id: str
    problem: str
    answer: str
    subject: str | None = None
    level: int | None = None


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Problems from a local JSONL file, or MATH-500's test split from the hub when `path`
    is None (honours HF_HUB_OFFLINE; needs `pip install 'asynctts[eval]'`).

    Raises:
        ConfigError: the file is missing or a record is malformed (names file and line).
    """
    source = Path(path) if path is not None else _download_math500()
    if not source.is_file():
        raise ConfigError(f"data file {source} does not exist")
    problems: list[Problem] = []
    seen: set[str] = set()
    with source.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            problem = _parse(line, f"{source}:{number}", number)
            if problem.id in seen:
                raise ConfigError(f"{source}:{number}: duplicate id {problem.id!r}")
            seen.add(problem.id)
            problems.append(problem)
    if not problems:
        raise ConfigError(f"data file {source} holds no problems")
    return problems


def select(
    problems: Iterable[Problem],
    *,
    limit: int | None = None,
    levels: Iterable[int] | None = None,
    subjects: Iterable[str] | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list[Problem]:
    """Filter by level and subject, optionally shuffle (seeded), then keep the first `limit`."""
    chosen = list(problems)
    if levels is not None:
        wanted_levels = set(levels)
        chosen = [p for p in chosen if p.level in wanted_levels]
    if subjects is not None:
        wanted = {s.lower() for s in subjects}
        chosen = [p for p in chosen if p.subject is not None and p.subject.lower() in wanted]
    if shuffle:
        random.Random(seed).shuffle(chosen)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit={limit}: need >= 1")
        chosen = chosen[:limit]
    return chosen


def _parse(line: str, where: str, number: int) -> Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("problem", "answer"):
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: field {field!r} is missing or not a non-empty string")
    level = record.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise ConfigError(f"{where}: field 'level' must be an integer, got {level!r}")
    subject = record.get("subject")
    return Problem(
        id=str(record.get("unique_id", record.get("id", f"line-{number}"))),
        problem=record["problem"],
        answer=record["answer"],
        subject=subject if isinstance(subject, str) else None,
        level=level,
    )


def _download_math500() -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ConfigError(
            "loading MATH-500 from the hub needs huggingface_hub: pip install 'asynctts[eval]'"
            " (or pass a local JSONL file)"
        ) from err
    try:
        return Path(hf_hub_download(MATH500_REPO, MATH500_FILE, repo_type="dataset"))
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise ConfigError(
            f"could not fetch {MATH500_REPO}/{MATH500_FILE} from the Hugging Face hub "
            f"({type(err).__name__}: {err}); pass a local JSONL file instead"
        ) from err
