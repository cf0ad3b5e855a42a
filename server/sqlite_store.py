"""`SqliteStore`: the durable Store, mapping each record type to its table in one SQLite file.
The file itself (schema, opening, the one writer connection, transactions, WAL sync and checkpoint,
the sqlite3.Error -> StoreError translation, the NaN/fp32 codecs) is `SqliteDatabase` in
sqlite_db.py, so this module is only the record-level queries.

Every mutating method is one transaction. The per-client writes that arrive by the thousand per
round (`add_update`, `upsert_client`, `record_fingerprint`) commit without the fsync and are made
durable by `sync()` (group commit): the server acknowledges them only after it, and the event loop
never waits for the disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import (
    CheckpointRecord,
    ClientRecord,
    ClientUpdateStats,
    DeltaRecord,
    EventRecord,
    FingerprintRecord,
    NewEvent,
    RoundClose,
    RoundRecord,
    RoundState,
    TaskRecord,
    TrafficRecord,
    UpdateOutcome,
    UpdateRecord,
    mean_loss,
)
from fedmezo.server.presence import PresenceRecord
from fedmezo.server.sqlite_db import (
    SCHEMA_VERSION,
    SqliteDatabase,
    f32_blob,
    f32_tuple,
    nan_to_null,
    null_to_nan,
)
from fedmezo.server.store import TRAFFIC_FLUSHES_KEY, Store, _check_close

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

_UNKNOWN = object()  # the open-round cache is empty


@dataclass
class _OpenRoundIndex:
    """The open round's tasks and its updates as stored, kept by the one writer: GetTask, SubmitUpdate and
    the close decision after every update ask these per call, and at 10,000 clients the SQL for them
    (a COUNT over the round's updates on every tick) was ~13 % of the server's CPU; reading the round's
    updates back at its close took ~0.35 s of the event loop (RESULTS.md, session 22)."""

    round_id: int
    tasks: dict[str, TaskRecord]
    answered: dict[str, UpdateRecord]  # each as list_updates would read it back from its row


class SqliteStore(Store):
    """Store in `path` (created if missing). `read_only=True` opens an existing file for export/inspection."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self._db = SqliteDatabase(path, read_only=read_only)
        self.path = self._db.path
        # The open round, read on nearly every RPC: cached by the one writer, dropped by every write to
        # `rounds`. A read-only store may watch a file another process writes, so it never caches.
        self._cache_open_round = not read_only
        self._open_round: RoundRecord | object | None = _UNKNOWN
        self._round_index: _OpenRoundIndex | None = None  # built on first use, dropped on open/close

    @staticmethod
    def _insert_events(db: sqlite3.Connection, events: Sequence[NewEvent]) -> list[int]:
        cursors = []
        for ev in events:
            cur = db.execute(
                "INSERT INTO events(time, kind, message, round_id, client_id) VALUES (?,?,?,?,?)",
                (ev.time, ev.kind, ev.message, ev.round_id, ev.client_id),
            )
            cursors.append(int(cur.lastrowid or 0))
        return cursors

    def sync(self) -> None:
        self._db.sync()

    def checkpoint(self) -> None:
        self._db.checkpoint()

    def close(self) -> None:
        self._db.close()

    # --- meta ---
    def get_meta(self, key: str) -> str | None:
        rows = self._db.query("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    # --- clients ---
    def upsert_client(self, client: ClientRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._db.transaction(defer_sync=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO clients(client_id, joined_at, num_examples, device, client_version, "
                "inference_peak_memory_bytes) VALUES (?,?,?,?,?,?)",
                (
                    client.client_id,
                    client.joined_at,
                    client.num_examples,
                    client.device,
                    client.client_version,
                    client.inference_peak_memory_bytes,
                ),
            )
            self._insert_events(db, events)

    def get_client(self, client_id: str) -> ClientRecord | None:
        rows = self._db.query("SELECT * FROM clients WHERE client_id=?", (client_id,))
        return ClientRecord(*rows[0]) if rows else None

    def list_clients(self, after: str = "", limit: int = 0) -> list[ClientRecord]:
        rows = self._db.query(
            "SELECT * FROM clients WHERE client_id > ? ORDER BY client_id LIMIT ?", (after, limit or -1)
        )  # the primary key's index: a page costs its own rows, not the whole table
        return [ClientRecord(*row) for row in rows]

    def count_clients(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM clients")[0][0])

    # --- rounds and tasks ---
    @staticmethod
    def _round(row: Sequence[Any]) -> RoundRecord:
        return RoundRecord(
            round_id=row[0],
            state=RoundState(row[1]),
            opened_at=row[2],
            deadline_at=row[3],
            selected=tuple(json.loads(row[4])),
            extensions=row[5],
            closed_at=row[6],
            fingerprint=bytes(row[7]),
            mean_loss=null_to_nan(row[8]),
            num_seeds=row[9],
        )

    def open_round(
        self, round_: RoundRecord, tasks: Sequence[TaskRecord], events: Sequence[NewEvent] = ()
    ) -> None:
        if any(t.round_id != round_.round_id for t in tasks):
            raise StoreError("every task must belong to the round being opened")
        with self._db.transaction() as db:
            self._open_round, self._round_index = _UNKNOWN, None
            if db.execute("SELECT 1 FROM rounds WHERE round_id=?", (round_.round_id,)).fetchone():
                raise StoreError(f"round {round_.round_id} already exists")
            db.execute(
                "INSERT INTO rounds VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    round_.round_id,
                    round_.state.value,
                    round_.opened_at,
                    round_.deadline_at,
                    json.dumps(list(round_.selected)),
                    round_.extensions,
                    round_.closed_at,
                    round_.fingerprint,
                    nan_to_null(round_.mean_loss),
                    round_.num_seeds,
                ),
            )
            db.executemany(
                "INSERT INTO tasks VALUES (?,?,?,?)",
                [(t.round_id, t.client_id, t.lr, t.local_steps) for t in tasks],
            )
            self._insert_events(db, events)

    def extend_round(
        self, round_id: int, deadline_at: float, extensions: int, events: Sequence[NewEvent] = ()
    ) -> None:
        with self._db.transaction() as db:
            self._open_round = _UNKNOWN
            cur = db.execute(
                "UPDATE rounds SET deadline_at=?, extensions=? WHERE round_id=? AND state=?",
                (deadline_at, extensions, round_id, RoundState.OPEN.value),
            )
            if cur.rowcount != 1:
                raise StoreError(f"round {round_id} is not open")
            self._insert_events(db, events)

    def close_round(self, close: RoundClose, events: Sequence[NewEvent] = ()) -> None:
        with self._db.transaction() as db:
            self._open_round, self._round_index = _UNKNOWN, None
            row = db.execute("SELECT * FROM rounds WHERE round_id=?", (close.round_id,)).fetchone()
            tasks = {
                r[0] for r in db.execute("SELECT client_id FROM tasks WHERE round_id=?", (close.round_id,))
            }
            _check_close(self._round(row) if row else None, close, tasks)
            db.execute(
                "UPDATE rounds SET state=?, closed_at=?, fingerprint=?, mean_loss=?, num_seeds=? "
                "WHERE round_id=?",
                (
                    close.state.value,
                    close.closed_at,
                    close.fingerprint,
                    nan_to_null(close.mean_loss),
                    close.num_seeds,
                    close.round_id,
                ),
            )
            d = close.delta
            db.execute(
                "INSERT INTO round_deltas VALUES (?,?,?,?,?)",
                (
                    d.round_id,
                    json.dumps([list(p) for p in d.participants]),
                    f32_blob(d.coefficients),
                    d.packed,
                    d.fingerprint,
                ),
            )
            db.executemany(
                "INSERT INTO outcomes VALUES (?,?,?,?,?,?)",
                [
                    (
                        close.round_id,
                        o.client_id,
                        int(o.accepted),
                        o.weight,
                        o.rejected_reason,
                        nan_to_null(o.model_diff),
                    )
                    for o in close.outcomes
                ],
            )
            db.executemany(
                "INSERT INTO metrics VALUES (?,?,?)",
                [(close.round_id, k, nan_to_null(v)) for k, v in sorted(close.metrics.items())],
            )
            self._insert_events(db, events)

    def get_round(self, round_id: int) -> RoundRecord | None:
        rows = self._db.query("SELECT * FROM rounds WHERE round_id=?", (round_id,))
        return self._round(rows[0]) if rows else None

    def list_rounds(self, from_round: int = 1, limit: int = 0) -> list[RoundRecord]:
        sql = "SELECT * FROM rounds WHERE round_id>=? ORDER BY round_id"
        args: list[Any] = [from_round]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._round(r) for r in self._db.query(sql, args)]

    def open_round_record(self) -> RoundRecord | None:
        with self._db.lock:
            if self._open_round is _UNKNOWN or not self._cache_open_round:
                rows = self._db.query(
                    "SELECT * FROM rounds WHERE state=? ORDER BY round_id DESC LIMIT 1",
                    (RoundState.OPEN.value,),
                )
                self._open_round = self._round(rows[0]) if rows else None
            assert self._open_round is None or isinstance(self._open_round, RoundRecord)
            return self._open_round

    def _index(self, round_id: int) -> _OpenRoundIndex | None:
        """The index when `round_id` is the open round and this store is the writer, else None (SQL)."""
        index = self._round_index
        if index is not None and index.round_id == round_id:
            return index
        if not self._cache_open_round:
            return None
        with self._db.lock:
            open_round = self.open_round_record()
            if open_round is None or open_round.round_id != round_id:
                return None
            tasks = self._db.query("SELECT * FROM tasks WHERE round_id=?", (round_id,))
            answered = self._db.query("SELECT * FROM updates WHERE round_id=?", (round_id,))
            self._round_index = _OpenRoundIndex(
                round_id, {r[1]: TaskRecord(*r) for r in tasks}, {r[1]: self._update(r) for r in answered}
            )
            return self._round_index

    def get_task(self, round_id: int, client_id: str) -> TaskRecord | None:
        index = self._index(round_id)
        if index is not None:
            return index.tasks.get(client_id)
        rows = self._db.query("SELECT * FROM tasks WHERE round_id=? AND client_id=?", (round_id, client_id))
        return TaskRecord(*rows[0]) if rows else None

    def list_tasks(self, round_id: int) -> list[TaskRecord]:
        rows = self._db.query("SELECT * FROM tasks WHERE round_id=? ORDER BY client_id", (round_id,))
        return [TaskRecord(*r) for r in rows]

    # --- updates ---
    @staticmethod
    def _update(row: Sequence[Any]) -> UpdateRecord:
        return UpdateRecord(
            round_id=row[0],
            client_id=row[1],
            projected_grads=f32_tuple(row[2]),
            losses=f32_tuple(row[3]),
            step_time_s=null_to_nan(row[4]),
            peak_memory_bytes=row[5],
            device=row[6],
            num_examples=row[7],
            received_at=row[8],
            forward_passes=row[9] if len(row) > 9 else 0,  # a read-only schema-2 file lacks it
        )

    def add_update(
        self,
        update: UpdateRecord,
        events: Sequence[NewEvent] = (),
        fingerprint: FingerprintRecord | None = None,
    ) -> None:
        key = (update.round_id, update.client_id)
        index = self._index(update.round_id)
        with self._db.transaction(defer_sync=True) as db:
            if index is not None:
                stored, has_task = update.client_id in index.answered, update.client_id in index.tasks
            else:
                sql = "SELECT 1 FROM {} WHERE round_id=? AND client_id=?"
                stored = db.execute(sql.format("updates"), key).fetchone() is not None
                has_task = db.execute(sql.format("tasks"), key).fetchone() is not None
            if stored:
                raise StoreError(f"update {key} already stored")
            if not has_task:
                raise StoreError(f"no task {key}")
            row = (
                update.round_id,
                update.client_id,
                f32_blob(update.projected_grads),
                f32_blob(update.losses),
                nan_to_null(float(update.step_time_s)),  # float(): as the REAL columns read back
                update.peak_memory_bytes,
                update.device,
                update.num_examples,
                float(update.received_at),
                update.forward_passes,
            )
            db.execute("INSERT INTO updates VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            if fingerprint is not None:
                self._insert_fingerprint(db, fingerprint)
            self._insert_events(db, events)
        if index is not None:  # committed: only now does the index say so, with the row decoded as read
            index.answered[update.client_id] = self._update(row)

    def count_updates(self, round_id: int) -> int:
        index = self._index(round_id)
        if index is not None:
            return len(index.answered)
        return int(self._db.query("SELECT COUNT(*) FROM updates WHERE round_id=?", (round_id,))[0][0])

    def has_update(self, round_id: int, client_id: str) -> bool:
        index = self._index(round_id)
        if index is not None:
            return client_id in index.answered
        sql = "SELECT 1 FROM updates WHERE round_id=? AND client_id=?"
        return bool(self._db.query(sql, (round_id, client_id)))

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None:
        index = self._index(round_id)
        if index is not None:
            return index.answered.get(client_id)
        rows = self._db.query("SELECT * FROM updates WHERE round_id=? AND client_id=?", (round_id, client_id))
        return self._update(rows[0]) if rows else None

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        index = self._index(round_id)
        if index is not None:  # sorted as ORDER BY client_id: SQLite's BINARY order of UTF-8 = code points
            return [index.answered[c] for c in sorted(index.answered)]
        rows = self._db.query("SELECT * FROM updates WHERE round_id=? ORDER BY client_id", (round_id,))
        return [self._update(r) for r in rows]

    def client_update_stats(self, client_ids: Collection[str] | None = None) -> dict[str, ClientUpdateStats]:
        """Two aggregate queries instead of decoding every update of every round in Python; for a page of
        clients, over that page's rows only (`_in`)."""
        where, params = _in("u.client_id", client_ids)
        totals = self._db.query(
            "SELECT u.client_id, COALESCE(SUM(o.accepted), 0), MAX(u.peak_memory_bytes) FROM updates u "
            f"LEFT JOIN outcomes o ON o.round_id = u.round_id AND o.client_id = u.client_id {where} "
            "GROUP BY u.client_id",
            params,
        )
        # SQLite fills the bare column `losses` from the row holding MAX(round_id): the newest update.
        where, params = _in("client_id", client_ids)
        rows = self._db.query(
            f"SELECT client_id, losses, MAX(round_id) FROM updates {where} GROUP BY client_id", params
        )
        newest = {client_id: losses for client_id, losses, _ in rows}
        out = {}
        for client_id, accepted, peak in totals:
            out[client_id] = ClientUpdateStats(
                int(accepted), mean_loss(f32_tuple(newest[client_id])), int(peak)
            )
        return out

    def list_outcomes(self, round_id: int) -> list[UpdateOutcome]:
        rows = self._db.query(
            "SELECT client_id, accepted, weight, rejected_reason, model_diff FROM outcomes WHERE round_id=? "
            "ORDER BY client_id",
            (round_id,),
        )
        return [UpdateOutcome(r[0], bool(r[1]), r[2], r[3], null_to_nan(r[4])) for r in rows]

    # --- deltas and metrics ---
    @staticmethod
    def _delta(row: Sequence[Any]) -> DeltaRecord:
        return DeltaRecord(
            round_id=row[0],
            participants=tuple((str(c), int(n)) for c, n in json.loads(row[1])),
            coefficients=f32_tuple(row[2]),
            packed=bytes(row[3]),
            fingerprint=bytes(row[4]),
        )

    def get_delta(self, round_id: int) -> DeltaRecord | None:
        rows = self._db.query("SELECT * FROM round_deltas WHERE round_id=?", (round_id,))
        return self._delta(rows[0]) if rows else None

    def list_deltas(self, from_round: int = 1) -> list[DeltaRecord]:
        rows = self._db.query("SELECT * FROM round_deltas WHERE round_id>=? ORDER BY round_id", (from_round,))
        return [self._delta(r) for r in rows]

    def get_metrics(self, round_id: int) -> dict[str, float]:
        rows = self._db.query("SELECT name, value FROM metrics WHERE round_id=?", (round_id,))
        return {name: null_to_nan(value) for name, value in rows}

    def add_metrics(self, round_id: int, metrics: dict[str, float], events: Sequence[NewEvent] = ()) -> None:
        with self._db.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?,?,?)",
                [(round_id, k, nan_to_null(v)) for k, v in sorted(metrics.items())],
            )
            self._insert_events(db, events)

    # --- fingerprints ---
    def record_fingerprint(self, record: FingerprintRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._db.transaction(defer_sync=True) as db:
            self._insert_fingerprint(db, record)
            self._insert_events(db, events)

    @staticmethod
    def _insert_fingerprint(db: sqlite3.Connection, record: FingerprintRecord) -> None:
        db.execute(
            "INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?,?)",
            (record.client_id, record.version, record.fingerprint, int(record.in_sync), record.reported_at),
        )

    def latest_fingerprints(self, client_ids: Collection[str] | None = None) -> dict[str, FingerprintRecord]:
        where, params = _in("client_id", client_ids)
        rows = self._db.query(f"SELECT * FROM fingerprints {where}", params)
        return {r[0]: FingerprintRecord(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows}

    # --- traffic ---
    def add_traffic(self, records: Iterable[TrafficRecord]) -> None:
        rows = [(r.round_id, r.client_id, r.bytes_up, r.bytes_down) for r in records]
        if not rows:
            return
        with self._db.transaction() as db:
            db.executemany(
                "INSERT INTO traffic VALUES (?,?,?,?) ON CONFLICT(round_id, client_id) DO UPDATE SET "
                "bytes_up = bytes_up + excluded.bytes_up, bytes_down = bytes_down + excluded.bytes_down",
                rows,
            )
            # a counter a status replica watches, so it re-reads the traffic table only when it changed
            db.execute(
                f"INSERT INTO meta(key, value) VALUES ('{TRAFFIC_FLUSHES_KEY}', '1') ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
            )

    def list_traffic(self) -> list[TrafficRecord]:
        return [
            TrafficRecord(*r) for r in self._db.query("SELECT * FROM traffic ORDER BY round_id, client_id")
        ]

    # --- presence ---
    def put_presence(self, records: Sequence[PresenceRecord], published_at: float) -> None:
        rows = [(r.client_id, r.last_seen, r.model_version, r.activity, int(r.polling)) for r in records]
        with self._db.transaction(defer_sync=True) as db:
            db.executemany("INSERT OR REPLACE INTO presence VALUES (?,?,?,?,?)", rows)
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('presence_published_at', ?)",
                (repr(published_at),),
            )

    def list_presence(self) -> tuple[list[PresenceRecord], float]:
        if not self._db.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='presence'"):
            return [], 0.0  # a file from a server that predates publishing presence
        rows = self._db.query("SELECT * FROM presence ORDER BY client_id")
        published = self.get_meta("presence_published_at")
        records = [
            PresenceRecord(c, seen, version, activity, bool(polling))
            for c, seen, version, activity, polling in rows
        ]
        return records, float(published) if published else 0.0

    # --- checkpoints ---
    def add_checkpoint(self, record: CheckpointRecord) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                (record.round_id, record.path, record.sha256, record.size, record.fingerprint),
            )

    def latest_checkpoint(self) -> CheckpointRecord | None:
        rows = self._db.query("SELECT * FROM checkpoints ORDER BY round_id DESC LIMIT 1")
        if not rows:
            return None
        r = rows[0]
        return CheckpointRecord(r[0], r[1], bytes(r[2]), r[3], bytes(r[4]))

    # --- events ---
    def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        if not events:
            return []
        with self._db.transaction() as db:
            return self._insert_events(db, events)

    def last_event_cursor(self) -> int:
        return int(self._db.query("SELECT COALESCE(MAX(cursor), 0) FROM events")[0][0])

    def list_events(self, after_cursor: int = 0, limit: int = 0) -> list[EventRecord]:
        sql = (
            "SELECT cursor, time, kind, message, round_id, client_id FROM events "
            "WHERE cursor>? ORDER BY cursor"
        )
        args: list[Any] = [after_cursor]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [EventRecord(*r) for r in self._db.query(sql, args)]


def _in(column: str, values: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """A `WHERE column IN (?, …)` clause and its parameters; no clause for None (every row). A page holds
    at most a few thousand ids, far below SQLite's limit on parameters (32,766)."""
    if values is None:
        return "", ()
    ids = tuple(values)
    if not ids:
        return f"WHERE {column} IN (NULL)", ()  # an empty page matches no row
    return f"WHERE {column} IN ({','.join('?' * len(ids))})", ids
