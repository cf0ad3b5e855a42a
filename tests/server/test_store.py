"""One test suite for every Store implementation (MemoryStore and SqliteStore behave the same)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import (
    CheckpointRecord,
    ClientRecord,
    ClientUpdateStats,
    DeltaRecord,
    FingerprintRecord,
    NewEvent,
    RoundClose,
    RoundRecord,
    RoundState,
    TaskRecord,
    TrafficRecord,
    UpdateOutcome,
    UpdateRecord,
)
from fedmezo.server.sqlite_store import SCHEMA_VERSION, SqliteStore
from fedmezo.server.store import MemoryStore, Store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "state.sqlite")
    yield s
    s.close()


def _open(store: Store, round_id: int = 1, clients: tuple[str, ...] = ("a", "b")) -> None:
    store.open_round(
        RoundRecord(round_id, RoundState.OPEN, opened_at=10.0, deadline_at=70.0, selected=clients),
        [TaskRecord(round_id, c, 1e-6, 3) for c in clients],
        [NewEvent("round_opened", f"round {round_id}", 10.0, round_id=round_id)],
    )


def _update(
    round_id: int = 1, client: str = "a", grads: tuple[float, ...] = (0.5, -1.25, 2.0)
) -> UpdateRecord:
    return UpdateRecord(round_id, client, grads, (3.0, 2.5, 2.0), 0.1, 1024, "cpu", 10, 11.0)


def _close(round_id: int = 1, clients: tuple[str, ...] = ("a",)) -> RoundClose:
    delta = DeltaRecord(round_id, tuple((c, 3) for c in clients), (0.25, -0.5, 1.0), b"\x01\x02", b"f" * 32)
    return RoundClose(
        round_id,
        RoundState.CLOSED,
        closed_at=20.0,
        fingerprint=b"f" * 32,
        mean_loss=2.5,
        num_seeds=3,
        delta=delta,
        outcomes=tuple(UpdateOutcome(c, True, 1.0 / len(clients), model_diff=0.5) for c in clients),
        metrics={"eval_loss": 1.5},
    )


def test_meta_roundtrip(store: Store) -> None:
    assert store.get_meta("run_config") is None
    store.set_meta("run_config", '{"a": 1}')
    store.set_meta("run_config", '{"a": 2}')
    assert store.get_meta("run_config") == '{"a": 2}'


def test_clients_upsert_and_list(store: Store) -> None:
    store.upsert_client(
        ClientRecord("b", 1.0, 5, "cpu"), [NewEvent("client_joined", "b", 1.0, client_id="b")]
    )
    store.upsert_client(ClientRecord("a", 2.0, 7, "cuda"))
    store.upsert_client(ClientRecord("a", 3.0, 9, "cuda"))
    assert [c.client_id for c in store.list_clients()] == ["a", "b"]
    assert store.get_client("a") == ClientRecord("a", 3.0, 9, "cuda")
    assert store.get_client("zzz") is None
    assert [e.kind for e in store.list_events()] == ["client_joined"]


def test_clients_are_read_a_page_at_a_time(store: Store) -> None:
    for client_id in ("d", "b", "a", "c", "e"):
        store.upsert_client(ClientRecord(client_id, 1.0, 5, "cpu"))
    ids = lambda after="", limit=0: [c.client_id for c in store.list_clients(after, limit)]  # noqa: E731
    assert ids() == ["a", "b", "c", "d", "e"] == ids("", 0)
    assert ids("", 2) == ["a", "b"] and ids("b", 2) == ["c", "d"] and ids("d", 2) == ["e"]
    assert ids("e") == [] and ids("bb", 1) == ["c"]  # after any string, not only an existing id


def test_per_client_figures_for_a_page_are_the_whole_tables_rows(store: Store) -> None:
    _open(store, 1, ("a", "b", "c"))
    for client_id in ("a", "b", "c"):
        store.add_update(_update(1, client_id))
    store.close_round(_close(1, ("a", "c")))
    store.record_fingerprint(FingerprintRecord("a", 1, b"x" * 32, True, 5.0))
    store.record_fingerprint(FingerprintRecord("c", 1, b"y" * 32, False, 6.0))
    every_stat, every_fp = store.client_update_stats(), store.latest_fingerprints()
    for page in (["a"], ["b", "c"], ["c", "zz"], []):
        assert store.client_update_stats(page) == {c: every_stat[c] for c in page if c in every_stat}
        assert store.latest_fingerprints(page) == {c: every_fp[c] for c in page if c in every_fp}
    assert Store.client_update_stats(store, ["b"]) == store.client_update_stats(["b"])


def test_round_lifecycle(store: Store) -> None:
    assert store.rounds_completed() == 0 and store.open_round_record() is None
    _open(store)
    rec = store.get_round(1)
    assert rec is not None and rec.state == RoundState.OPEN and rec.selected == ("a", "b")
    assert math.isnan(rec.mean_loss)
    assert repr(store.open_round_record()) == repr(rec)  # NaN mean_loss: compare by value text
    assert [t.client_id for t in store.list_tasks(1)] == ["a", "b"]
    assert store.get_task(1, "a") == TaskRecord(1, "a", 1e-6, 3)
    store.extend_round(1, 130.0, 1)
    rec = store.get_round(1)
    assert rec is not None and rec.deadline_at == 130.0 and rec.extensions == 1
    store.add_update(_update())
    store.close_round(_close(), [NewEvent("round_closed", "1", 20.0, round_id=1)])
    rec = store.get_round(1)
    assert rec is not None and rec.state == RoundState.CLOSED and rec.mean_loss == 2.5 and rec.num_seeds == 3
    assert store.rounds_completed() == 1 and store.open_round_record() is None
    delta = store.get_delta(1)
    assert delta is not None and delta.coefficients == (0.25, -0.5, 1.0) and delta.participants == (("a", 3),)
    assert [d.round_id for d in store.list_deltas(1)] == [1] and store.list_deltas(2) == []
    assert store.list_outcomes(1) == [UpdateOutcome("a", True, 1.0, model_diff=0.5)]
    assert store.get_metrics(1) == {"eval_loss": 1.5}
    assert [e.kind for e in store.list_events()] == ["round_opened", "round_closed"]


def test_update_exact_fp32_roundtrip(store: Store) -> None:
    _open(store)
    grads = (1.1754943508222875e-38, -3.4028234663852886e38, 0.1 + 0.2 - 0.2)  # fp32-exact values only
    import numpy as np

    grads = tuple(float(np.float32(g)) for g in grads)
    store.add_update(_update(grads=grads))
    got = store.get_update(1, "a")
    assert got is not None and got.projected_grads == grads and got.same_payload(_update(grads=grads))
    assert [u.client_id for u in store.list_updates(1)] == ["a"]


@pytest.mark.parametrize(
    "bad",
    [
        lambda s: _open(s),  # round 1 exists
        lambda s: s.add_update(_update()),  # duplicate update
        lambda s: s.add_update(_update(client="zzz")),  # no task
        lambda s: s.add_update(_update(round_id=9)),  # no round
        lambda s: s.extend_round(9, 1.0, 1),  # unknown round
        lambda s: s.close_round(_close(round_id=9)),  # unknown round
        lambda s: s.close_round(_close(clients=("zzz",))),  # outcome without task
    ],
)
def test_failed_writes_change_nothing(store: Store, bad) -> None:  # type: ignore[no-untyped-def]
    _open(store)
    store.add_update(_update())
    before = repr((store.list_rounds(), store.list_updates(1), store.list_events(), store.list_tasks(1)))
    with pytest.raises(StoreError):
        bad(store)
    assert (
        repr((store.list_rounds(), store.list_updates(1), store.list_events(), store.list_tasks(1))) == before
    )


def test_close_twice_rejected(store: Store) -> None:
    _open(store)
    store.close_round(_close(clients=()))
    with pytest.raises(StoreError):
        store.close_round(_close(clients=()))
    with pytest.raises(StoreError):
        store.extend_round(1, 99.0, 1)


def test_fingerprints_traffic_checkpoints(store: Store) -> None:
    store.record_fingerprint(FingerprintRecord("a", 1, b"x" * 32, True, 5.0))
    store.record_fingerprint(FingerprintRecord("a", 2, b"y" * 32, False, 6.0))
    assert store.latest_fingerprints() == {"a": FingerprintRecord("a", 2, b"y" * 32, False, 6.0)}
    store.add_traffic([TrafficRecord(1, "a", 10, 20), TrafficRecord(1, "b", 1, 2)])
    store.add_traffic([TrafficRecord(1, "a", 5, 5)])
    store.add_traffic([])
    assert store.list_traffic() == [TrafficRecord(1, "a", 15, 25), TrafficRecord(1, "b", 1, 2)]
    assert store.latest_checkpoint() is None
    store.add_checkpoint(CheckpointRecord(0, "c0", b"s" * 32, 100, b"f" * 32))
    store.add_checkpoint(CheckpointRecord(5, "c5", b"t" * 32, 100, b"g" * 32))
    latest = store.latest_checkpoint()
    assert latest is not None and latest.round_id == 5 and latest.path == "c5"


def test_events_cursor(store: Store) -> None:
    cursors = store.add_events([NewEvent(f"k{i}", "m", float(i)) for i in range(5)])
    assert cursors == sorted(cursors) and len(set(cursors)) == 5
    assert [e.kind for e in store.list_events(after_cursor=cursors[1])] == ["k2", "k3", "k4"]
    assert [e.kind for e in store.list_events(after_cursor=cursors[1], limit=1)] == ["k2"]
    assert store.list_events(after_cursor=cursors[-1]) == []


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = SqliteStore(path)
    _open(s)
    s.add_update(_update())
    s.close()
    again = SqliteStore(path)
    assert again.get_update(1, "a") == _update()
    ro = SqliteStore(path, read_only=True)
    assert ro.open_round_record() is not None
    with pytest.raises(StoreError):
        ro.set_meta("x", "y")
    ro.close()
    again.close()
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "missing.sqlite", read_only=True)


def test_client_inference_peak_roundtrip(store: Store) -> None:
    store.upsert_client(ClientRecord("a", 1.0, 5, "cpu", "0.1.0", inference_peak_memory_bytes=123 << 20))
    got = store.get_client("a")
    assert got is not None and got.inference_peak_memory_bytes == 123 << 20
    store.upsert_client(ClientRecord("b", 1.0, 5, "cpu"))
    assert store.list_clients()[1].inference_peak_memory_bytes == 0


def test_eval_metrics_of_round_0_and_closed_rounds(store: Store) -> None:
    """add_metrics stores a model version's evaluation in its own transaction (round 0 = θ_0)."""
    store.add_metrics(0, {"eval_loss": 3.0, "exact_match": 0.0}, [NewEvent("eval", "v0", 5.0)])
    _open(store, clients=("a",))
    store.add_update(_update())
    store.close_round(_close())  # metrics={"eval_loss": 1.5} from the close itself
    store.add_metrics(1, {"eval_loss": 2.0, "exact_match": 0.25, "eval_examples": 4.0})
    store.add_metrics(1, {"exact_match": float("nan")})  # replaced; NaN survives the round trip
    assert store.get_metrics(0) == {"eval_loss": 3.0, "exact_match": 0.0}
    metrics = store.get_metrics(1)
    assert metrics["eval_loss"] == 2.0 and metrics["eval_examples"] == 4.0
    assert math.isnan(metrics["exact_match"])
    assert store.get_metrics(2) == {}
    assert [e.kind for e in store.list_events() if e.kind == "eval"] == ["eval"]
    assert store.rounds_completed() == 1  # metrics of version 0 are not a round


