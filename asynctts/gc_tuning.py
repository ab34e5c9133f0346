"""Garbage-collector settings for a process that keeps thousands of requests in flight.

Rules:
- Nothing in the library changes the collector by itself: its settings are process-wide, and
  a library must not change them behind its user's back. An application opts in, for a scope,
  with `throughput_gc()`; `asynctts eval` does, since it owns its process.
- Why it pays: an in-flight request holds ~70 GC-tracked objects inside aiohttp and ~20 in
  asynctts, and they live long enough to reach the oldest generation, so CPython's default
  thresholds (700, 10, 10) run young collections every few hundred requests and a full
  collection of the whole heap every few thousand. Requests create no reference cycles, so
  that work frees nothing: at 512 requests in flight it is 25-30% of the client's CPU.
  With young collections every 50,000 allocations and the objects alive at startup (modules,
  tokenizers) frozen out of full collections it is ~1% (benchmarks/overhead.py).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from asynctts.errors import ConfigError

__all__ = ["THROUGHPUT_GC_THRESHOLDS", "throughput_gc"]

# Young collections every 50,000 net allocations instead of 700; the older generations keep
# CPython's ratios (a middle collection every 20 young ones, a full one every 10 of those).
THROUGHPUT_GC_THRESHOLDS: Final = (50_000, 20, 10)


@contextmanager
def throughput_gc(young_threshold: int = THROUGHPUT_GC_THRESHOLDS[0]) -> Iterator[None]:
    """Within the block: objects alive on entry are frozen out of collections and young
    collections run every `young_threshold` allocations. On exit the thresholds and the
    frozen set are restored (objects frozen here are unfrozen).

        with asynctts.throughput_gc():
            asyncio.run(main())

    Enter it after the imports and the start-up work, so that what it freezes is what lives
    for the whole run. Cyclic garbage is still collected, only less often.

    Raises:
        ConfigError: `young_threshold` is below CPython's default of 700.
    """
    if isinstance(young_threshold, bool) or not isinstance(young_threshold, int):
        raise ConfigError(f"young_threshold={young_threshold!r}: need an int >= 700")
    if young_threshold < 700:
        raise ConfigError(
            f"young_threshold={young_threshold}: need >= 700 (CPython's default; lower "
            "collects more often, the opposite of what this is for)"
        )
    thresholds = gc.get_threshold()
    already_frozen = gc.get_freeze_count()
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    gc.set_threshold(young_threshold, *THROUGHPUT_GC_THRESHOLDS[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not already_frozen:  # leave an application's own freeze in place
            gc.unfreeze()
