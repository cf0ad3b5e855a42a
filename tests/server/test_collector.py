"""The collector while serving: frozen heap, serving thresholds, every pause counted, all undone after."""

from __future__ import annotations

import gc

from fedmezo.server.collector import SERVING_THRESHOLDS, serving_collector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_serving_collector_freezes_sets_thresholds_and_restores() -> None:
    before = gc.get_threshold()
    assert before != SERVING_THRESHOLDS
    with serving_collector():
        assert gc.get_threshold() == SERVING_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # every object alive at entry is out of the collector's sight
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_meter_counts_each_collection_and_its_pause() -> None:
    with serving_collector() as meter:
        gc.collect(0)
        gc.collect(2)
        young, _, full = meter.collections
        assert young >= 1 and full >= 1
        assert 0.0 < meter.longest_s <= meter.total_s
        counted = sum(meter.collections)
    gc.collect()
    assert sum(meter.collections) == counted  # the callback is gone after the block
    line = meter.summary()
    assert f"{counted} collections" in line and "longest pause" in line


def test_garbage_made_while_serving_is_still_freed() -> None:
    """Frozen is what existed at entry; cycles made while serving are collected as usual."""
    with serving_collector():
        for _ in range(100):
            _Cycle()
        assert gc.collect() >= 100
