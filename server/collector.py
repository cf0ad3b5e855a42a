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
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SERVING_THRESHOLDS", "CollectorMeter", "serving_collector"]

# gen0: objects allocated (net) before a young collection; gen1: young collections per gen1 one;
# gen2: gen1 collections before a full one is considered (CPython also waits until the old
# generation grew by 25 %).
SERVING_THRESHOLDS = (1_000, 5, 1_000)


@dataclass
class CollectorMeter:
    """Counts the collections and their pauses (a gc callback: it runs inside each collection)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # per generation
    total_s: float = 0.0
    longest_s: float = 0.0
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
        return (
            f"garbage collection while serving: {young + middle + full} collections "
            f"({young}/{middle}/{full} by generation), {self.total_s:.3f} s, "
            f"longest pause {self.longest_s * 1e3:.1f} ms"
        )


@contextlib.contextmanager
def serving_collector() -> Iterator[CollectorMeter]:
    """Freeze what exists now, collect with SERVING_THRESHOLDS and measure, until the block ends;
    then the previous thresholds, and unfrozen, so interpreter shutdown frees everything as usual."""
    previous = gc.get_threshold()
    meter = CollectorMeter()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
    gc.callbacks.append(meter)
    try:
        yield meter
    finally:
        gc.callbacks.remove(meter)
        gc.set_threshold(*previous)
        gc.unfreeze()
