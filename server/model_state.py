"""The server's checkpoints on disk and resume: latest checkpoint + replay of the later stored deltas.

The replica itself (`fedmezo.fl.replica.Replica`) is the one every participant uses; this module only
knows where the server keeps its checkpoint files and how a restart rebuilds θ from the store.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import CheckpointRecord, DeltaRecord
from fedmezo.fl.replica import Replica
from fedmezo.server.store import Store
from fedmezo.zo import RoundDelta

__all__ = [
    "CHECKPOINTS_DIR",
    "KEEP_CHECKPOINTS",
    "delta_of",
    "locate_checkpoint",
    "prune_checkpoints",
    "restore_replica",
]

logger = logging.getLogger("fedmezo.server.model_state")

KEEP_CHECKPOINTS = 2  # files kept on disk; older ones are deleted once a newer one is recorded


def delta_of(record: DeltaRecord) -> RoundDelta:
    """The RoundDelta a stored round applies (from its packed (seed, coefficient) pairs)."""
    return RoundDelta.from_bytes(record.packed)


def prune_checkpoints(directory: str | Path, keep: int = KEEP_CHECKPOINTS) -> None:
    files = sorted(Path(directory).glob("round-*.safetensors"))
    for old in files[:-keep] if keep else files:
        old.unlink(missing_ok=True)


CHECKPOINTS_DIR = "checkpoints"  # under the state dir, unless the server is given another


def locate_checkpoint(record: CheckpointRecord, directory: str | Path | None) -> CheckpointRecord:
    """The record with a path that exists: as stored, else the same file in `directory`.

    The store keeps the path the server was given. A state dir given relative to another working
    directory, or copied elsewhere (to export on another machine), still holds its checkpoints under
    their own names. When neither exists the record is returned unchanged, so errors name the stored path.
    """
    stored = Path(record.path)
    if directory is None or stored.exists():
        return record
    moved = Path(directory) / stored.name
    return replace(record, path=str(moved)) if moved.exists() else record


def restore_replica(replica: Replica, store: Store, checkpoint_dir: str | Path | None = None) -> None:
    """Bring a freshly loaded θ_0 replica to the store's latest version, verifying every step."""
    checkpoint = store.latest_checkpoint()
    if checkpoint is not None and checkpoint.round_id > 0:
        checkpoint = locate_checkpoint(checkpoint, checkpoint_dir)
        replica.load_checkpoint(checkpoint)
        logger.info("resumed from checkpoint %s (version %d)", checkpoint.path, checkpoint.round_id)
    for record in store.list_deltas(replica.version + 1):
        if record.round_id != replica.version + 1:
            raise StoreError(
                f"round deltas are not contiguous: expected {replica.version + 1}, got {record.round_id}"
            )
        replica.apply(delta_of(record))
        if replica.fingerprint() != record.fingerprint:
            raise StoreError(f"replay of round {record.round_id} does not reproduce its stored fingerprint")
    if replica.version:
        logger.info(
            "replica at version %d, fingerprint %s", replica.version, replica.fingerprint().hex()[:16]
        )
