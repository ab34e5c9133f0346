"""MATH-500 and other problem sets: from the Hugging Face hub or a local JSONL file with
the same fields (`problem`, `answer`, optional `unique_id`, `subject`, `level`).

Rules:
- Every malformed input is reported with its file and line before anything is solved.
- A data set is identified by the SHA-256 of its file (the hub's file once downloaded), so a
  run journal can tell whether it is resumed on the same problems wherever the file lives.
- A selection that matches no problem, or names a subject the data does not have, is an
  error naming what the data does hold.
"""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True, slots=True)
class DataSet:
    """Problems with where they came from: `source` names the hub file or the local path,
    `sha256` is the digest of the file's bytes."""

    problems: tuple[Problem, ...]
    source: str
    path: Path
    sha256: str


def load_dataset(path: str | Path | None = None) -> DataSet:
    """Like `load_problems`, with the file's identity (source and SHA-256).

    Raises:
        ConfigError: the file is missing or a record is malformed (names file and line).
    """
    source = Path(path) if path is not None else _download_math500()
    problems = _read(source)
    name = f"hub:{MATH500_REPO}/{MATH500_FILE}" if path is None else str(source)
    return DataSet(tuple(problems), name, source, _sha256(source))


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Problems from a local JSONL file, or MATH-500's test split from the hub when `path`
    is None (honours HF_HUB_OFFLINE; needs `pip install 'asynctts[eval]'`).

    Raises:
        ConfigError: the file is missing or a record is malformed (names file and line).
    """
    source = Path(path) if path is not None else _download_math500()
    return _read(source)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(source: Path) -> list[Problem]:
    if not source.exists():
        raise ConfigError(f"data file {source} does not exist")
    if not source.is_file():
        raise ConfigError(f"data file {source} is not a file")
    problems: list[Problem] = []
    seen: set[str] = set()
    with source.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{source}:{number}: not UTF-8 text ({err.reason})") from err
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
    """Filter by level and subject, optionally shuffle (seeded), then keep the first `limit`.

    Subjects match case-insensitively. The order is the data's (or the shuffled one).

    Raises:
        ConfigError: `limit` < 1, a subject the data does not hold, or nothing matches
            (the message lists the levels and subjects the data has).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit={limit!r}: need an int >= 1")
    chosen = list(problems)
    known_levels = sorted({p.level for p in chosen if p.level is not None})
    known_subjects = sorted({p.subject for p in chosen if p.subject is not None})
    wanted_levels = None if levels is None else set(levels)
    wanted_subjects = None if subjects is None else {s.lower() for s in subjects}
    if wanted_subjects is not None:
        unknown = wanted_subjects - {s.lower() for s in known_subjects}
        if unknown:
            raise ConfigError(
                f"subjects {sorted(unknown)} are not in the data; it has {known_subjects}"
            )
    if wanted_levels is not None:
        chosen = [p for p in chosen if p.level in wanted_levels]
    if wanted_subjects is not None:
        chosen = [
            p for p in chosen if p.subject is not None and p.subject.lower() in wanted_subjects
        ]
    if not chosen:
        raise ConfigError(
            f"no problem matches levels={sorted(wanted_levels) if wanted_levels else None}"
            f" subjects={sorted(wanted_subjects) if wanted_subjects else None};"
            f" the data has levels {known_levels} and subjects {known_subjects}"
        )
    if shuffle:
        random.Random(seed).shuffle(chosen)
    if limit is not None:
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
