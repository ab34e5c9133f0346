"""Problem sets: MATH-500 as shipped inside asynctts (the default), MATH-500 from the Hugging
Face hub, or a local JSONL file with the same fields (`problem`, `answer`, optional `unique_id`,
`subject`, `level`).

Rules:
- The default data set is the MATH-500 copy packaged with asynctts (asynctts/data/README.md
  gives its source, licence and digest), read from the installed package: no network, no
  optional dependency.
- The hub is used only when named (`HUB`, a string; a `Path` is always a file). Before the hub
  client runs, `hub_unavailable()` decides in one short look whether the hub can be reached; if
  not, the load fails at once with the reason and the two offline choices, instead of after the
  client's retries.
- Every malformed input is reported with its file and line before anything is solved.
- A data set is identified by the SHA-256 of the bytes read (the hub's file once downloaded), so
  a run journal can tell whether it is resumed on the same problems wherever the file came from.
- A selection that matches no problem, or names a subject the data does not have, is an
  error naming what the data does hold.
- A fold (`Fold`, "I/K") keeps the problems whose seeded hash of their id falls in part I of
  K: a function of the id and the seed alone, so the K folds of one seed are disjoint and
  cover the data whatever else is selected, and `calibrate --fold 1/2` and `eval --fold 2/2`
  (same seed) never share a problem. It applies after the level and subject filters and
  before shuffling and the limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

from asynctts.errors import ConfigError
from asynctts.hub import hub_unavailable

# `load_dataset(HUB)` (`asynctts eval --data hub`): MATH-500's test split from the hub
HUB: Final = "hub"
MATH500_REPO: Final = "HuggingFaceH4/MATH-500"
MATH500_FILE: Final = "test.jsonl"
# the `source` of the MATH-500 copy shipped inside the package
PACKAGED_MATH500: Final = "asynctts:data/math500.jsonl"


@dataclass(frozen=True, slots=True)
class Problem:
    id: str
    problem: str
    answer: str
    subject: str | None = None
    level: int | None = None


@dataclass(frozen=True, slots=True)
class Fold:
    """Part `index` (1-based) of a seeded `count`-way split of the problems by id."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 2 or not 1 <= self.index <= self.count:
            raise ConfigError(
                f"fold {self.index}/{self.count}: need I/K with K >= 2 and 1 <= I <= K"
            )

    @classmethod
    def parse(cls, text: str) -> Fold:
        """ "1/2" -> Fold(1, 2).

        Raises:
            ConfigError: not two integers I/K, or not K >= 2 and 1 <= I <= K.
        """
        index, slash, count = text.strip().partition("/")
        if not slash or not index.isdigit() or not count.isdigit():
            raise ConfigError(f"fold {text!r}: write I/K, e.g. 1/2 (part I of K)")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, problem_id: str, seed: int) -> bool:
        return fold_of(problem_id, self.count, seed) == self.index


def fold_of(problem_id: str, count: int, seed: int) -> int:
    """The fold (1..count) a problem falls in under `seed`: a hash of both, stable across
    runs, machines and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{problem_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


@dataclass(frozen=True, slots=True)
class DataSet:
    """Problems with where they came from: `source` names the packaged copy
    (`PACKAGED_MATH500`), the hub file or the local path; `sha256` is the digest of the bytes
    the problems were read from."""

    problems: tuple[Problem, ...]
    source: str
    sha256: str


def packaged_math500() -> Traversable:
    """The MATH-500 file shipped inside asynctts (its provenance: asynctts/data/README.md)."""
    return resources.files("asynctts") / "data" / "math500.jsonl"


def load_dataset(source: str | Path | None = None) -> DataSet:
    """A problem set with its identity (source and SHA-256).

    Args:
        source: None for the MATH-500 copy packaged with asynctts (no network); `HUB` (the
            string "hub") for MATH-500 from the Hugging Face hub (needs
            `pip install 'asynctts[eval]'`); otherwise the path of a JSONL file (a `Path` is
            always a file, even one named "hub").

    Raises:
        ConfigError: the file is missing or a record is malformed (names file and line); with
            `HUB`, the hub is unreachable, HF_HUB_OFFLINE is set, or the download failed.
    """
    if source is None:
        return _parse_bytes(packaged_math500().read_bytes(), PACKAGED_MATH500)
    if isinstance(source, str) and source == HUB:
        downloaded = _download_math500()
        return _parse_bytes(_read_file(downloaded), f"hub:{MATH500_REPO}/{MATH500_FILE}")
    path = Path(source)
    return _parse_bytes(_read_file(path), str(path))


def load_problems(source: str | Path | None = None) -> list[Problem]:
    """The problems of `load_dataset(source)`: packaged MATH-500 when `source` is None, the
    hub's with `HUB`, otherwise a local JSONL file.

    Raises:
        ConfigError: as `load_dataset`.
    """
    return list(load_dataset(source).problems)


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ConfigError(f"data file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"data file {path} is not a file")
    return path.read_bytes()


def _parse_bytes(data: bytes, source: str) -> DataSet:
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, raw in enumerate(io.BytesIO(data), start=1):
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
    return DataSet(tuple(problems), source, hashlib.sha256(data).hexdigest())


def select(
    problems: Iterable[Problem],
    *,
    limit: int | None = None,
    levels: Iterable[int] | None = None,
    subjects: Iterable[str] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    fold: Fold | None = None,
) -> list[Problem]:
    """Filter by level and subject, keep one fold (seeded), optionally shuffle (seeded),
    then keep the first `limit`.

    Subjects match case-insensitively. The order is the data's (or the shuffled one).

    Raises:
        ConfigError: `limit` < 1, a subject the data does not hold, or nothing matches
            (the message lists the levels and subjects the data has, or names the fold).
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
    if fold is not None:
        matched = len(chosen)
        chosen = [p for p in chosen if fold.holds(p.id, seed)]
        if not chosen:
            raise ConfigError(
                f"fold {fold} (seed {seed}) holds none of the {matched} problems selected"
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
    unavailable = hub_unavailable()
    if unavailable is not None:
        raise ConfigError(
            f"cannot fetch {MATH500_REPO}/{MATH500_FILE} from the Hugging Face hub:"
            f" {unavailable}; drop `--data hub` to use the MATH-500 copy packaged with asynctts"
            " (load_dataset() with no argument), or pass a local JSONL file"
        )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ConfigError(
            "loading MATH-500 from the hub needs huggingface_hub: pip install 'asynctts[eval]'"
            " (or use the packaged copy: drop `--data hub`)"
        ) from err
    try:
        return Path(hf_hub_download(MATH500_REPO, MATH500_FILE, repo_type="dataset"))
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise ConfigError(
            f"could not fetch {MATH500_REPO}/{MATH500_FILE} from the Hugging Face hub "
            f"({type(err).__name__}: {err}); drop `--data hub` to use the packaged copy, or"
            " pass a local JSONL file"
        ) from err
