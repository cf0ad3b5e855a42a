"""The replica on disk (`--state-dir`): a restarted client resumes from its last saved version.

Saved when the daemon stops (run finished, SIGINT/SIGTERM), never mid-round, so the file always holds
a canonical θ_v. On start it is used only if it belongs to the same run and model and its fingerprint
verifies; anything else is ignored (the client then replays or downloads as a fresh one would).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmezo.fl.errors import SyncFailed
from fedmezo.fl.replica import Replica

__all__ = ["REPLICA_FILE", "SavedReplica", "load_replica", "save_replica"]

logger = logging.getLogger("fedmezo.client")

REPLICA_FILE = "replica.safetensors"
META_FILE = "replica.json"


@dataclass(frozen=True)
class SavedReplica:
    run_id: str
    manifest_sha256: str
    version: int
    fingerprint: str


def save_replica(state_dir: Path, replica: Replica, meta: SavedReplica) -> None:
    """Write weights then metadata, each atomically (tmp + rename): a crash leaves the old pair or none."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / META_FILE).unlink(missing_ok=True)  # weights without metadata are never trusted
    replica.write_checkpoint(state_dir / REPLICA_FILE)
    meta_tmp = state_dir / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(asdict(meta)))
    os.replace(meta_tmp, state_dir / META_FILE)


def load_replica(state_dir: Path, replica: Replica, *, run_id: str, manifest_sha256: str) -> int:
    """Load a saved replica of this run into `replica`; returns its version (0 = nothing usable)."""
    try:
        meta = SavedReplica(**json.loads((state_dir / META_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return 0
    if meta.run_id != run_id or meta.manifest_sha256 != manifest_sha256:
        logger.info("ignoring the saved replica in %s: it belongs to another run or model", state_dir)
        return 0
    saved = replica.read_checkpoint(state_dir / REPLICA_FILE)
    if saved is None:
        logger.warning("ignoring an unreadable saved replica in %s", state_dir)
        return 0
    try:
        replica.load_flat(saved[1], meta.version, bytes.fromhex(meta.fingerprint))
    except (SyncFailed, ValueError) as exc:
        logger.warning("ignoring the saved replica in %s: %s", state_dir, exc)
        return 0
    logger.info("resuming from the saved replica at version %d", meta.version)
    return meta.version
