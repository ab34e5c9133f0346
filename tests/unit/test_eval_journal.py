"""asynctts.eval.journal: append + fsync, resume, torn last lines, config mismatches, locks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.errors import ConfigError
from asynctts.eval import journal as journal_module
from asynctts.eval.journal import (
    Journal,
    differences,
    last_per_key,
    read_journal,
    recorded_versions,
)

IDENTITY: dict[str, Any] = {
    "jobs": [{"key": "dvts@4", "n": 4}],
    "sampling": {"temperature": 0.8, "top_p": 1.0},
    "seed": 0,
}
CONFIG: dict[str, Any] = {"identity": IDENTITY, "info": {"base_url": "http://127.0.0.1:1/v1"}}


def result(pid: str, job: str = "dvts@4", **extra: Any) -> dict[str, Any]:
    return {"type": "result", "job": job, "problem_id": pid, **extra}


def test_a_new_journal_starts_with_its_config_and_appends_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "run" / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        assert journal.events == []
        creating = len(synced)
        assert creating >= 1  # the config line (and the new directory entry) are on disk
        journal.append(result("p1"))
        assert len(synced) == creating + 1  # fsync'ed before append returned
        journal.append(result("p2", answer="\\frac{1}{2}"))
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"type": "config", **CONFIG},
        result("p1"),
        result("p2", answer="\\frac{1}{2}"),
    ]


async def test_append_async_keeps_call_order(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        await asyncio.gather(*(journal.append_async(result(f"p{i}")) for i in range(20)))
    events = read_journal(path).events
    assert [e["problem_id"] for e in events] == [f"p{i}" for i in range(20)]


def test_resume_returns_what_was_journaled_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    with Journal.open(path, CONFIG, resume=True) as journal:
        assert journal.events == [result("p1")]
        assert journal.config["identity"] == IDENTITY
        journal.append(result("p2"))
    assert [e["problem_id"] for e in read_journal(path).events] == ["p1", "p2"]


def test_resume_without_a_journal_starts_one(tmp_path: Path) -> None:
    path = tmp_path / "new" / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=True) as journal:
        assert journal.events == []
    assert read_journal(path).config == {"type": "config", **CONFIG}


def test_an_existing_run_needs_resume(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    with pytest.raises(ConfigError, match=r"already holds a run .* pass --resume"):
        Journal.open(path, CONFIG, resume=False)
    assert len(read_journal(path).events) == 1  # untouched


def test_a_run_that_finished_nothing_starts_over_without_resume(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append({"type": "session_start", "job": "dvts@4", "t": 1.0})
    other = {"identity": {**IDENTITY, "seed": 1}, "info": {}}
    with Journal.open(path, other, resume=False) as journal:
        assert journal.events == []
    assert read_journal(path).config == {"type": "config", **other}


@pytest.mark.parametrize("tail", [b'{"type": "result", "job": "dvts@4", "probl', b"{}}\n"])
def test_a_torn_last_line_is_dropped_and_cut_off_on_resume(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    whole = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    contents = read_journal(path)
    assert contents.torn and contents.valid_bytes == whole
    assert contents.events == (result("p1"),)
    assert path.stat().st_size == whole + len(tail)  # reading never changes the file
    with Journal.open(path, CONFIG, resume=True) as journal:
        assert journal.events == [result("p1")]
        journal.append(result("p2"))
    after = read_journal(path)
    assert not after.torn
    assert [e["problem_id"] for e in after.events] == ["p1", "p2"]


def test_a_torn_config_line_starts_the_run_over(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"type": "config", "identity": {"jo')
    with Journal.open(path, CONFIG, resume=True) as journal:
        assert journal.events == []
    assert read_journal(path).config == {"type": "config", **CONFIG}


def test_a_bad_line_before_the_last_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    data = path.read_bytes()
    path.write_bytes(data + b"garbage\n" + orjson.dumps(result("p2")) + b"\n")
    with pytest.raises(ConfigError, match=r"journal\.jsonl:3: corrupt journal line b'garbage'"):
        read_journal(path)
    with pytest.raises(ConfigError, match="corrupt journal line"):
        Journal.open(path, CONFIG, resume=True)


def test_a_file_that_is_not_a_journal_is_named(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(orjson.dumps(result("p1")) + b"\n")
    with pytest.raises(ConfigError, match=r"journal\.jsonl:1: not a journal"):
        read_journal(path)
    with pytest.raises(ConfigError, match="no journal there"):
        read_journal(tmp_path / "missing.jsonl")


def test_resuming_with_another_configuration_names_each_difference(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    changed = {
        "identity": {
            "jobs": [{"key": "dvts@8", "n": 8}],
            "sampling": {"temperature": 0.7, "top_p": 1.0},
            "seed": 0,
            "extra": True,
        },
        "info": {"base_url": "http://elsewhere:2/v1"},  # info is never compared
    }
    with pytest.raises(ConfigError) as caught:
        Journal.open(path, changed, resume=True)
    message = str(caught.value)
    assert message.splitlines()[1:-1] == [
        "  extra: absent (journal) vs true (now)",
        '  jobs: [{"key":"dvts@4","n":4}] (journal) vs [{"key":"dvts@8","n":8}] (now)',
        "  sampling.temperature: 0.8 (journal) vs 0.7 (now)",
    ]
    assert message.startswith(f"cannot resume {path}: it was written with a different config")
    same_identity = {"identity": IDENTITY, "info": {"base_url": "http://elsewhere:2/v1"}}
    with Journal.open(path, same_identity, resume=True) as journal:
        assert journal.events == [result("p1")]


def test_differences_of_equal_values_is_empty() -> None:
    assert differences(IDENTITY, dict(IDENTITY)) == []
    assert differences({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == [
        "a.b: [1,2] (journal) vs [1,3] (now)"
    ]


def test_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with (
        Journal.open(path, CONFIG, resume=False),
        pytest.raises(ConfigError, match="in use by another process"),
    ):
        Journal.open(path, CONFIG, resume=True)
    with Journal.open(path, CONFIG, resume=True):  # released on close
        pass


def test_closed_journals_refuse_appends(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.jsonl", CONFIG, resume=False)
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(RuntimeError, match="is closed"):
        journal.append(result("p1"))


def test_unserialisable_records_fail_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        size = path.stat().st_size
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            journal.append({"type": "result", "value": object()})
        assert path.stat().st_size == size


def test_the_last_record_of_a_key_wins() -> None:
    events = [
        result("p1", error="SolveFailed"),
        result("p1", job="majority@4"),
        {"type": "session_start", "job": "dvts@4", "t": 0.0},
        result("p1", error=None),
    ]
    latest = last_per_key(events)
    assert latest == {
        ("dvts@4", "p1"): result("p1", error=None),
        ("majority@4", "p1"): result("p1", job="majority@4"),
    }


@settings(max_examples=60, deadline=None)
@given(records=st.integers(min_value=0, max_value=6), cut=st.integers(min_value=0))
def test_a_journal_cut_anywhere_resumes_to_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, records: int, cut: int
) -> None:
    """A kill can stop a write at any byte: what remains always reads as a prefix of what was
    appended, and resuming leaves a clean file."""
    path = tmp_path_factory.mktemp("cut") / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        for i in range(records):
            journal.append(result(f"p{i}", answer="x" * i))
    data = path.read_bytes()
    path.write_bytes(data[: cut % (len(data) + 1)])
    with Journal.open(path, CONFIG, resume=True) as journal:
        kept = [e["problem_id"] for e in journal.events]
        assert kept == [f"p{i}" for i in range(len(kept))]
        journal.append(result("next"))
    after = read_journal(path)
    assert not after.torn
    assert [e["problem_id"] for e in after.events] == [*kept, "next"]


VERSIONS = {"asynctts": "0.1.0", "math-verify": "0.9.0"}
VERSIONED: dict[str, Any] = {**CONFIG, "versions": VERSIONS}


def test_resuming_under_other_versions_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, VERSIONED, resume=False) as journal:
        journal.append(result("p1"))
    before = path.read_bytes()
    newer = {**CONFIG, "versions": {"asynctts": "0.1.0", "math-verify": "0.9.1"}}
    with pytest.raises(ConfigError) as caught:
        Journal.open(path, newer, resume=True)
    assert str(caught.value) == (
        f"cannot resume {path}: its results were written with asynctts 0.1.0, math-verify"
        " 0.9.0; this is asynctts 0.1.0, math-verify 0.9.1. Grades of different versions may"
        " disagree: pass --allow-version-change to continue it anyway (the change is"
        " journaled), or choose another output directory"
    )
    assert path.read_bytes() == before  # untouched
    with Journal.open(path, VERSIONED, resume=True) as journal:  # the same versions resume
        assert journal.events == [result("p1")]


def test_an_allowed_version_change_is_journaled_and_becomes_the_reference(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, VERSIONED, resume=False) as journal:
        journal.append(result("p1"))
    newer = {**CONFIG, "versions": {"asynctts": "0.2.0", "math-verify": "0.9.0"}}
    with Journal.open(path, newer, resume=True, allow_version_change=True) as journal:
        change = journal.events[-1]
        assert journal.config["versions"] == VERSIONS  # line 1 is never rewritten
        journal.append(result("p2"))
    assert change["type"] == "versions"
    assert change["previous"] == VERSIONS
    assert change["versions"] == newer["versions"]
    contents = read_journal(path)
    assert [e["type"] for e in contents.events] == ["result", "versions", "result"]
    assert recorded_versions(contents) == newer["versions"]
    # later resumes compare with the newest versions: the first ones are now the change
    with Journal.open(path, newer, resume=True) as journal:
        assert len(journal.events) == 3
    with pytest.raises(ConfigError, match=r"written with asynctts 0\.2\.0, math-verify 0\.9\.0;"):
        Journal.open(path, VERSIONED, resume=True)


def test_a_journal_without_versions_resumes_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, CONFIG, resume=False) as journal:
        journal.append(result("p1"))
    assert recorded_versions(read_journal(path)) is None
    with pytest.raises(
        ConfigError,
        match=r"written with unrecorded versions \(an older asynctts\); this is asynctts 0\.1\.0",
    ):
        Journal.open(path, VERSIONED, resume=True)
    with Journal.open(path, VERSIONED, resume=True, allow_version_change=True) as journal:
        assert journal.events[-1]["previous"] is None


def test_a_torn_line_is_cut_before_the_version_change_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, VERSIONED, resume=False) as journal:
        journal.append(result("p1"))
    with path.open("ab") as f:
        f.write(b'{"type": "resu')
    newer = {**CONFIG, "versions": {"asynctts": "0.1.0", "math-verify": "1.0.0"}}
    with Journal.open(path, newer, resume=True, allow_version_change=True):
        pass
    contents = read_journal(path)
    assert not contents.torn
    assert [e["type"] for e in contents.events] == ["result", "versions"]
