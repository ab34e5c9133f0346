"""The coalescer, driven by `send` coroutines written here (its own input, not a fake of a
component): batching, splitting, bisection, cancellation and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asynctts.backends.coalesce import Coalescer, CoalescerClosed, rejected_for_good
from asynctts.errors import RequestRejected, ServerError

LONG_WINDOW_S = 3600.0  # batches leave because they are full or flushed, never by the clock


class Recorder:
    """A `send` that answers item * 10, rejects batches holding a bad item, and records calls."""

    def __init__(self, bad: frozenset[int] = frozenset(), gate: asyncio.Event | None = None):
        self.bad = bad
        self.gate = gate
        self.calls: list[list[int]] = []
        self.called = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        rejected = self.bad.intersection(items)
        if rejected:
            raise RequestRejected(f"400: bad items {sorted(rejected)}", 400)
        return [item * 10 for item in items]


async def test_concurrent_callers_share_one_send() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=3, window_s=LONG_WINDOW_S)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), coalescer.submit(3))
    assert list(results) == [10, 20, 30]
    assert send.calls == [[1, 2, 3]]


async def test_the_window_sends_a_partial_batch() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=100, window_s=0.001)
    assert list(await asyncio.gather(coalescer.submit(1), coalescer.submit(2))) == [10, 20]
    assert send.calls == [[1, 2]]


async def test_max_batch_splits_a_burst() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=2, window_s=0)
    assert await coalescer.submit_many([1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert send.calls == [[1, 2], [3, 4], [5]]


async def test_bisection_isolates_the_rejected_item() -> None:
    send = Recorder(bad=frozenset({3}))
    coalescer = Coalescer(send, max_batch=4, window_s=LONG_WINDOW_S)
    outcomes = await coalescer.submit_many([1, 2, 3, 4])
    assert outcomes[:2] == [10, 20]
    assert isinstance(outcomes[2], RequestRejected)
    assert str(outcomes[2]) == "400: bad items [3]"
    assert outcomes[3] == 40
    assert sorted(send.calls) == sorted([[1, 2, 3, 4], [1, 2], [3, 4], [3], [4]])


async def test_transient_errors_fail_the_whole_batch_without_bisecting() -> None:
    calls: list[list[int]] = []

    async def send(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        raise ServerError("503", 503)

    coalescer = Coalescer(send, max_batch=3, window_s=LONG_WINDOW_S)
    outcomes = await coalescer.submit_many([1, 2, 3])
    assert all(isinstance(o, ServerError) for o in outcomes)
    assert calls == [[1, 2, 3]]


def test_only_final_rejections_are_split() -> None:
    assert rejected_for_good(RequestRejected("400", 400))
    assert not rejected_for_good(ServerError("500", 500))
    assert not rejected_for_good(ValueError("x"))


async def test_custom_split_predicate() -> None:
    async def send(items: Sequence[int]) -> list[int]:
        if 2 in items:
            raise ServerError("500", 500)
        return list(items)

    coalescer = Coalescer(send, max_batch=2, window_s=LONG_WINDOW_S, is_splittable=lambda e: True)
    outcomes = await coalescer.submit_many([1, 2])
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ServerError)


async def test_submit_raises_the_batch_error() -> None:
    coalescer = Coalescer(Recorder(bad=frozenset({7})), max_batch=1, window_s=0)
    with pytest.raises(RequestRejected, match=r"bad items \[7\]"):
        await coalescer.submit(7)


async def test_a_send_with_the_wrong_number_of_results_fails_its_items() -> None:
    async def send(items: Sequence[int]) -> list[int]:
        return [1]

    coalescer = Coalescer(send, max_batch=2, window_s=LONG_WINDOW_S)
    outcomes = await coalescer.submit_many([1, 2])
    assert [str(o) for o in outcomes] == ["send returned 1 results for 2"] * 2


async def test_a_cancelled_caller_leaves_the_batch_in_flight_for_the_others() -> None:
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer = Coalescer(send, max_batch=3, window_s=LONG_WINDOW_S)
    callers = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2, 3)]
    await send.called.wait()
    callers[0].cancel()
    gate.set()
    assert await callers[1] == 20
    assert await callers[2] == 30
    with pytest.raises(asyncio.CancelledError):
        await callers[0]
    assert send.calls == [[1, 2, 3]]


async def test_a_caller_cancelled_before_the_flush_drops_its_item() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=10, window_s=LONG_WINDOW_S)
    leaving = asyncio.create_task(coalescer.submit(1))
    staying = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    await coalescer.aclose()  # flushes what is pending
    assert await staying == 20
    assert send.calls == [[2]]


async def test_a_cancelled_item_takes_no_place_in_the_batch() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=2, window_s=LONG_WINDOW_S)
    leaving = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    assert list(await asyncio.gather(coalescer.submit(2), coalescer.submit(3))) == [20, 30]
    assert send.calls == [[2, 3]]


async def test_a_cancelled_submit_many_frees_its_unsent_items() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=10, window_s=LONG_WINDOW_S)
    task = asyncio.create_task(coalescer.submit_many([1, 2, 3]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await coalescer.aclose()
    assert send.calls == []


async def test_aclose_sends_what_is_pending_and_leaves_no_task() -> None:
    send = Recorder()
    coalescer = Coalescer(send, max_batch=10, window_s=LONG_WINDOW_S)
    callers = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    await coalescer.aclose()
    assert coalescer.in_flight == 0
    assert [await c for c in callers] == [10, 20]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(CoalescerClosed):
        await coalescer.submit(3)


async def test_a_cancelled_aclose_cancels_the_batches_and_fails_their_callers() -> None:
    send = Recorder(gate=asyncio.Event())  # never released
    coalescer = Coalescer(send, max_batch=2, window_s=LONG_WINDOW_S)
    callers = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
    await send.called.wait()
    closing = asyncio.create_task(coalescer.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    for caller in callers:
        with pytest.raises(CoalescerClosed, match="closed before the batch was sent"):
            await caller
    assert coalescer.in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_async_with_closes() -> None:
    send = Recorder()
    async with Coalescer(send, max_batch=10, window_s=LONG_WINDOW_S) as coalescer:
        caller = asyncio.create_task(coalescer.submit(4))
        await asyncio.sleep(0)
    assert await caller == 40


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_batch=0"):
        Coalescer(Recorder(), max_batch=0)
    with pytest.raises(ValueError, match="window_s=-1"):
        Coalescer(Recorder(), window_s=-1)


@settings(max_examples=60, deadline=None)
@given(
    callers=st.lists(st.lists(st.integers(0, 30), max_size=6), min_size=1, max_size=6),
    bad=st.frozensets(st.integers(0, 30), max_size=3),
    max_batch=st.integers(1, 8),
)
def test_every_item_gets_exactly_its_own_result(
    callers: list[list[int]], bad: frozenset[int], max_batch: int
) -> None:
    async def scenario() -> list[list[int | Exception]]:
        coalescer = Coalescer(Recorder(bad=bad), max_batch=max_batch, window_s=0)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coalescer.submit_many(items)) for items in callers]
        await coalescer.aclose()
        return [task.result() for task in tasks]

    for items, outcomes in zip(callers, asyncio.run(scenario()), strict=True):
        assert len(outcomes) == len(items)
        for item, outcome in zip(items, outcomes, strict=True):
            if item in bad:
                assert isinstance(outcome, RequestRejected)
                assert str(outcome) == f"400: bad items [{item}]"
            else:
                assert outcome == item * 10
