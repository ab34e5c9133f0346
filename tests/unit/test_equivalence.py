"""asynctts.equivalence: grouping and grading with math-verify in real worker processes.

Worker processes are real (`python -m asynctts.verify_worker`); the hang and crash tests start
theirs with the worker's test-only fault variable set, and the kill test kills one by its pid.
Grading verdicts are checked against math-verify called directly in this process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import math_verify
import pytest
from structlog.testing import capture_logs

from asynctts.answers import extract_boxed, normalize
from asynctts.equivalence import Equivalence, EquivalenceStatistics
from asynctts.errors import ConfigError
from asynctts.verify_worker import FAULT_ENV

# A comparison math-verify spends seconds on in interruptible Python code (3**10**8).
SLOW = r"3^{10^{8}}"

# Generous bound that turns a hang into a clear failure; not a timing assertion.
NO_HANG_S = 60


def wrap(answer: str) -> str:
    """How `equal` hands an extracted answer to math-verify (the module rules)."""
    return "\\boxed{" + answer + "}"


def math_verify_says(gold: str, answer: str) -> bool:
    """A direct, in-process math-verify call with its defaults: what grading must equal."""
    return bool(math_verify.verify(math_verify.parse(wrap(gold)), math_verify.parse(wrap(answer))))


@pytest.fixture(scope="module")
def patient() -> Iterator[Equivalence]:
    """Deadlines far beyond any parse here: a verdict, never None, on a busy machine."""
    instance = Equivalence(timeout_s=120.0, comparison_timeout_s=60.0)
    yield instance
    asyncio.run(instance.aclose())


def worker_pids() -> set[int]:
    """This process's verify workers, read from /proc."""
    pids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # it ended while we looked
        if int(fields[1]) == os.getpid() and b"asynctts.verify_worker" in command:
            pids.add(int(stat.parent.name))
    return pids


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.parametrize(
    ("answers", "groups"),
    [
        (["0.5", r"\frac{1}{2}"], [0, 0]),
        ([r"\frac{1}{2}", r"\dfrac12"], [0, 0]),
        (["(1,2)", "(2,1)"], [0, 1]),  # tuples: order matters
        (["[0,1)", "[0,1]"], [0, 1]),  # intervals: the brackets matter
        ([r"\{1,2\}", r"\{2,1\}"], [0, 0]),  # sets: order does not
        (["(1,2)", r"\{1,2\}"], [0, 1]),  # a tuple is not a set
        ([r"10\%", "10"], [0, 0]),  # as math-verify (and normalize) decide
        ([r"10\%", "0.1"], [0, 1]),  # so a percentage does not also equal its fraction
        ([r"90^\circ", "90"], [0, 0]),
        ([r"\text{(A)}", "A"], [0, 0]),  # MATH multiple choice
        (["A", "B"], [0, 1]),
        (["2", "3"], [0, 1]),
        ([r"\sqrt{2}", r"2^{1/2}"], [0, 0]),
        (["x = 3", "3"], [0, 0]),
    ],
)
async def test_group_pairs(equivalence: Equivalence, answers: list[str], groups: list[int]) -> None:
    assert await equivalence.group(answers) == groups


async def test_group_ids_are_numbered_in_first_seen_order(equivalence: Equivalence) -> None:
    answers = [
        "7", None, "0.5", r"\frac{1}{2}", "(1,2)", "(2,1)", r"\{2,1\}", None, r"\{1,2\}",
        "[0,1)", r"\dfrac12", "7.0", "[0,1]",
    ]  # fmt: skip
    assert await equivalence.group(answers) == [0, None, 1, 1, 2, 3, 4, None, 4, 5, 1, 0, 6]


async def test_group_handles_none_and_empty_input(equivalence: Equivalence) -> None:
    assert await equivalence.group([]) == []
    assert await equivalence.group([None, None]) == [None, None]
    assert await equivalence.group([None, "5"]) == [None, 0]


async def test_votes_of_equal_normalized_strings_never_reach_a_worker(
    equivalence: Equivalence,
) -> None:
    before = equivalence.statistics()
    answers = [r"\frac12", r"\dfrac{1}{2}", r"$\frac{1}{2}$.", None, r"\tfrac 12"]
    assert await equivalence.group(answers) == [0, 0, 0, None, 0]
    assert equivalence.statistics() == before