def test_sqlite_adds_the_inference_peak_column_to_a_version_1_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE clients (client_id TEXT PRIMARY KEY, joined_at REAL NOT NULL, "
        "num_examples INTEGER NOT NULL, device TEXT NOT NULL, client_version TEXT NOT NULL);"
        "INSERT INTO clients VALUES ('old', 1.0, 3, 'cpu', '0.0.1');"
    )
    old.commit()
    old.close()
    ro = SqliteStore(path, read_only=True)  # export of an old state dir: readable as it is
    assert ro.get_client("old") == ClientRecord("old", 1.0, 3, "cpu", "0.0.1")
    ro.close()
    s = SqliteStore(path)
    assert s.get_client("old") == ClientRecord("old", 1.0, 3, "cpu", "0.0.1", inference_peak_memory_bytes=0)
    s.upsert_client(ClientRecord("new", 2.0, 4, "cpu", "0.1.0", inference_peak_memory_bytes=7))
    assert s.get_client("new") == ClientRecord("new", 2.0, 4, "cpu", "0.1.0", 7)
    assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
    s.close()


def test_sqlite_adds_the_forward_passes_column_to_a_version_2_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)  # make it a schema-2 file: updates without forward_passes
    db.executescript(
        "DROP TABLE updates;"
        "CREATE TABLE updates (round_id INTEGER NOT NULL, client_id TEXT NOT NULL, projected_grads BLOB "
        "NOT NULL, losses BLOB NOT NULL, step_time_s REAL, peak_memory_bytes INTEGER NOT NULL, device TEXT "
        "NOT NULL, num_examples INTEGER NOT NULL, received_at REAL NOT NULL, "
        "PRIMARY KEY (round_id, client_id));"
        "UPDATE meta SET value='2' WHERE key='schema_version';"
    )
    db.commit()
    db.close()
    old = SqliteStore(path)
    _open(old, clients=("a", "b"))
    old.add_update(_update())
    old.close()
    db = sqlite3.connect(path)
    assert "forward_passes" in {row[1] for row in db.execute("PRAGMA table_info(updates)")}
    db.close()
    s = SqliteStore(path)
    assert s.list_updates(1)[0].forward_passes == 0
    s.add_update(dataclasses.replace(_update(), client_id="b", forward_passes=12))
    assert [u.forward_passes for u in s.list_updates(1)] == [0, 12]
    s.close()


