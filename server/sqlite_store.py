"""`SqliteStore`: the durable Store. One file (state.sqlite) in WAL mode, one connection owned by the
server process (one writer), every mutating method one transaction. sqlite3.Error is translated to
StoreError here and nowhere else.

Durability: synchronous=FULL, so a committed write survives even a power cut; a SIGKILL mid-round
loses nothing that was acknowledged. The per-client writes that arrive by the thousand per round
(`add_update`, `upsert_client`, `record_fingerprint`) commit without the fsync and are made durable
by `sync()`, one fsync for every write since the last (group commit): the server acknowledges them
only after it, and the event loop never waits for the disk. NaN is stored as NULL
(SQLite's REAL has no NaN) and read back as NaN.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

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
from fedmezo.server.store import Store, _check_close

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = 2  # 2: clients.inference_peak_memory_bytes (added in place to a version-1 file)
BUSY_TIMEOUT_S = 10.0
_UNKNOWN = object()  # the open-round cache is empty
WAL_SAFETY_PAGES = 65536  # 256 MiB of 4 KiB pages: the writer checkpoints itself only past this

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, joined_at REAL NOT NULL, num_examples INTEGER NOT NULL,
    device TEXT NOT NULL, client_version TEXT NOT NULL,
    inference_peak_memory_bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY, state TEXT NOT NULL, opened_at REAL NOT NULL, deadline_at REAL NOT NULL,
    selected TEXT NOT NULL, extensions INTEGER NOT NULL, closed_at REAL NOT NULL, fingerprint BLOB NOT NULL,
    mean_loss REAL, num_seeds INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL, lr REAL NOT NULL, local_steps INTEGER NOT NULL,
    PRIMARY KEY (round_id, client_id));
CREATE TABLE IF NOT EXISTS updates (
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL, projected_grads BLOB NOT NULL, losses BLOB NOT NULL,
    step_time_s REAL, peak_memory_bytes INTEGER NOT NULL, device TEXT NOT NULL, num_examples INTEGER NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (round_id, client_id));
CREATE TABLE IF NOT EXISTS outcomes (
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL, accepted INTEGER NOT NULL, weight REAL NOT NULL,
    rejected_reason TEXT NOT NULL, model_diff REAL, PRIMARY KEY (round_id, client_id));
CREATE TABLE IF NOT EXISTS round_deltas (
    round_id INTEGER PRIMARY KEY, participants TEXT NOT NULL, coefficients BLOB NOT NULL,
    packed BLOB NOT NULL, fingerprint BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    round_id INTEGER NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (round_id, name));
CREATE TABLE IF NOT EXISTS fingerprints (
    client_id TEXT PRIMARY KEY, version INTEGER NOT NULL, fingerprint BLOB NOT NULL, in_sync INTEGER NOT NULL,
    reported_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS traffic (
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL, bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL, PRIMARY KEY (round_id, client_id));
CREATE TABLE IF NOT EXISTS checkpoints (
    round_id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 BLOB NOT NULL, size INTEGER NOT NULL,
    fingerprint BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL);
"""


