"""Create or resume the run in a state dir: its identity, θ at the stored version, the history.

A restart must run the same run: the run-defining fields (`fedmezo.fl.config.RUN_DEFINING_FIELDS`)
are frozen into the store at the first start, and a later start with others is refused before
anything is written. Resume = latest checkpoint + replay of the later stored deltas (model_state.py).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmezo.fl.bounds import Scales
from fedmezo.fl.config import RUN_DEFINING_FIELDS, RUN_FIELDS_BEFORE_THEY_EXISTED, RunConfig
from fedmezo.fl.errors import ConfigError, StoreError
from fedmezo.fl.records import NewEvent, RoundState
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import History, close_round, history_stats, remember
from fedmezo.server.config import ServerConfig
from fedmezo.server.model_state import restore_replica
from fedmezo.server.store import Store

__all__ = ["RunStart", "history_of_round", "scale_of_round", "start_run"]


@dataclass
class RunStart:
    run_id: str
    fingerprints: dict[int, bytes]  # version → the replica's fingerprint after it (0 = θ_0)
    history: History = field(default_factory=dict)
    scales: Scales = field(default_factory=Scales)


def history_of_round(store: Store, round_id: int, history: History) -> None:
    """Add a closed round's accepted updates to the per-client history the lr strategies read."""
    remember(history, round_id, history_stats(store.list_updates(round_id), store.list_outcomes(round_id)))


def scale_of_round(config: RunConfig, store: Store, round_id: int, scales: Scales) -> None:
    """Add a closed round's scale to `scales` as its close computed it (the same aggregation over the
    same stored updates, with the scales of the rounds before it), so a restarted server bounds the
    next rounds exactly as one that never stopped."""
    tasks = {t.client_id: t for t in store.list_tasks(round_id)}
    scales.add(close_round(config, round_id, store.list_updates(round_id), tasks, scales).scale)


def start_run(
    config: ServerConfig, store: Store, replica: Replica, checkpoint_dir: Path, now: float
) -> RunStart:
    """Create the run (a fresh state dir) or resume it, bringing `replica` to the stored version."""
    stored = store.get_meta("run_config")
    run_fields = {k: getattr(config, k) for k in RUN_DEFINING_FIELDS}
    if stored is None:
        # run_config goes last: it marks the dir as holding a run, so a start that dies before it
        # (a kill, a full disk at the first checkpoint) leaves a dir that simply starts afresh.
        run_id = secrets.token_hex(8)
        store.set_meta("run_id", run_id)
        store.set_meta("initial_fingerprint", replica.fingerprint().hex())
        store.add_checkpoint(replica.save_checkpoint(checkpoint_dir))
        store.add_events([NewEvent("run_started", f"run {run_id}", now)])
        store.set_meta("run_config", json.dumps(run_fields, sort_keys=True))
    else:
        previous = json.loads(stored)
        # a field added since the dir was created: what it meant then (KeyError: a field that must be there)
        was = {k: previous[k] if k in previous else RUN_FIELDS_BEFORE_THEY_EXISTED[k] for k in run_fields}
        changed = {k: (was[k], v) for k, v in run_fields.items() if was[k] != v}
        if changed:
            raise ConfigError(f"state dir holds another run; changed run-defining fields: {changed}")
        run_id = store.get_meta("run_id") or ""
        restore_replica(replica, store, checkpoint_dir)
        store.add_events([NewEvent("run_resumed", f"resumed at version {replica.version}", now)])
    store.set_meta("config", json.dumps(asdict(config), sort_keys=True))
    start = RunStart(run_id, {0: bytes.fromhex(store.get_meta("initial_fingerprint") or "")})
    for rec in store.list_rounds():
        if rec.state != RoundState.OPEN:
            start.fingerprints[rec.round_id] = rec.fingerprint
            history_of_round(store, rec.round_id, start.history)
            if rec.state == RoundState.CLOSED:
                scale_of_round(config, store, rec.round_id, start.scales)
    if replica.version != max((r for r in start.fingerprints if r > 0), default=0):
        raise StoreError("replica version differs from the rounds stored")
    return start