def test_counts_cursor_and_open_round_follow_every_write(store: Store) -> None:
    """The cheap reads the hot paths use (counts, last cursor, the cached open round) never go stale."""
    assert store.count_clients() == 0 and store.last_event_cursor() == 0
    store.upsert_client(ClientRecord("a", 1.0, 5, "cpu"), [NewEvent("client_joined", "a", 1.0)])
    store.upsert_client(ClientRecord("a", 2.0, 5, "cpu"))
    store.upsert_client(ClientRecord("b", 2.0, 5, "cpu"))
    assert store.count_clients() == 2
    assert store.open_round_record() is None  # read (and, for SQLite, cached) before the round opens
    _open(store)
    first = store.open_round_record()
    assert first is not None and first.round_id == 1 and first.deadline_at == 70.0
    assert store.count_updates(1) == 0
    store.add_update(_update(client="b"))
    store.add_update(_update(client="a"))
    assert store.count_updates(1) == 2 and store.count_updates(2) == 0
    store.extend_round(1, 130.0, 1)
    extended = store.open_round_record()
    assert extended is not None and extended.deadline_at == 130.0 and extended.extensions == 1
    store.close_round(_close(clients=("a", "b")))
    assert store.open_round_record() is None
    _open(store, round_id=2)
    second = store.open_round_record()
    assert second is not None and second.round_id == 2
    assert store.last_event_cursor() == store.list_events()[-1].cursor
    with pytest.raises(StoreError):  # a refused write leaves the cached round as it was
        _open(store, round_id=2)
    assert repr(store.open_round_record()) == repr(second)  # NaN mean_loss: compare by value text