def _f32_blob(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _f32_tuple(blob: bytes) -> tuple[float, ...]:
    """Exact fp32 values as Python floats; struct is ~25x faster than numpy for the short blobs here."""
    return struct.unpack(f"<{len(blob) // 4}f", blob)


def _real(value: float) -> float | None:
    return None if math.isnan(value) else value


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _describe(exc: sqlite3.Error) -> str:
    """SQLite's message plus its error name: "disk I/O error (SQLITE_IOERR_WRITE)" tells a full or
    read-only disk apart from a bug."""
    name = getattr(exc, "sqlite_errorname", "")
    return f"{exc} ({name})" if name else str(exc)


def _check_writable_dir(directory: Path) -> None:
    """Create the state dir and prove it takes a written, synced byte now: a read-only or full disk is
    reported at start with the OS's reason, not at the first update a client is waiting on."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise StoreError(f"state dir {directory} is not writable: {exc.strerror or exc}") from exc


class SqliteStore(Store):
    """Store in `path` (created if missing). `read_only=True` opens an existing file for export/inspection."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        # The open round, read on nearly every RPC: cached by the one writer, dropped by every write to
        # `rounds`. A read-only store may watch a file another process writes, so it never caches.
        self._cache_open_round = not read_only
        self._read_only = read_only
        self._checkpointer: sqlite3.Connection | None = None  # checkpoint()'s own connection
        self._checkpoint_lock = threading.Lock()
        self._open_round: RoundRecord | object | None = _UNKNOWN
        try:
            if read_only:
                if not self.path.exists():
                    raise StoreError(f"no state database at {self.path}")
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            else:
                _check_writable_dir(self.path.parent)
                self._db = sqlite3.connect(
                    self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None
                )
                self._check_intact()
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                # Checkpoints (WAL -> database file, two fsyncs) run in `checkpoint()`, off the event
                # loop; the writer checkpoints itself only if those stop and the WAL grows this big.
                self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")
                self._db.executescript(_SCHEMA)
                self._migrate()
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {self.path}: {_describe(exc)}") from exc

    def _check_intact(self) -> None:
        """Refuse a damaged file at start (PRAGMA quick_check: every page and index, in one pass over the
        file) rather than meet the damage mid-run, or serve from it."""
        problems = [" ".join(str(row[0]).split()) for row in self._db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:  # one line: SQLite's report spans several
            raise StoreError(f"state database {self.path} is corrupt: {'; '.join(problems[:3])}")

    def _migrate(self) -> None:
        """Bring a file written by an older fedmezo up to SCHEMA_VERSION (additive columns only)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(clients)")}
        if "inference_peak_memory_bytes" not in columns:
            self._db.execute(
                "ALTER TABLE clients ADD COLUMN inference_peak_memory_bytes INTEGER NOT NULL DEFAULT 0"
            )

    # --- plumbing: the one translation boundary for sqlite3.Error ---
    @contextmanager
    def _tx(self, *, defer_sync: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction. `defer_sync`: commit without the fsync (synchronous=NORMAL for this one
        transaction, still safe against a process crash); `sync()` makes it survive a power cut."""
        with self._lock:
            try:
                if defer_sync:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if defer_sync:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {_describe(exc)}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {_describe(exc)}") from exc

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
        """fsync the WAL: every transaction committed so far, deferred ones included, is then on disk
        (what synchronous=FULL does at each commit). Touches no connection state, so it runs in a
        worker thread while the event loop goes on. No WAL file: SQLite synced the WAL before it
        checkpointed it into the database file, so nothing is pending."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(
                f"state database {self.path}: cannot open the WAL: {exc.strerror or exc}"
            ) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(
                f"state database {self.path}: cannot sync the WAL: {exc.strerror or exc}"
            ) from exc
        finally:
            os.close(fd)

    def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file, from a connection of its own (PASSIVE:
        it neither waits for nor blocks the writer), so no commit on the event loop ever stops for a
        checkpoint's fsyncs (SQLite's automatic ones ran inside a commit: 0.1-0.3 s on a busy disk).
        Thread-safe; meant for a worker thread."""
        if self._read_only:
            return
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None
                    )
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: checkpoint: {_describe(exc)}") from exc

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                try:
                    self._checkpointer.close()
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot close state database: {exc}") from exc
                self._checkpointer = None
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot close state database: {exc}") from exc

    # --- meta ---
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    # --- clients ---
    def upsert_client(self, client: ClientRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._tx(defer_sync=True) as db:
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
        rows = self._query("SELECT * FROM clients WHERE client_id=?", (client_id,))
        return ClientRecord(*rows[0]) if rows else None

    def list_clients(self) -> list[ClientRecord]:
        return [ClientRecord(*row) for row in self._query("SELECT * FROM clients ORDER BY client_id")]

    def count_clients(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM clients")[0][0])

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
            mean_loss=_nan(row[8]),
            num_seeds=row[9],
        )

    def open_round(
        self, round_: RoundRecord, tasks: Sequence[TaskRecord], events: Sequence[NewEvent] = ()
    ) -> None:
        if any(t.round_id != round_.round_id for t in tasks):
            raise StoreError("every task must belong to the round being opened")
        with self._tx() as db:
            self._open_round = _UNKNOWN
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
                    _real(round_.mean_loss),
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
        with self._tx() as db:
            self._open_round = _UNKNOWN
            cur = db.execute(
                "UPDATE rounds SET deadline_at=?, extensions=? WHERE round_id=? AND state=?",
                (deadline_at, extensions, round_id, RoundState.OPEN.value),
            )
            if cur.rowcount != 1:
                raise StoreError(f"round {round_id} is not open")
            self._insert_events(db, events)

    def close_round(self, close: RoundClose, events: Sequence[NewEvent] = ()) -> None:
        with self._tx() as db:
            self._open_round = _UNKNOWN
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
                    _real(close.mean_loss),
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
                    _f32_blob(d.coefficients),
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
                        _real(o.model_diff),
                    )
                    for o in close.outcomes
                ],
            )
            db.executemany(
                "INSERT INTO metrics VALUES (?,?,?)",
                [(close.round_id, k, _real(v)) for k, v in sorted(close.metrics.items())],
            )
            self._insert_events(db, events)

    def get_round(self, round_id: int) -> RoundRecord | None:
        rows = self._query("SELECT * FROM rounds WHERE round_id=?", (round_id,))
        return self._round(rows[0]) if rows else None

    def list_rounds(self, from_round: int = 1, limit: int = 0) -> list[RoundRecord]:
        sql = "SELECT * FROM rounds WHERE round_id>=? ORDER BY round_id"
        args: list[Any] = [from_round]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._round(r) for r in self._query(sql, args)]

    def open_round_record(self) -> RoundRecord | None:
        with self._lock:
            if self._open_round is _UNKNOWN or not self._cache_open_round:
                rows = self._query(
                    "SELECT * FROM rounds WHERE state=? ORDER BY round_id DESC LIMIT 1",
                    (RoundState.OPEN.value,),
                )
                self._open_round = self._round(rows[0]) if rows else None
            assert self._open_round is None or isinstance(self._open_round, RoundRecord)
            return self._open_round

    def get_task(self, round_id: int, client_id: str) -> TaskRecord | None:
        rows = self._query("SELECT * FROM tasks WHERE round_id=? AND client_id=?", (round_id, client_id))
        return TaskRecord(*rows[0]) if rows else None

    def list_tasks(self, round_id: int) -> list[TaskRecord]:
        rows = self._query("SELECT * FROM tasks WHERE round_id=? ORDER BY client_id", (round_id,))
        return [TaskRecord(*r) for r in rows]

    # --- updates ---
    @staticmethod
    def _update(row: Sequence[Any]) -> UpdateRecord:
        return UpdateRecord(
            round_id=row[0],
            client_id=row[1],
            projected_grads=_f32_tuple(row[2]),
            losses=_f32_tuple(row[3]),
            step_time_s=_nan(row[4]),
            peak_memory_bytes=row[5],
            device=row[6],
            num_examples=row[7],
            received_at=row[8],
        )

    def add_update(self, update: UpdateRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._tx(defer_sync=True) as db:
            key = (update.round_id, update.client_id)
            if db.execute("SELECT 1 FROM updates WHERE round_id=? AND client_id=?", key).fetchone():
                raise StoreError(f"update {key} already stored")
            if not db.execute("SELECT 1 FROM tasks WHERE round_id=? AND client_id=?", key).fetchone():
                raise StoreError(f"no task {key}")
            db.execute(
                "INSERT INTO updates VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    update.round_id,
                    update.client_id,
                    _f32_blob(update.projected_grads),
                    _f32_blob(update.losses),
                    _real(update.step_time_s),
                    update.peak_memory_bytes,
                    update.device,
                    update.num_examples,
                    update.received_at,
                ),
            )
            self._insert_events(db, events)

    def count_updates(self, round_id: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM updates WHERE round_id=?", (round_id,))[0][0])

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None:
        rows = self._query("SELECT * FROM updates WHERE round_id=? AND client_id=?", (round_id, client_id))
        return self._update(rows[0]) if rows else None

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        rows = self._query("SELECT * FROM updates WHERE round_id=? ORDER BY client_id", (round_id,))
        return [self._update(r) for r in rows]

    def client_update_stats(self) -> dict[str, ClientUpdateStats]:
        """Two aggregate queries instead of decoding every update of every round in Python."""
        totals = self._query(
            "SELECT u.client_id, COALESCE(SUM(o.accepted), 0), MAX(u.peak_memory_bytes) FROM updates u "
            "LEFT JOIN outcomes o ON o.round_id = u.round_id AND o.client_id = u.client_id "
            "GROUP BY u.client_id"
        )
        # SQLite fills the bare column `losses` from the row holding MAX(round_id): the newest update.
        rows = self._query("SELECT client_id, losses, MAX(round_id) FROM updates GROUP BY client_id")
        newest = {client_id: losses for client_id, losses, _ in rows}
        out = {}
        for client_id, accepted, peak in totals:
            out[client_id] = ClientUpdateStats(
                int(accepted), mean_loss(_f32_tuple(newest[client_id])), int(peak)
            )
        return out

    def list_outcomes(self, round_id: int) -> list[UpdateOutcome]:
        rows = self._query(
            "SELECT client_id, accepted, weight, rejected_reason, model_diff FROM outcomes WHERE round_id=? "
            "ORDER BY client_id",
            (round_id,),
        )
        return [UpdateOutcome(r[0], bool(r[1]), r[2], r[3], _nan(r[4])) for r in rows]

    # --- deltas and metrics ---
    @staticmethod
    def _delta(row: Sequence[Any]) -> DeltaRecord:
        return DeltaRecord(
            round_id=row[0],
            participants=tuple((str(c), int(n)) for c, n in json.loads(row[1])),
            coefficients=_f32_tuple(row[2]),
            packed=bytes(row[3]),
            fingerprint=bytes(row[4]),
        )

    def get_delta(self, round_id: int) -> DeltaRecord | None:
        rows = self._query("SELECT * FROM round_deltas WHERE round_id=?", (round_id,))
        return self._delta(rows[0]) if rows else None

    def list_deltas(self, from_round: int = 1) -> list[DeltaRecord]:
        rows = self._query("SELECT * FROM round_deltas WHERE round_id>=? ORDER BY round_id", (from_round,))
        return [self._delta(r) for r in rows]

    def get_metrics(self, round_id: int) -> dict[str, float]:
        rows = self._query("SELECT name, value FROM metrics WHERE round_id=?", (round_id,))
        return {name: _nan(value) for name, value in rows}

    def add_metrics(self, round_id: int, metrics: dict[str, float], events: Sequence[NewEvent] = ()) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?,?,?)",
                [(round_id, k, _real(v)) for k, v in sorted(metrics.items())],
            )
            self._insert_events(db, events)

    # --- fingerprints ---
    def record_fingerprint(self, record: FingerprintRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._tx(defer_sync=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?,?)",
                (
                    record.client_id,
                    record.version,
                    record.fingerprint,
                    int(record.in_sync),
                    record.reported_at,
                ),
            )
            self._insert_events(db, events)

    def latest_fingerprints(self) -> dict[str, FingerprintRecord]:
        rows = self._query("SELECT * FROM fingerprints")
        return {r[0]: FingerprintRecord(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows}

    # --- traffic ---
    def add_traffic(self, records: Iterable[TrafficRecord]) -> None:
        rows = [(r.round_id, r.client_id, r.bytes_up, r.bytes_down) for r in records]
        if not rows:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO traffic VALUES (?,?,?,?) ON CONFLICT(round_id, client_id) DO UPDATE SET "
                "bytes_up = bytes_up + excluded.bytes_up, bytes_down = bytes_down + excluded.bytes_down",
                rows,
            )

    def list_traffic(self) -> list[TrafficRecord]:
        return [TrafficRecord(*r) for r in self._query("SELECT * FROM traffic ORDER BY round_id, client_id")]

    # --- checkpoints ---
    def add_checkpoint(self, record: CheckpointRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                (record.round_id, record.path, record.sha256, record.size, record.fingerprint),
            )

    def latest_checkpoint(self) -> CheckpointRecord | None:
        rows = self._query("SELECT * FROM checkpoints ORDER BY round_id DESC LIMIT 1")
        if not rows:
            return None
        r = rows[0]
        return CheckpointRecord(r[0], r[1], bytes(r[2]), r[3], bytes(r[4]))

    # --- events ---
    def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        if not events:
            return []
        with self._tx() as db:
            return self._insert_events(db, events)

    def last_event_cursor(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(cursor), 0) FROM events")[0][0])

    def list_events(self, after_cursor: int = 0, limit: int = 0) -> list[EventRecord]:
        sql = (
            "SELECT cursor, time, kind, message, round_id, client_id FROM events "
            "WHERE cursor>? ORDER BY cursor"
        )
        args: list[Any] = [after_cursor]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [EventRecord(*r) for r in self._query(sql, args)]
