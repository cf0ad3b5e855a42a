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
from collections.abc import Iterable

from fedmezo.fl.records import TrafficRecord
from fedmezo.server.store import Store

__all__ = ["TrafficMeter"]


class TrafficMeter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        # Totals indexed the two ways status pages read them, so that a page costs its own rows and
        # not a pass over every (round, client) cell (10,000 clients x rounds of them)
        self._rounds: dict[int, dict[str, list[int]]] = defaultdict(dict)
        self._round_totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # a summary's one lookup
        self._clients: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._run_up = self._run_down = 0  # whole run, all clients: GetStatus reads them on every call
        for rec in store.list_traffic():
            self._add(rec.client_id, rec.round_id, rec.bytes_up, rec.bytes_down, pending=False)

    def record(self, client_id: str, round_id: int, bytes_up: int, bytes_down: int) -> None:
        with self._lock:
            self._add(client_id, round_id, bytes_up, bytes_down, pending=True)

    def _add(self, client_id: str, round_id: int, bytes_up: int, bytes_down: int, *, pending: bool) -> None:
        targets = [
            self._rounds[round_id].setdefault(client_id, [0, 0]),
            self._clients[client_id],
            self._round_totals[round_id],
        ]
        if pending:
            targets.append(self._pending[(round_id, client_id)])
        for target in targets:
            target[0] += bytes_up
            target[1] += bytes_down
        self._run_up += bytes_up
        self._run_down += bytes_down

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0])
        try:
            self._store.add_traffic(
                TrafficRecord(r, c, up, down) for (r, c), (up, down) in sorted(pending.items())
            )
        except BaseException:
            with self._lock:  # not stored: keep it for the next flush (the write rolled back whole)
                for key, (up, down) in pending.items():
                    cell = self._pending[key]
                    cell[0] += up
                    cell[1] += down
            raise

    def run_totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) over the whole run and every client."""
        with self._lock:
            return self._run_up, self._run_down

    def records(self) -> list[TrafficRecord]:
        with self._lock:
            return [
                TrafficRecord(r, c, up, down)
                for r in sorted(self._rounds)
                for c, (up, down) in sorted(self._rounds[r].items())
            ]

    def by_round(self, round_id: int) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {c: (up, down) for c, (up, down) in self._rounds.get(round_id, {}).items()}

    def round_totals(self, round_id: int) -> tuple[int, int]:
        """(bytes up, bytes down) of one round over every client."""
        with self._lock:
            up, down = self._round_totals.get(round_id, (0, 0))
            return up, down

    def by_client(self, client_ids: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """Whole-run (up, down) per client: every client, or only those of `client_ids`."""
        with self._lock:
            ids = list(self._clients) if client_ids is None else client_ids
            return {c: (self._clients[c][0], self._clients[c][1]) for c in ids if c in self._clients}