def test_sqlite_reader_sees_the_open_round_another_connection_writes(tmp_path: Path) -> None:
    """A read-only store (export, inspection) must not cache: the server process writes the file."""
    writer = SqliteStore(tmp_path / "state.sqlite")
    reader = SqliteStore(tmp_path / "state.sqlite", read_only=True)
    assert reader.open_round_record() is None
    _open(writer)
    opened = reader.open_round_record()
    assert opened is not None and opened.round_id == 1
    writer.add_update(_update())
    writer.close_round(_close())
    assert reader.open_round_record() is None
    reader.close()
    writer.close()


def test_sqlite_checkpoints_only_in_checkpoint_which_may_run_beside_the_writer(tmp_path: Path) -> None:
    """Commits never checkpoint (their fsyncs would stall the event loop); `checkpoint()` folds the WAL
    into the file from another thread while the writer goes on, and nothing written is lost."""
    path = tmp_path / "state.sqlite"
    s = SqliteStore(path)
    clients = tuple(f"c{i:03d}" for i in range(300))
    _open(s, clients=clients)
    size_before = path.stat().st_size
    for c in clients[:100]:
        s.add_update(_update(client=c))
    assert path.stat().st_size == size_before  # everything still in the WAL
    s.checkpoint()
    assert path.stat().st_size > size_before  # folded into the database file
    stop = threading.Event()

    def checkpoint_until_stopped() -> None:
        while not stop.is_set():
            s.checkpoint()

    worker = threading.Thread(target=checkpoint_until_stopped)
    worker.start()
    try:
        for c in clients[100:]:
            s.add_update(_update(client=c))
            s.sync()
    finally:
        stop.set()
        worker.join()
    assert s.count_updates(1) == len(clients)
    s.close()
    again = SqliteStore(path)  # reopening runs quick_check over every page
    assert [u.client_id for u in again.list_updates(1)] == list(clients)
    again.close()


