"""Byte accounting: the per-round and per-client views are kept as bytes arrive (a status page reads
its own rows), equal to summing every (round, client) cell, and the same after a restart."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.server.traffic import TrafficMeter


def _sums(meter: TrafficMeter) -> tuple[dict[int, dict[str, tuple[int, int]]], dict[str, tuple[int, int]]]:
    rounds: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
    clients: dict[str, tuple[int, int]] = {}
    for rec in meter.records():
        rounds[rec.round_id][rec.client_id] = (rec.bytes_up, rec.bytes_down)
        up, down = clients.get(rec.client_id, (0, 0))
        clients[rec.client_id] = (up + rec.bytes_up, down + rec.bytes_down)
    return rounds, clients


def test_views_equal_the_cells_and_survive_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite")
    meter = TrafficMeter(store)
    rng = random.Random(0)
    for _ in range(500):
        meter.record(f"c{rng.randrange(7)}", rng.randrange(4), rng.randrange(100), rng.randrange(1000))
        if rng.random() < 0.05:
            meter.flush()  # some bytes reach the store mid-way, the rest at the end
    meter.flush()
    for current in (meter, TrafficMeter(store)):  # the second one is rebuilt from the store
        rounds, clients = _sums(meter)
        for round_id in range(5):
            assert current.by_round(round_id) == rounds.get(round_id, {})
        assert current.by_client() == clients
        assert current.by_client(["c1", "c3", "nobody"]) == {c: clients[c] for c in ("c1", "c3")}
        assert current.run_totals() == (
            sum(up for up, _ in clients.values()),
            sum(down for _, down in clients.values()),
        )
    store.close()
