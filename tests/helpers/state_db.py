"""Audit a server's state dir with plain sqlite3, independently of the server's own store code: what a
fault test checks after every crash (integrity, which updates are durable, which rounds counted them).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

__all__ = [
    "StoredUpdate",
    "accepted_updates",
    "delta_participants",
    "fold_wal",
    "integrity",
    "meta_keys",
    "round_states",
    "stored_updates",
]

StoredUpdate = tuple[tuple[float, ...], tuple[float, ...]]  # (projected_grads, losses) as fp32 values


def _connect(db: Path) -> sqlite3.Connection:
    """Read-only: the audit must never change (or checkpoint) the file it checks."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)


def _f32(blob: bytes) -> tuple[float, ...]:
    return tuple(float(x) for x in np.frombuffer(blob, dtype="<f4"))


def fold_wal(db: Path) -> None:
    """Move everything in the write-ahead log into the main file and drop the log, so the file alone
    is the whole database (for tests that damage it). Only while no server has it open."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check`: "ok", or SQLite's list of problems."""
    with closing(_connect(db)) as conn:
        return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))


def stored_updates(db: Path) -> dict[tuple[int, str], StoredUpdate]:
    """Every durable update, by (round, client)."""
    with closing(_connect(db)) as conn:
        rows = conn.execute("SELECT round_id, client_id, projected_grads, losses FROM updates").fetchall()
    return {(int(r), str(c)): (_f32(g), _f32(losses)) for r, c, g, losses in rows}


def meta_keys(db: Path) -> set[str]:
    """Keys of the run's metadata (run_config marks a dir that holds a run)."""
    with closing(_connect(db)) as conn:
        return {str(row[0]) for row in conn.execute("SELECT key FROM meta")}


def round_states(db: Path) -> dict[int, str]:
    with closing(_connect(db)) as conn:
        return {int(r): str(s) for r, s in conn.execute("SELECT round_id, state FROM rounds")}


def accepted_updates(db: Path) -> set[tuple[int, str]]:
    """(round, client) pairs that a closed round accepted (its stored outcomes)."""
    with closing(_connect(db)) as conn:
        rows = conn.execute("SELECT round_id, client_id FROM outcomes WHERE accepted=1").fetchall()
    return {(int(r), str(c)) for r, c in rows}


def delta_participants(db: Path) -> set[tuple[int, str]]:
    """(round, client) pairs whose seeds a stored round delta applies (what every replica applies)."""
    with closing(_connect(db)) as conn:
        rows = conn.execute("SELECT round_id, participants FROM round_deltas").fetchall()
    return {(int(r), str(client)) for r, blob in rows for client, _steps in json.loads(blob)}