def test_client_update_stats_match_the_round_by_round_reading(store: Store) -> None:
    """SqliteStore's two aggregate queries give what reading every update of every round gives."""
    _open(store, 1, ("a", "b"))
    store.add_update(_update(1, "a"))
    store.add_update(UpdateRecord(1, "b", (1.0,), (4.0, float("nan")), 0.1, 4096, "cpu", 10, 11.0))
    store.close_round(_close(1, ("a",)))  # b's update is not counted
    _open(store, 2, ("a", "b"))
    store.add_update(UpdateRecord(2, "a", (1.0,), (1.5, 0.5), 0.1, 512, "cpu", 10, 11.0))
    store.add_update(_update(2, "b"))
    store.close_round(_close(2, ("a", "b")))
    _open(store, 3, ("a",))
    store.add_update(UpdateRecord(3, "a", (1.0,), (7.0,), 0.1, 256, "cpu", 10, 11.0))  # round still open
    stats = store.client_update_stats()
    assert stats == Store.client_update_stats(store)
    assert set(stats) == {"a", "b"}
    assert stats["a"] == ClientUpdateStats(accepted_rounds=2, last_mean_loss=7.0, peak_memory_bytes=1024)
    assert stats["b"] == ClientUpdateStats(accepted_rounds=1, last_mean_loss=2.5, peak_memory_bytes=4096)


def test_has_update_and_tasks_follow_every_write_and_a_reopen(tmp_path: Path) -> None:
    """The writer answers the open round's task, answered and count reads from memory: they must say
    what the file says through adds, a close, the next round and a restart mid-round."""
    path = tmp_path / "state.sqlite"
    store = SqliteStore(path)
    _open(store)
    assert store.get_task(1, "a") == TaskRecord(1, "a", 1e-6, 3) and store.get_task(1, "zzz") is None
    assert not store.has_update(1, "a")
    store.add_update(_update(client="a"))
    assert store.has_update(1, "a") and not store.has_update(1, "b") and store.count_updates(1) == 1
    store.close_round(_close(clients=("a",)))
    assert store.has_update(1, "a") and store.count_updates(1) == 1  # a closed round: read from SQL
    assert store.get_task(1, "b") == TaskRecord(1, "b", 1e-6, 3)
    _open(store, round_id=2, clients=("b", "c"))
    store.add_update(_update(round_id=2, client="c"))
    store.close()
    reopened = SqliteStore(path)  # a restart mid-round rebuilds what is in memory from the file
    assert reopened.count_updates(2) == 1 and reopened.has_update(2, "c") and not reopened.has_update(2, "b")
    assert reopened.get_task(2, "a") is None and reopened.get_task(2, "b") == TaskRecord(2, "b", 1e-6, 3)
    with pytest.raises(StoreError, match="already stored"):
        reopened.add_update(_update(round_id=2, client="c"))
    with pytest.raises(StoreError, match="no task"):
        reopened.add_update(_update(round_id=2, client="a"))
    reopened.add_update(_update(round_id=2, client="b"))
    assert reopened.count_updates(2) == 2
    reopened.close()