async def test_grading_always_asks_math_verify(equivalence: Equivalence) -> None:
    """No fast path, not even for identical strings: math-verify parses nothing from
    "\\boxed{\\text{}}", so it says False, and so does `equal`."""
    before = equivalence.statistics()
    assert await equivalence.equal(r"\frac12", r"\dfrac{1}{2}") is True
    assert await equivalence.equal("7", "7") is True
    assert await equivalence.equal(r"\text{}", r"\text{}") is False
    assert math_verify_says(r"\text{}", r"\text{}") is False
    after = equivalence.statistics()
    assert (after.worker_tasks, after.comparisons) == (
        before.worker_tasks + 3,
        before.comparisons + 3,
    )


async def test_distinct_forms_are_grouped_in_one_worker_task(equivalence: Equivalence) -> None:
    before = equivalence.statistics()
    forms = ["0.5", r"\frac{1}{2}", "2", r"\frac{4}{2}", "3"]
    assert await equivalence.group(forms * 50) == [0, 0, 1, 1, 2] * 50
    after = equivalence.statistics()
    assert after.worker_tasks == before.worker_tasks + 1
    # "\frac{1}{2}" vs "0.5"; "2" vs "0.5"; "\frac{4}{2}" vs "0.5", "2"; "3" vs "0.5", "2"
    assert after.comparisons - before.comparisons == 6


@pytest.mark.parametrize(
    ("gold", "answer", "verdict"),
    [
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True),
        (r"\text{(C)}", "C", True),
        ("(1,2)", "(2,1)", False),
        ("5", "6", False),
        (r"\frac{1}{2}", r"\boxed{\frac{1}{2}}", True),
    ],
)
async def test_equal(equivalence: Equivalence, gold: str, answer: str, verdict: bool) -> None:
    assert await equivalence.equal(gold, answer) is verdict


@pytest.mark.parametrize(
    ("gold", "answer", "verdict"),
    [
        # math-verify reads "10\%" as 1/10; votes (normalize) drop the percent sign instead
        ("0.1", r"10\%", True),
        (r"10\%", "0.1", True),
        (r"10\%", "10", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"90^\circ", "90", True),
        ("90", r"90^\circ", True),
        (r"\{1,2\}", "(1,2)", True),  # equal for grading, never one group for votes
        ("(1,2)", "(2,1)", False),
        ("[0,1)", "[0,1]", False),
    ],
)
async def test_equal_is_math_verify_unchanged(
    patient: Equivalence, gold: str, answer: str, verdict: bool
) -> None:
    assert math_verify_says(gold, answer) is verdict
    assert await patient.equal(gold, answer) is verdict


async def test_percent_grades_as_math_verify_but_votes_as_normalize(patient: Equivalence) -> None:
    assert normalize(r"10\%") == "10"
    assert await patient.group(["0.1", r"10\%"]) == [0, 1]
    assert await patient.equal("0.1", r"10\%") is True


