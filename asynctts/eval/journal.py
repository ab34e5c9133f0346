"""The write-ahead journal of an evaluation run: one JSONL file in the run directory.

Rules:
- Line 1 is the configuration: `{"type": "config", "identity": {...}, "info": {...}}`.
  `identity` is everything that decides the results (compared when resuming); `info` is
  recorded only (endpoint URLs, limits, start time). Neither ever holds a secret.
- Every later line is one event (a finished problem, a session start or end), written with
  one `write`, then flushed and fsync'ed before `append` returns: a result counts only once
  it is on disk.
- A torn LAST line (a write cut by SIGKILL or a crash: no final newline, or not JSON) is
  dropped; when the journal is opened to resume, the file is cut back to its last whole line
  before anything is appended. A bad line anywhere else is corruption: an error naming it.
- Resuming with a different identity is refused, naming every differing field.
- The config line may also hold `versions`, the software that writes and grades the results
  (`{"asynctts": "0.1.0", "math-verify": "0.9.0"}`); they are not part of the identity.
  Resuming under other versions is refused, naming both, unless `allow_version_change`: then
  a `{"type": "versions", "versions": ..., "previous": ..., "t": ...}` event records the
  change before anything else is appended, and later resumes compare with the newest one.
- One process at a time: the file is locked (flock) while open for writing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import structlog

from asynctts.errors import ConfigError

__all__ = [
    "Journal",
    "JournalContents",
    "differences",
    "last_per_key",
    "read_journal",
    "recorded_versions",
]

log = structlog.get_logger("asynctts.eval.journal")

_MISSING = object()


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a journal holds: its config line, the events after it (in order), and how many
    bytes of the file are whole lines (`valid_bytes` < size when the last line is torn)."""

    config: dict[str, Any] | None
    events: tuple[dict[str, Any], ...]
    valid_bytes: int
    torn: bool


def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Parse a journal without changing it.

    Raises:
        ConfigError: the file is missing, or a line other than the last is not a JSON
            object, or line 1 is not a config line (each names file and line).
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"{source}: no journal there (is it a run directory?)") from err
    lines = data.split(b"\n")
    # the piece after the last newline is empty for a whole file, else a torn write
    whole, tail = lines[:-1], lines[-1]
    parsed: list[dict[str, Any]] = []
    valid_bytes = 0
    torn = bool(tail)
    for number, line in enumerate(whole, start=1):
        record = _parse(line)
        if record is None:
            if number == len(whole) and not tail:
                torn = True  # the last line ended in a newline yet is cut: drop it too
                break
            raise ConfigError(f"{source}:{number}: corrupt journal line {line[:80]!r}")
        parsed.append(record)
        valid_bytes += len(line) + 1
    config: dict[str, Any] | None = None
    if parsed:
        first = parsed[0]
        if first.get("type") != "config" or not isinstance(first.get("identity"), dict):
            raise ConfigError(f"{source}:1: not a journal (line 1 is not a config line)")
        config = first
    return JournalContents(config, tuple(parsed[1:]), valid_bytes, torn)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted names of the fields where `old` and `new` differ, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            a, b = old.get(key, _MISSING), new.get(key, _MISSING)
            if a is _MISSING or b is _MISSING:
                out.append(f"{name}: {_show(a)} (journal) vs {_show(b)} (now)")
            else:
                out.extend(differences(a, b, name))
        return out
    if old == new:
        return []
    return [f"{prefix or '(config)'}: {_show(old)} (journal) vs {_show(new)} (now)"]


def _show(value: object) -> str:
    if value is _MISSING:
        return "absent"
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 120 else text[:117] + "..."


