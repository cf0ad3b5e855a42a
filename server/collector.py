"""Python's garbage collector while the server serves: few, short pauses, and measured.

Every collection stops the event loop, so a pause delays every RPC in flight. Two things make the
defaults costly here. The model, torch and every imported module (~370,000 objects) live as long as
the process, so they are frozen out of the collector's sight (a full collection of them paused for
160 ms). And with the default thresholds (700, 10, 10) a full collection of what is left (per-client
records, waiting calls, cached deltas: it grows with the clients) ran every ~4 s under a 1,000-client
load, each a 35–90 ms pause, more than the whole p99 budget of a SubmitUpdate. With
SERVING_THRESHOLDS the young generations are collected a little less often than before (garbage is
still freed promptly), gen 1 in smaller batches, and the old one rarely: in the same load the collector's CPU
halved, its longest pause fell to 6–8 ms, and SubmitUpdate's p99 from 43–61 ms to 17–25 ms
(benchmarks/RESULTS.md, "Where a call's CPU goes, and garbage collection while serving").

CPython starts a young collection on *net* allocations (made minus freed). When a round opens, every
waiting GetTask is answered in a few passes of the event loop: the old calls' objects are freed while
the replies' are made, the net count stays near zero, and at 10,000 clients the young generation grew
to ~140,000 objects, collected in one 50–240 ms pause (twice: again when they reached gen 1).
CallPacer counts finished work instead (calls answered, long-polls woken), and collects the
generation due when much ended with no collection.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PACE_WORK",
    "SERVING_THRESHOLDS",
    "CallPacer",
    "CollectorMeter",
    "serving_collector",
    "work_done",
]

# gen0: objects allocated (net) before a young collection; gen1: young collections per gen1 one;
# gen2: gen1 collections before a full one is considered (CPython also waits until the old
# generation grew by 25 %).
SERVING_THRESHOLDS = (1_000, 5, 1_000)
# Units of work (calls answered, long-polls woken) with no collection before CallPacer collects: each
# leaves ~15 young objects (a GetTask reply waiting to be sent holds 13): young collections stay
# near 1,000 objects.
PACE_WORK = 64


@dataclass
class CollectorMeter:
    """Counts the collections and their pauses (a gc callback: it runs inside each collection)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # per generation
    total_s: float = 0.0
    longest_s: float = 0.0
    pacer: CallPacer | None = None  # set while serving
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.total_s += took
        self.longest_s = max(self.longest_s, took)
        self.collections[info["generation"]] += 1

    def summary(self) -> str:
        """One log line: what collecting garbage cost while serving."""
        young, middle, full = self.collections
        paced = self.pacer.paced if self.pacer is not None else 0
        return (
            f"garbage collection while serving: {young + middle + full} collections "
            f"({young}/{middle}/{full} by generation, {paced} paced by work), {self.total_s:.3f} s, "
            f"longest pause {self.longest_s * 1e3:.1f} ms"
        )


@dataclass
class CallPacer:
    """Collects when `every` units of work (see `work_done`) ended and no collection ran meanwhile
    (CPython's net count was starved by frees): the generation CPython would pick, young or gen 1,
    never a full collection. In steady serving CPython's own trigger comes first and this does nothing."""

    meter: CollectorMeter
    every: int = PACE_WORK
    paced: int = 0  # collections this pacer started
    _calls: int = 0
    _seen: int = 0

    def __call__(self) -> None:
        self._calls += 1
        if self._calls < self.every:
            return
        self._calls = 0
        if sum(self.meter.collections) == self._seen:
            counts, thresholds = gc.get_count(), gc.get_threshold()
            gc.collect(1 if counts[1] > thresholds[1] else 0)
            self.paced += 1
        self._seen = sum(self.meter.collections)


_pacer: CallPacer | None = None  # the collector is one per process, so is its pacer


def work_done() -> None:
    """A unit of serving work ended: a unary call's answer left (RequestInterceptor's `on_finished`),
    or a long-poll woke (wait_or_timeout). Paces collections while serving, else does nothing."""
    if _pacer is not None:
        _pacer()


@contextlib.contextmanager
def serving_collector() -> Iterator[CollectorMeter]:
    """Freeze what exists now, collect with SERVING_THRESHOLDS, pace by work done (see CallPacer)
    and measure, until the block ends; then the previous thresholds, no pacing, and unfrozen, so
    interpreter shutdown frees everything as usual."""
    global _pacer
    previous = gc.get_threshold()
    meter = CollectorMeter()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
    gc.callbacks.append(meter)
    _pacer = meter.pacer = CallPacer(meter)
    try:
        yield meter
    finally:
        _pacer = None
        gc.callbacks.remove(meter)
        gc.set_threshold(*previous)
        gc.unfreeze()