def _as_read_from_the_file(path: Path, round_id: int) -> list[UpdateRecord]:
    reader = SqliteStore(path, read_only=True)  # no in-memory round: every read is SQL
    try:
        return reader.list_updates(round_id)
    finally:
        reader.close()


def test_the_open_rounds_updates_from_memory_are_what_the_file_reads_back(tmp_path: Path) -> None:
    """The writer lists the open round's updates (its close reads them all) from memory: the list must
    equal the file's, record for record and in ORDER BY client_id, through adds and a restart, whatever
    the values: NaN step time, int clock values for REAL columns, non-ASCII ids, inexact fp32 input."""
    path = tmp_path / "state.sqlite"
    ids = ("b", "a", "é", "Z", "a2", "ü-1")
    store = SqliteStore(path)
    _open(store, clients=ids)
    odd = [
        dataclasses.replace(_update(client="é"), step_time_s=math.nan, received_at=12),
        dataclasses.replace(_update(client="Z", grads=(0.1, 1e-40, -3.0)), step_time_s=2, received_at=13.5),
        _update(client="a"),
        _update(client="ü-1"),
    ]
    for update in odd:
        store.add_update(update)
    listed = store.list_updates(1)
    assert [u.client_id for u in listed] == ["Z", "a", "é", "ü-1"]  # code-point order, as SQLite sorts
    # repr, not ==: NaN != NaN, and repr also tells 12 from 12.0
    assert [repr(u) for u in listed] == [repr(u) for u in _as_read_from_the_file(path, 1)]
    assert listed[0].projected_grads[:2] == (float(np.float32(0.1)), float(np.float32(1e-40)))  # as fp32
    assert isinstance(listed[2].received_at, float) and math.isnan(listed[2].step_time_s)
    assert repr(store.get_update(1, "é")) == repr(listed[2]) and store.get_update(1, "b") is None
    store.close()
    reopened = SqliteStore(path)  # a restart mid-round: rebuilt from the file
    reopened.add_update(_update(client="b"))
    assert [repr(u) for u in reopened.list_updates(1)] == [repr(u) for u in _as_read_from_the_file(path, 1)]
    reopened.close()


def test_an_update_the_file_refused_is_not_counted(tmp_path: Path) -> None:
    """A failed insert rolls back, and the in-memory answered set must not claim it was stored."""
    import sqlite3

    path = tmp_path / "state.sqlite"
    store = SqliteStore(path)
    _open(store)
    other = sqlite3.connect(path)
    other.execute("CREATE TRIGGER full BEFORE INSERT ON updates BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    other.commit()
    with pytest.raises(StoreError, match="disk full"):
        store.add_update(_update(client="a"))
    assert not store.has_update(1, "a") and store.count_updates(1) == 0 and store.list_updates(1) == []
    other.execute("DROP TRIGGER full")
    other.commit()
    other.close()
    store.add_update(_update(client="a"))
    assert store.has_update(1, "a") and store.count_updates(1) == 1
    store.close()


def test_an_update_stores_its_base_fingerprint_in_the_same_write(store: Store) -> None:
    _open(store)
    reported = FingerprintRecord("a", 0, b"f" * 32, True, 11.0)
    store.add_update(_update(client="a"), fingerprint=reported)
    assert store.latest_fingerprints(["a"]) == {"a": reported}
    with pytest.raises(StoreError):  # refused (a duplicate): its fingerprint is not kept either
        store.add_update(_update(client="a"), fingerprint=FingerprintRecord("a", 0, b"g" * 32, False, 12.0))
    assert store.latest_fingerprints(["a"]) == {"a": reported}