def sample_pairs(math500: list[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    """Seeded (gold, answer) pairs from MATH-500's answers: each gold against its normalized
    form, its \\dfrac spelling, another problem's answer, and a few rewritings."""
    rng = random.Random(11)
    golds = [r["answer"] for r in rng.sample(math500, count)]
    others = [r["answer"] for r in rng.sample(math500, count)]
    pairs: list[tuple[str, str]] = []
    for gold, other in zip(golds, others, strict=True):
        pairs += [
            (gold, normalize(gold)),
            (gold, gold.replace(r"\frac", r"\dfrac")),
            (gold, other),
            (other, gold + " "),
        ]
    pairs += [
        ("0.1", r"10\%"),
        (r"\frac{1}{2}", "0.5"),
        (r"90^\circ", "90"),
        ("5", r"5\text{ cm}"),
        (r"\text{(C)}", "C"),
        ("x=3", "3"),
        ("3", "x=3"),
        ("1,000", "1000"),
        (r"\$32", "32"),
        (r"\infty", r"-\infty"),
    ]
    return pairs


async def test_equal_agrees_with_math_verify_on_a_sample(
    patient: Equivalence, math500: list[dict[str, Any]]
) -> None:
    pairs = sample_pairs(math500, 25)
    verdicts = await asyncio.gather(*(patient.equal(gold, answer) for gold, answer in pairs))
    expected = [math_verify_says(gold, answer) for gold, answer in pairs]
    mismatches = [
        (pair, got, want)
        for pair, got, want in zip(pairs, verdicts, expected, strict=True)
        if got is not want
    ]
    assert mismatches == []
    assert 20 <= sum(expected) <= len(pairs) - 20  # the sample holds both verdicts


async def test_math500_golds_against_their_solutions_boxed_answers(
    patient: Equivalence, math500: list[dict[str, Any]]
) -> None:
    chosen = {r["unique_id"]: r for r in math500}
    ids = [
        "test/precalculus/807.json",
        "test/intermediate_algebra/1994.json",
        "test/algebra/2036.json",
        "test/algebra/1349.json",
        "test/precalculus/927.json",
    ]
    for unique_id in ids:
        record = chosen[unique_id]
        boxed = extract_boxed(record["solution"])
        assert boxed is not None
        assert math_verify_says(record["answer"], boxed) is True
        assert await patient.equal(record["answer"], boxed) is True


async def test_bad_answers_are_named(equivalence: Equivalence) -> None:
    with pytest.raises(TypeError, match=r"answers\[1\]=5: need a str or None"):
        await equivalence.group(["1", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"gold=None: need a str"):
        await equivalence.equal(None, "1")  # type: ignore[arg-type]


async def test_a_slow_comparison_falls_back_to_strings_for_that_pair_only() -> None:
    async with Equivalence(comparison_timeout_s=0.2) as equivalence:
        with capture_logs() as logs:
            groups = await equivalence.group([SLOW, "0.5", r"\frac{1}{2}"])
        assert await equivalence.equal(SLOW, "1") is None
        stats = equivalence.statistics()
    # "0.5" and "\frac{1}{2}" timed out against SLOW (not equal), then matched each other
    assert groups == [0, 1, 1]
    assert stats.timeouts == 3
    assert stats.lost_tasks == 0
    warning = next(e for e in logs if e["event"] == "equivalence.partly_grouped_by_string")
    assert warning["log_level"] == "warning"
    assert warning["timeouts"] == 2


async def test_the_task_budget_leaves_the_rest_to_strings() -> None:
    async with Equivalence(timeout_s=0.5, comparison_timeout_s=5.0) as equivalence:
        groups = await equivalence.group([SLOW, "0.5", r"\frac{1}{2}"])
        stats = equivalence.statistics()
    # the first comparison spends the whole budget; "\frac{1}{2}" is never compared
    assert groups == [0, 1, 2]
    assert (stats.timeouts, stats.skipped_forms, stats.lost_tasks) == (1, 1, 0)


async def test_max_pairs_caps_the_comparisons() -> None:
    forms = ["0.5", "1", r"\frac{1}{2}"]
    async with Equivalence(max_pairs=1) as capped:
        with capture_logs() as logs:
            assert await capped.group(forms) == [0, 1, 2]
        assert capped.statistics().comparisons == 1
        assert capped.statistics().skipped_forms == 1
    assert any(e["event"] == "equivalence.partly_grouped_by_string" for e in logs)
    async with Equivalence(max_pairs=0) as strings_only:
        assert await strings_only.group(forms) == [0, 1, 2]
        assert strings_only.statistics().worker_tasks == 0


async def test_a_stuck_worker_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Equivalence(timeout_s=0.5, comparison_timeout_s=0.2) as equivalence:
        # every task blocks SIGALRM and sleeps: as a big-integer operation in C, no timer stops it
        monkeypatch.setenv(FAULT_ENV, "hang")
        with capture_logs() as logs:
            async with asyncio.timeout(NO_HANG_S):
                groups = await equivalence.group(["0.5", r"\frac{1}{2}", r"\dfrac12", "0.5"])
        assert groups == [0, 1, 1, 0]  # by normalized string only
        assert equivalence.statistics().lost_tasks == 1
        lost = next(e for e in logs if e["event"] == "equivalence.worker_task_lost")
        assert lost["log_level"] == "warning"
        assert "worker killed" in lost["reason"]

        monkeypatch.undo()
        assert await equivalence.group(["0.5", r"\frac{1}{2}"]) == [0, 0]  # a new worker
        assert equivalence.statistics().workers_started == 2


async def test_a_worker_killed_mid_grouping_loses_that_grouping_only() -> None:
    before = worker_pids()
    async with Equivalence(timeout_s=30.0, comparison_timeout_s=30.0) as equivalence:
        assert await equivalence.group(["0.5", r"\frac{1}{2}"]) == [0, 0]
        (pid,) = worker_pids() - before
        idle = cpu_ticks(pid)
        with capture_logs() as logs:
            grouping = asyncio.create_task(equivalence.group([SLOW, "0.5", r"\frac{1}{2}"]))
            async with asyncio.timeout(NO_HANG_S):
                # 0.2 s of CPU: it is working on SLOW
                while cpu_ticks(pid) < idle + 20:  # noqa: ASYNC110 - watches the worker from outside
                    await asyncio.sleep(0.02)
            os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(NO_HANG_S):
                groups = await grouping
        assert groups == [0, 1, 2]  # by string: "0.5" and "\frac{1}{2}" were never compared
        lost = next(e for e in logs if e["event"] == "equivalence.worker_task_lost")
        assert (lost["log_level"], lost["reason"]) == ("warning", "worker killed by SIGKILL")
        assert not exists(pid)  # reaped

        assert await equivalence.group(["0.5", r"\frac{1}{2}"]) == [0, 0]
        stats = equivalence.statistics()
        assert (stats.worker_tasks, stats.lost_tasks, stats.workers_started) == (3, 1, 2)
        assert len(worker_pids() - before) == 1


async def test_no_worker_outlives_aclose() -> None:
    before = worker_pids()
    equivalence = Equivalence(workers=2)
    both = await asyncio.gather(
        equivalence.group(["0.5", r"\frac{1}{2}"]), equivalence.equal("2", r"\sqrt{4}")
    )
    assert both == [[0, 0], True]
    started = worker_pids() - before
    assert len(started) == equivalence.statistics().workers_started == 2
    await equivalence.aclose()
    assert worker_pids() - before == set()
    assert not any(exists(pid) for pid in started)


async def test_shared_workers_start_once_and_outlive_aclose() -> None:
    """(They stop at interpreter exit: tests/integration/test_any_program.py.)"""
    started: list[int] = []
    for forms, groups in (
        (["0.5", r"\frac{1}{2}"], [0, 0]),
        (["2", r"\sqrt{4}", "3"], [0, 0, 1]),
    ):
        async with Equivalence(share_workers=True, workers=3, timeout_s=2.0) as equivalence:
            assert await equivalence.group(forms) == groups
        started.append(equivalence.statistics().workers_started)
    assert started == [1, 0]


async def test_a_crashed_worker_leaves_equal_undecided(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Equivalence() as equivalence:
        monkeypatch.setenv(FAULT_ENV, "exit:3")
        with capture_logs() as logs:
            async with asyncio.timeout(NO_HANG_S):
                assert await equivalence.equal("0.5", r"\frac{1}{2}") is None
        assert equivalence.statistics().lost_tasks == 1
        lost = next(e for e in logs if e["event"] == "equivalence.worker_task_lost")
        assert lost["reason"] == "worker died with exit code 3"

        monkeypatch.undo()
        assert await equivalence.equal("0.5", r"\frac{1}{2}") is True


async def test_no_worker_starts_until_needed_and_closed_means_closed() -> None:
    equivalence = Equivalence()
    assert await equivalence.group(["1", "1.0", None]) == [0, 0, None]
    assert equivalence.statistics() == EquivalenceStatistics()
    await equivalence.aclose()
    await equivalence.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="this Equivalence is closed"):
        await equivalence.group(["1"])
    with pytest.raises(RuntimeError, match="this Equivalence is closed"):
        await equivalence.equal("1", "2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, r"workers=0: need an int >= 1"),
        ({"workers": 1.5}, r"workers=1.5: need an int >= 1"),
        ({"max_pairs": -1}, r"max_pairs=-1: need an int >= 0"),
        ({"timeout_s": 0}, r"timeout_s=0: need a finite number of seconds > 0"),
        ({"timeout_s": float("inf")}, r"timeout_s=inf: need a finite number"),
        ({"comparison_timeout_s": -1.0}, r"comparison_timeout_s=-1.0: need a finite"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Equivalence(**kwargs)  # type: ignore[arg-type]
