"""asynctts.eval.data: the packaged MATH-500 (its documented identity, read with no network),
MATH-500 from the hub only when asked (failing at once offline), loading JSONL problem sets
(every error names file and line) and selecting from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asynctts.errors import ConfigError
from asynctts.eval.data import (
    HUB,
    PACKAGED_MATH500,
    Problem,
    load_dataset,
    load_problems,
    packaged_math500,
    select,
)

# as asynctts/data/README.md documents them
MATH500_SHA256 = "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"
MATH500_BYTES = 446_564
MATH500_LEVELS = {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
MATH500_SUBJECTS = {
    "Algebra": 124,
    "Intermediate Algebra": 97,
    "Prealgebra": 82,
    "Number Theory": 62,
    "Precalculus": 56,
    "Geometry": 41,
    "Counting & Probability": 38,
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(**fields: Any) -> str:
    base = {"problem": "What is 1+1?", "answer": "2", "unique_id": "a", "level": 1}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def test_packaged_math500_is_the_default_with_its_documented_identity() -> None:
    data = load_dataset()
    assert len(data.problems) == 500
    assert data.source == PACKAGED_MATH500 == "asynctts:data/math500.jsonl"
    assert data.sha256 == MATH500_SHA256
    assert len(packaged_math500().read_bytes()) == MATH500_BYTES
    assert Counter(p.level for p in data.problems) == MATH500_LEVELS
    assert Counter(p.subject for p in data.problems) == MATH500_SUBJECTS
    assert len({p.id for p in data.problems}) == 500
    first = data.problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.subject == "Precalculus"
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert list(data.problems) == load_problems()


def test_a_copy_on_disk_has_the_same_identity_under_its_own_path(tmp_path: Path) -> None:
    """The journal compares SHA-256 only: a run on the packaged set resumes on a copy of it."""
    copy = tmp_path / "math500.jsonl"
    copy.write_bytes(packaged_math500().read_bytes())
    data = load_dataset(copy)
    assert (data.source, data.sha256) == (str(copy), MATH500_SHA256)
    assert data.problems == load_dataset().problems
    assert load_dataset(str(copy)) == data


# Run in a fresh interpreter: records every socket use and every hub module imported.
NO_NETWORK_PROBE = textwrap.dedent(
    """
    import sys

    network = []
    sys.addaudithook(
        lambda event, args: network.append(event)
        if event.startswith(("socket.", "urllib.")) else None
    )
    from asynctts.eval.data import load_dataset

    data = load_dataset()
    print(len(data.problems), data.sha256, network, sorted(
        m for m in sys.modules if m.split(".")[0] in {"huggingface_hub", "requests", "httpx"}
    ))
    """
)


def test_loading_the_packaged_set_uses_no_network_and_no_hub_client() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout == f"500 {MATH500_SHA256} [] []\n"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], r":1: not valid JSON"),
        ([record(), "[1, 2]"], r":2: expected a JSON object, got list"),
        ([record(problem=None)], r":1: field 'problem' is missing or not a non-empty string"),
        ([record(answer=None)], r":1: field 'answer' is missing or not a non-empty string"),
        ([record(answer="  ")], r":1: field 'answer' is missing"),
        ([record(answer=2)], r":1: field 'answer' is missing or not a non-empty string"),
        ([record(level="5")], r":1: field 'level' must be an integer, got '5'"),
        ([record(), "", record()], r":3: duplicate id 'a'"),
        ([""], r"holds no problems"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(ConfigError, match=message) as caught:
        load_problems(path)
    assert str(path) in str(caught.value)


def test_missing_file_directory_and_bad_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.jsonl does not exist"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="is not a file"):
        load_problems(tmp_path)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(record().encode() + b"\n" + '{"problem": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.jsonl:2: not UTF-8 text"):
        load_problems(bad)


def test_records_without_an_id_get_their_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [record(unique_id=None), "", record(unique_id=None)])
    assert [p.id for p in load_problems(path)] == ["line-1", "line-3"]


PROBLEMS = [
    Problem(id=f"p{i}", problem=f"q{i}", answer=str(i), subject=subject, level=level)
    for i, (subject, level) in enumerate(
        [("Algebra", 1), ("Geometry", 2), ("Algebra", 3), ("Number Theory", 5), ("Algebra", 5)]
    )
]


def ids(problems: list[Problem]) -> list[str]:
    return [p.id for p in problems]


def test_select_filters_then_limits_in_data_order() -> None:
    assert ids(select(PROBLEMS)) == ["p0", "p1", "p2", "p3", "p4"]
    assert ids(select(PROBLEMS, levels=[5, 1])) == ["p0", "p3", "p4"]
    assert ids(select(PROBLEMS, subjects=["algebra"])) == ["p0", "p2", "p4"]
    assert ids(select(PROBLEMS, subjects=["Algebra"], levels=[5])) == ["p4"]
    assert ids(select(PROBLEMS, limit=2)) == ["p0", "p1"]
    assert ids(select(PROBLEMS, limit=99)) == ids(PROBLEMS)


def test_shuffle_is_seeded_and_happens_before_the_limit() -> None:
    first = ids(select(PROBLEMS, shuffle=True, seed=3))
    assert sorted(first) == ids(PROBLEMS) and first != ids(PROBLEMS)
    assert ids(select(PROBLEMS, shuffle=True, seed=3)) == first
    assert ids(select(PROBLEMS, shuffle=True, seed=3, limit=2)) == first[:2]
    assert ids(select(PROBLEMS, shuffle=True, seed=4)) != first


def test_bad_selections_name_what_the_data_has() -> None:
    with pytest.raises(ConfigError, match=r"subjects \['topology'\] are not in the data; it has"):
        select(PROBLEMS, subjects=["Algebra", "Topology"])
    with pytest.raises(
        ConfigError,
        match=r"no problem matches levels=\[4\] subjects=\['geometry'\]; the data has levels"
        r" \[1, 2, 3, 5\]",
    ):
        select(PROBLEMS, levels=[4], subjects=["Geometry"])
    for limit in (0, -1):
        with pytest.raises(ConfigError, match=f"limit={limit}: need an int >= 1"):
            select(PROBLEMS, limit=limit)


def test_math500_levels_and_subjects_select_as_in_the_readme() -> None:
    problems = load_problems()
    assert len(select(problems, levels=[1, 2])) == 43 + 90
    assert len(select(problems, subjects=["Counting & Probability"])) == 38


def test_the_hub_is_asked_only_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("asynctts.eval.data.hub_unavailable", lambda: None)
    served = tmp_path / "hub-cache" / "test.jsonl"
    served.parent.mkdir()
    served.write_bytes(packaged_math500().read_bytes())
    asked: list[tuple[str, str, str]] = []

    def download(repo_id: str, filename: str, *, repo_type: str) -> str:
        asked.append((repo_id, filename, repo_type))
        return str(served)  # as if the hub had served (or cached) it

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert load_dataset().source == PACKAGED_MATH500 and asked == []
    data = load_dataset(HUB)
    assert asked == [("HuggingFaceH4/MATH-500", "test.jsonl", "dataset")]
    assert data.source == "hub:HuggingFaceH4/MATH-500/test.jsonl"
    assert data.sha256 == MATH500_SHA256 and data.problems == load_dataset().problems

    def unreachable(repo_id: str, filename: str, *, repo_type: str) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"could not fetch HuggingFaceH4/MATH-500/test\.jsonl from the Hugging Face hub"
        r" \(OSError: network is unreachable\); drop `--data hub` to use the packaged copy, or"
        r" pass a local JSONL file",
    ):
        load_problems(HUB)


def test_the_hub_offline_fails_at_once_without_asking_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub

    def download(repo_id: str, filename: str, *, repo_type: str) -> str:
        raise AssertionError("the hub client must not run offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as caught:
        load_dataset(HUB)
    assert str(caught.value) == (
        "cannot fetch HuggingFaceH4/MATH-500/test.jsonl from the Hugging Face hub:"
        " HF_HUB_OFFLINE is set; drop `--data hub` to use the MATH-500 copy packaged with"
        " asynctts (load_dataset() with no argument), or pass a local JSONL file"
    )
    assert load_dataset().sha256 == MATH500_SHA256  # the packaged set needs no hub


def test_a_file_named_hub_is_a_path_when_given_as_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "hub", [record()])
    assert load_dataset(Path("hub")).source == "hub"
    assert [p.id for p in load_problems(Path("hub"))] == ["a"]
