"""asynctts.eval.data: loading JSONL problem sets (every error names file and line) and
selecting from them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asynctts.errors import ConfigError
from asynctts.eval.data import Problem, load_dataset, load_problems, select

MATH500 = Path(__file__).resolve().parents[3] / "shared" / "data" / "math500.jsonl"
MATH500_SHA256 = "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(**fields: Any) -> str:
    base = {"problem": "What is 1+1?", "answer": "2", "unique_id": "a", "level": 1}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def test_math500_loads_with_its_identity() -> None:
    data = load_dataset(MATH500)
    assert len(data.problems) == 500
    assert data.sha256 == MATH500_SHA256  # as ../shared/data/README.md states
    assert data.source == str(MATH500)
    assert Counter(p.level for p in data.problems) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    first = data.problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.subject == "Precalculus"
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert list(data.problems) == load_problems(MATH500)


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
    problems = load_problems(MATH500)
    assert len(select(problems, levels=[1, 2])) == 43 + 90
    assert len(select(problems, subjects=["Counting & Probability"])) == 38


def test_without_a_path_math500_comes_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked: list[tuple[str, str, str]] = []

    def download(repo_id: str, filename: str, *, repo_type: str) -> str:
        asked.append((repo_id, filename, repo_type))
        return str(MATH500)  # as if the hub had served (or cached) it

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    data = load_dataset()
    assert asked == [("HuggingFaceH4/MATH-500", "test.jsonl", "dataset")]
    assert data.source == "hub:HuggingFaceH4/MATH-500/test.jsonl"
    assert data.sha256 == MATH500_SHA256 and len(data.problems) == 500

    def offline(repo_id: str, filename: str, *, repo_type: str) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        ConfigError,
        match=r"could not fetch HuggingFaceH4/MATH-500/test\.jsonl from the Hugging Face hub"
        r" \(OSError: network is unreachable\); pass a local JSONL file instead",
    ):
        load_problems()
