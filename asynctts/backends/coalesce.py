"""Coalescing: items submitted by concurrent callers within a short window travel as one request.

Rules:
- Knows nothing of PRMs or HTTP: it calls the given `send(items) -> results` (one result per
  item, in order) and hands each caller its own result or error.
- A batch waits at most `window_s` after its first item, and leaves at once when it holds
  `max_batch` items.
- A batch rejected for good (`is_splittable(error)`, by default a `RequestRejected` such as
  a 400) is bisected and the halves resent, so only the item that caused the rejection fails.
  Any other error fails every item of the batch (a host that does not resolve or a failed TLS
  handshake would fail every half alike).
- A caller that is cancelled stops waiting; its item leaves a batch not yet sent, and a batch
  in flight goes on for the others.
- Every send runs in a task the coalescer owns; `aclose()` sends what is pending and waits for
  all of them (or cancels them if `aclose` itself is cancelled): nothing is left running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from asynctts.errors import RequestRejected

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

log = structlog.get_logger("asynctts.backends.coalesce")


class CoalescerClosed(RuntimeError):
    """Raised to callers whose batch could not be sent because the coalescer shut down."""


def rejected_for_good(error: BaseException) -> bool:
    """Whether the server refused these items (a 4xx), so a batch should be bisected: resending
    them all cannot help, a part of them may pass."""
    return isinstance(error, RequestRejected)


@dataclass(eq=False, slots=True)
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT] = field(repr=False)


class Coalescer(Generic[ItemT, ResultT]):
    """Batches items from concurrent callers into single `send` calls."""

    def __init__(
        self,
        send: Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT]]],
        *,
        max_batch: int = 64,
        window_s: float = 0.002,
        is_splittable: Callable[[BaseException], bool] = rejected_for_good,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"Coalescer max_batch={max_batch}: need >= 1")
        if window_s < 0:
            raise ValueError(f"Coalescer window_s={window_s}: need >= 0")
        self._send = send
        self._max_batch = max_batch
        self._window_s = window_s
        self._is_splittable = is_splittable
        self._pending: list[_Entry[ItemT, ResultT]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Batches being sent right now."""
        return len(self._tasks)

    async def submit(self, item: ItemT) -> ResultT:
        """The result of `item`, once the batch holding it has been sent.

        Raises: whatever `send` raised for this item's batch.
        """
        futures = self._enqueue([item])
        try:
            return await futures[0]
        finally:
            self._forget_cancelled(futures)

    async def submit_many(self, items: Sequence[ItemT]) -> list[ResultT | Exception]:
        """Each item's result, or the exception its batch failed with, in order. The items
        may travel in different batches."""
        futures = self._enqueue(items)
        if not futures:
            return []
        try:
            await asyncio.wait(futures)
        finally:
            for future in futures:
                future.cancel()  # a no-op on done futures; frees unsent items if we were cancelled
            self._forget_cancelled(futures)
        outcomes: list[ResultT | Exception] = []
        for future in futures:
            error = future.exception()
            if error is None:
                outcomes.append(future.result())
            elif isinstance(error, Exception):
                outcomes.append(error)
            else:
                raise error  # not an error of the batch: e.g. KeyboardInterrupt
        return outcomes

    async def aclose(self) -> None:
        """Send what is pending, then wait until every batch is done. Later submits raise."""
        self._closed = True
        self._flush()
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            raise

    async def __aenter__(self) -> Coalescer[ItemT, ResultT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _enqueue(self, items: Sequence[ItemT]) -> list[asyncio.Future[ResultT]]:
        if self._closed:
            raise CoalescerClosed("the coalescer is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ResultT]] = []
        for item in items:
            future: asyncio.Future[ResultT] = loop.create_future()
            self._pending.append(_Entry(item, future))
            futures.append(future)
            if len(self._pending) >= self._max_batch:
                self._flush()
        if self._pending and self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return futures

    def _forget_cancelled(self, futures: Sequence[asyncio.Future[ResultT]]) -> None:
        """Drop cancelled callers' items from the batch being gathered."""
        if any(future.cancelled() for future in futures):
            self._pending = [e for e in self._pending if not e.future.cancelled()]

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        live = [entry for entry in self._pending if not entry.future.done()]
        self._pending = []
        if not live:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, entries: Sequence[_Entry[ItemT, ResultT]]) -> None:
        """Send one batch and settle every entry's future. Never raises but CancelledError."""
        entries = [entry for entry in entries if not entry.future.done()]
        if not entries:
            return
        try:
            results = await self._send([entry.item for entry in entries])
        except asyncio.CancelledError:
            _fail(entries, CoalescerClosed("the coalescer was closed before the batch was sent"))
            raise
        except Exception as error:  # forwarded to every caller of the batch, not swallowed
            if len(entries) > 1 and self._is_splittable(error):
                log.info("batch_bisected", items=len(entries), error=type(error).__name__)
                half = len(entries) // 2
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._deliver(entries[:half]))
                    group.create_task(self._deliver(entries[half:]))
            else:
                _fail(entries, error)
            return
        if len(results) != len(entries):
            _fail(entries, ValueError(f"send returned {len(results)} results for {len(entries)}"))
            return
        for entry, result in zip(entries, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)


def _fail(entries: Sequence[_Entry[ItemT, ResultT]], error: BaseException) -> None:
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(error)
