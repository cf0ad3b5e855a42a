"""`SqliteDatabase`: the SQLite file under `SqliteStore`, kept apart so the store's record mapping
reads without the durability plumbing. It owns the schema and its migration, opening (read-only or
not, refusing an unwritable dir or a corrupt file at start), the one connection (one writer), the
transaction and query wrappers, WAL sync and checkpoint, and closing. sqlite3.Error is translated to
StoreError here and nowhere else.

Durability: WAL mode with synchronous=FULL, so a committed write survives even a power cut; a
SIGKILL mid-round loses nothing that was acknowledged. A transaction opened with `defer_sync=True`
commits without the fsync and is made durable by `sync()`, one fsync for every write since the last
(group commit). NaN is stored as NULL (SQLite's REAL has no NaN) and read back as NaN:
`nan_to_null` / `null_to_nan`, with the fp32 blob codecs beside them.
"""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fedmezo.fl.errors import StoreError

__all__ = [
    "SCHEMA_VERSION",
    "SqliteDatabase",
    "f32_blob",
    "f32_tuple",
    "nan_to_null",
    "null_to_nan",
]

# 2: clients.inference_peak_memory_bytes; 3: updates.forward_passes (each added in place to older files)
SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 10.0
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
    received_at REAL NOT NULL, forward_passes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (round_id, client_id));
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
CREATE TABLE IF NOT EXISTS presence (
    client_id TEXT PRIMARY KEY, last_seen REAL NOT NULL, model_version INTEGER NOT NULL,
    activity TEXT NOT NULL, polling INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
    round_id INTEGER NOT NULL, client_id TEXT NOT NULL);
"""


# --- value codecs ---
def f32_blob(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def f32_tuple(blob: bytes) -> tuple[float, ...]:
    """Exact fp32 values as Python floats; struct is ~25x faster than numpy for the short blobs here."""
    return struct.unpack(f"<{len(blob) // 4}f", blob)


def nan_to_null(value: float) -> float | None:
    return None if math.isnan(value) else value


def null_to_nan(value: float | None) -> float:
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


class SqliteDatabase:
    """The database in `path` (created if missing). `read_only=True` opens an existing file for
    export/inspection. `lock` (reentrant) guards the one connection; hold it to keep a read and
    whatever it caches consistent with the writes."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.lock = threading.RLock()
        self._checkpointer: sqlite3.Connection | None = None  # checkpoint()'s own connection
        self._checkpoint_lock = threading.Lock()
        try:
            if read_only:
                if not self.path.exists():
                    raise StoreError(f"no state database at {self.path}")
                uri = f"file:{self.path}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            else:
                _check_writable_dir(self.path.parent)
                self._conn = sqlite3.connect(
                    self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None
                )
                self._check_intact()
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                # Checkpoints (WAL -> database file, two fsyncs) run in `checkpoint()`, off the event
                # loop; the writer checkpoints itself only if those stop and the WAL grows this big.
                self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")
                self._conn.executescript(_SCHEMA)
                self._migrate()
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {self.path}: {_describe(exc)}") from exc

    def _check_intact(self) -> None:
        """Refuse a damaged file at start (PRAGMA quick_check: every page and index, in one pass over the
        file) rather than meet the damage mid-run, or serve from it."""
        problems = [" ".join(str(row[0]).split()) for row in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:  # one line: SQLite's report spans several
            raise StoreError(f"state database {self.path} is corrupt: {'; '.join(problems[:3])}")

    def _migrate(self) -> None:
        """Bring a file written by an older fedmezo up to SCHEMA_VERSION (additive columns only)."""
        added = (("clients", "inference_peak_memory_bytes"), ("updates", "forward_passes"))
        for table, column in added:
            columns = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")

    # --- the one translation boundary for sqlite3.Error ---
    @contextmanager
    def transaction(self, *, defer_sync: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction. `defer_sync`: commit without the fsync (synchronous=NORMAL for this one
        transaction, still safe against a process crash); `sync()` makes it survive a power cut."""
        with self.lock:
            try:
                if defer_sync:
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._conn
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                finally:
                    if defer_sync:
                        self._conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {_describe(exc)}") from exc

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {_describe(exc)}") from exc

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
        if self.read_only:
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
        with self.lock:
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot close state database: {exc}") from exc
