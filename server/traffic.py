"""Byte accounting at the gRPC layer: serialized request and response sizes per client per round.

Attribution: a message that names a round (a task, an update, a round delta, a fingerprint report)
counts for that round; heartbeats and empty long-polls count for the open round (or round 0 when
none is open); Join and checkpoint downloads count for round 0 (setup and resync, outside rounds).
HTTP/2 framing and metadata are not counted. Totals live in memory and are flushed to the store
at round close and shutdown (a SIGKILL can lose the accounting since the last flush, nothing else).
"""

from __future__ import annotations

import threading
from collections import defaultdict

from fedmezo.fl.records import TrafficRecord
from fedmezo.server.store import Store

__all__ = ["TrafficMeter"]


class TrafficMeter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._totals: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        self._pending: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        self._run_up = self._run_down = 0  # whole run, all clients: GetStatus reads them on every call
        for rec in store.list_traffic():
            self._totals[(rec.round_id, rec.client_id)] = [rec.bytes_up, rec.bytes_down]
            self._run_up += rec.bytes_up
            self._run_down += rec.bytes_down

    def record(self, client_id: str, round_id: int, bytes_up: int, bytes_down: int) -> None:
        with self._lock:
            for table in (self._totals, self._pending):
                cell = table[(round_id, client_id)]
                cell[0] += bytes_up
                cell[1] += bytes_down
            self._run_up += bytes_up
            self._run_down += bytes_down

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0])
        self._store.add_traffic(
            TrafficRecord(r, c, up, down) for (r, c), (up, down) in sorted(pending.items())
        )

    def run_totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) over the whole run and every client."""
        with self._lock:
            return self._run_up, self._run_down

    def records(self) -> list[TrafficRecord]:
        with self._lock:
            return [TrafficRecord(r, c, up, down) for (r, c), (up, down) in sorted(self._totals.items())]

    def by_round(self, round_id: int) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {c: (up, down) for (r, c), (up, down) in self._totals.items() if r == round_id}

    def by_client(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for rec in self.records():
            up, down = out.get(rec.client_id, (0, 0))
            out[rec.client_id] = (up + rec.bytes_up, down + rec.bytes_down)
        return out