class Journal:
    """An open journal, appending. Use `Journal.open(...)` as a context manager."""

    def __init__(self, path: Path, fd: int, config: dict[str, Any], events: list[dict[str, Any]]):
        self.path = path
        self.config = config
        self.events = events  # what was on disk when it was opened (the resumed part)
        self._fd: int | None = fd
        self._lock = asyncio.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        *,
        resume: bool,
        allow_version_change: bool = False,
    ) -> Journal:
        """Create a journal, or resume the one at `path`.

        Args:
            path: the journal file (its directory is created).
            config: `{"identity": {...}, "info": {...}}` and optionally `"versions": {...}`,
                JSON-serialisable.
            resume: continue an existing journal (its identity must equal `config`'s); a
                missing one is created. Without it, a journal holding results is an error
                (one without any is started over).
            allow_version_change: resume even when the journal's versions differ from
                `config`'s (the change is journaled).

        Raises:
            ConfigError: a journal exists and `resume` is False; the identities differ (the
                message names each differing field); the versions differ and
                `allow_version_change` is False (the message names both); the journal is
                corrupt; or another process has it open.
        """
        target = Path(path)
        if "identity" not in config:
            raise ConfigError("journal config needs an 'identity' mapping")
        record = {"type": "config", **config}
        encoded = _encode(record)  # fail on unserialisable config before touching the disk
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, target)
            contents = read_journal(target)
            if contents.config is None:
                if contents.valid_bytes or contents.torn:
                    log.warning("journal.torn_config_dropped", path=str(target))
                # nothing whole was written (a new run, or killed during its first write)
                os.ftruncate(fd, 0)
                _write(fd, encoded)
                _fsync_directory(target.parent)
                return cls(target, fd, record, [])
            has_results = any(e.get("type") == "result" for e in contents.events)
            if not resume and not has_results:
                # a run that never finished a problem (its server was down, say): start over
                os.ftruncate(fd, 0)
                _write(fd, encoded)
                return cls(target, fd, record, [])
            if not resume:
                raise ConfigError(
                    f"{target.parent} already holds a run ({target.name}); pass --resume to"
                    " continue it, or choose another output directory"
                )
            changed = differences(contents.config["identity"], config["identity"])
            if changed:
                raise ConfigError(
                    f"cannot resume {target}: it was written with a different configuration:\n  "
                    + "\n  ".join(changed)
                    + "\nrun with the journal's settings, or choose another output directory"
                )
            events = list(contents.events)
            change = _version_change(target, contents, config, allow_version_change)
            if contents.torn:
                log.warning(
                    "journal.torn_line_dropped", path=str(target), kept_bytes=contents.valid_bytes
                )
                os.ftruncate(fd, contents.valid_bytes)
                os.fsync(fd)
            if change is not None:
                log.warning(
                    "journal.versions_changed",
                    path=str(target),
                    previous=change["previous"],
                    versions=change["versions"],
                )
                _write(fd, _encode(change))
                events.append(change)
            return cls(target, fd, contents.config, events)
        except BaseException:
            os.close(fd)  # also releases the lock
            raise

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one event and make it durable (flush + fsync) before returning."""
        if self._fd is None:
            raise RuntimeError(f"journal {self.path} is closed")
        _write(self._fd, _encode(record))

    async def append_async(self, record: Mapping[str, Any]) -> None:
        """`append` off the event loop (fsync can take milliseconds); appends keep the order
        of their calls."""
        encoded = _encode(record)
        async with self._lock:
            if self._fd is None:
                raise RuntimeError(f"journal {self.path} is closed")
            await asyncio.to_thread(_write, self._fd, encoded)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def recorded_versions(contents: JournalContents) -> dict[str, Any] | None:
    """The versions the journal's latest results were written with: those of its newest
    "versions" event, else of its config line; None when it records none."""
    for event in reversed(contents.events):
        if event.get("type") == "versions":
            return dict(event["versions"])
    versions = (contents.config or {}).get("versions")
    return None if versions is None else dict(versions)


def _version_change(
    path: Path, contents: JournalContents, config: Mapping[str, Any], allowed: bool
) -> dict[str, Any] | None:
    """The "versions" event to append when resuming under other versions (None when they are
    the same or `config` names none).

    Raises:
        ConfigError: they differ and the change is not `allowed`.
    """
    if "versions" not in config:
        return None
    old, new = recorded_versions(contents), dict(config["versions"])
    if old == new:
        return None
    if not allowed:
        raise ConfigError(
            f"cannot resume {path}: its results were written with {_show_versions(old)};"
            f" this is {_show_versions(new)}. Grades of different versions may disagree: pass"
            " --allow-version-change to continue it anyway (the change is journaled), or"
            " choose another output directory"
        )
    return {"type": "versions", "versions": new, "previous": old, "t": time.time()}


def _show_versions(versions: Mapping[str, Any] | None) -> str:
    if versions is None:
        return "unrecorded versions (an older asynctts)"
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _encode(record: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError as err:
        raise TypeError(f"journal record is not JSON-serialisable: {err}") from err


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        raise ConfigError(f"{path} is in use by another process (its run is still going)") from err


def _fsync_directory(directory: Path) -> None:
    """Make the new file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_per_key(events: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last "result" event of each (job, problem id): a retried problem's newer record
    replaces the older one."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        if event.get("type") == "result":
            out[(str(event["job"]), str(event["problem_id"]))] = dict(event)
    return out
