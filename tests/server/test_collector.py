"""The collector while serving: frozen heap, serving thresholds, every pause counted, all undone after."""

from __future__ import annotations

import gc

from fedmezo.server.collector import SERVING_THRESHOLDS, serving_collector, work_done


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


def _churn(calls: int, *, pace: bool) -> int:
    """What a round opening does: each answered call frees old objects and makes new ones that stay
    alive (replies waiting to be sent). Returns the young generation's size at the end."""
    old: list[list[int]] = [[] for _ in range(calls)]
    gc.collect()  # `old` is now in the old generation, as the waiting calls were
    young: list[list[int]] = []
    for _ in range(calls):
        old.pop()
        young.append([])
        if pace:
            work_done()
    return len(gc.get_objects(generation=0))


def test_pacer_collects_when_frees_starve_cpythons_net_count() -> None:
    with serving_collector() as meter:
        starved = _churn(20_000, pace=False)  # CPython's own trigger never fires: one huge young generation
        paced = _churn(20_000, pace=True)
        assert meter.pacer is not None and meter.pacer.paced > 100
        assert meter.collections[1] > 0  # gen 1 is collected too, not left to grow
    assert starved > 15_000
    assert paced < 2_000
    assert "paced by work" in meter.summary()


def test_pacer_is_idle_when_cpython_collects_and_outside_serving() -> None:
    with serving_collector() as meter:
        kept: list[list[list[int]]] = []
        for _ in range(2_000):  # ~20 objects a call and no frees: CPython's trigger comes first
            kept.append([[] for _ in range(20)])
            work_done()
        assert meter.pacer is not None and meter.pacer.paced <= 2
    work_done()  # no pacer outside serving: nothing happens
