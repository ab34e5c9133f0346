"""`throughput_gc`: the settings inside the block, and everything restored after it."""

from __future__ import annotations

import gc

import pytest

from asynctts import ConfigError, throughput_gc
from asynctts.gc_tuning import THROUGHPUT_GC_THRESHOLDS


def test_inside_the_block_young_collections_are_rarer_and_startup_objects_frozen() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with throughput_gc():
        assert gc.get_threshold() == THROUGHPUT_GC_THRESHOLDS
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the modules and objects alive on entry
        assert gc.get_count()[0] < 700  # a collection ran on entry
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settings_are_restored_when_the_block_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="boom"), throughput_gc(10_000):
        assert gc.get_threshold() == (10_000, *THROUGHPUT_GC_THRESHOLDS[1:])
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_an_applications_own_freeze_is_left_in_place() -> None:
    gc.freeze()
    try:
        with throughput_gc():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_cyclic_garbage_is_still_collected_inside_the_block() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with throughput_gc():
        gc.collect()
        Node()
        assert gc.collect() >= 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (699, "young_threshold=699: need >= 700"),
        (0, "young_threshold=0: need >= 700"),
        (True, "young_threshold=True: need an int >= 700"),
        (5e4, "young_threshold=50000.0: need an int >= 700"),
    ],
)
def test_bad_thresholds_are_refused_before_anything_changes(value: object, message: str) -> None:
    before = gc.get_threshold()
    with pytest.raises(ConfigError, match=message), throughput_gc(value):  # type: ignore[arg-type]
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
