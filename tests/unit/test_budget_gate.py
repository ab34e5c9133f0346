"""The batch budget's gate: a request holds an upper bound of its cost while in flight, waits
while requests in flight hold what it needs, is refused once the budget cannot cover it even
with none in flight, and the ledgers' actual spend (policy generated + PRM prompt tokens) is
what counts after."""

from __future__ import annotations

import asyncio

import pytest

from asynctts.backends.context import BatchBudgetExhausted, BudgetGate
from asynctts.errors import ConfigError
from asynctts.ledger import Attempt


def attempt(endpoint: str, prompt: float, completion: float) -> Attempt:
    return Attempt(
        endpoint, "/v1/x", ("0",), 1, 0.0, 0.0, 200,
        prompt_tokens=prompt, completion_tokens=completion,
    )  # fmt: skip


async def test_a_bound_waits_for_requests_in_flight_then_counts_only_the_actual() -> None:
    gate = BudgetGate(100)
    ledger = gate.ledger()
    order: list[str] = []
    first_sent = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with gate.hold(80):
            first_sent.set()
            await release_first.wait()
            ledger.record(attempt("policy", prompt=500, completion=30))  # prompt not counted
            order.append("first done")

    async def second() -> None:
        await first_sent.wait()
        async with gate.hold(60):  # 100 - 80 held: waits; then 100 - 30 spent: fits
            order.append("second sent")
            assert gate.held == 60 and gate.spent == 30

    async with asyncio.TaskGroup() as group:
        group.create_task(first())
        group.create_task(second())
        await first_sent.wait()
        await asyncio.sleep(0)
        assert order == [] and gate.held == 80
        release_first.set()
    assert order == ["first done", "second sent"]
    assert (gate.spent, gate.held) == (30, 0)
    ledger.record(attempt("prm", prompt=20, completion=0))  # PRM prompt tokens count
    assert gate.left == 50


async def test_a_bound_the_budget_cannot_cover_is_refused_and_holds_nothing() -> None:
    gate = BudgetGate(100)
    gate.ledger().record(attempt("policy", prompt=0, completion=70))
    with pytest.raises(
        BatchBudgetExhausted,
        match=r"batch budget exhausted: the request may cost up to 40 tokens, 30 of 100 are left",
    ):
        async with gate.hold(40):
            pass
    assert gate.held == 0
    async with gate.hold(30):
        assert gate.left == 0


def test_a_budget_must_be_a_finite_positive_number() -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=r"budget_tokens=.*: need a finite number > 0"):
            BudgetGate(bad)
