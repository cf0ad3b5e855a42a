"""A restart must run the same run: a changed run-defining field is refused, a field added since is not."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from helpers.server_rpc import FakeClient, grads_for, make_config, running_server

from fedmezo.fl.errors import ConfigError
from fedmezo.fl.replica import Replica
from fedmezo.server.config import load_config
from fedmezo.server.run_start import start_run
from fedmezo.server.sqlite_store import SqliteStore


def _start(state: Path, **flags: str) -> None:
    config = load_config({"insecure": True, "model": "tiny-random", **flags}, env={})
    store = SqliteStore(state / "state.db")
    try:
        start_run(config, store, Replica.for_run(config), state / "checkpoints", now=0.0)
    finally:
        store.close()


def test_a_restart_with_other_frozen_weights_is_refused(tmp_path: Path) -> None:
    _start(tmp_path, mode="full")  # freeze auto: the input embedding frozen
    changed = r"changed run-defining fields: \{'freeze': \('input-embeddings', 'embed_tokens'\)\}"
    with pytest.raises(ConfigError, match=changed):  # compared as written, even naming the same weights
        _start(tmp_path, mode="full", freeze="embed_tokens", lr="1e-2")  # no measured rate: named
    _start(tmp_path, mode="full")  # the same run restarts
    (tmp_path / "lora").mkdir()
    _start(tmp_path / "lora")  # the default: LoRA-FA, stored as lora_A
    with pytest.raises(ConfigError, match=r"'freeze': \('lora_A', ''\)"):
        _start(tmp_path / "lora", freeze="")  # A and B: another θ
    _start(tmp_path / "lora", freeze="lora_A")  # auto spelled out is the same run


def test_a_run_stored_before_freeze_existed_restarts(tmp_path: Path) -> None:
    _start(tmp_path, mode="full", freeze="")
    store = SqliteStore(tmp_path / "state.db")
    stored = json.loads(store.get_meta("run_config") or "{}")
    del stored["freeze"]  # as a state dir written by a server before the field
    store.set_meta("run_config", json.dumps(stored, sort_keys=True))
    store.close()
    _start(tmp_path, mode="full", freeze="")  # the missing field meant '' then (every weight trains)
    with pytest.raises(ConfigError, match=r"'freeze': \('', 'input-embeddings'\)"):
        _start(tmp_path, mode="full")  # not today's default: that would be another θ


def test_the_history_a_close_keeps_is_what_a_restart_rebuilds(tmp_path: Path, replica: Replica) -> None:
    """The live close adds what it aggregated to the lr strategies' history; a restart reads the stored
    updates and outcomes back (history_of_round). Both must give the same history, or a restarted
    server would personalize learning rates differently from one that never stopped."""
    steps, ids = 4, ("a", "b", "c")

    async def two_rounds() -> str:
        async with running_server(tmp_path, replica, local_steps=steps) as app:
            clients = [FakeClient(app.port, c, manifest=replica.manifest_sha256) for c in ids]
            for c in clients:
                await c.join()
            for r in (1, 2):
                tasks = await asyncio.gather(*(c.get_task(r - 1, 5.0) for c in clients))
                assert [t.task.round_id for t in tasks] == [r] * len(ids)
                for i, c in enumerate(clients):  # losses that tell clients and rounds apart, not fp32-exact
                    await c.submit(r, grads_for(c.client_id, r, steps), [1.1 + i + r / 3] * steps)
                await clients[0].wait_delta(r)
            history = app.coordinator._history
            assert sorted(history) == list(ids) and all(len(history[c]) == 2 for c in ids)
            assert all(
                math.isfinite(s.mean_loss) and math.isfinite(s.model_diff) for c in ids for s in history[c]
            )
            for c in clients:
                await c.close()
            return repr(sorted(history.items()))

    live = asyncio.run(two_rounds())
    config = make_config(tmp_path, local_steps=steps)
    store = SqliteStore(Path(config.state_dir) / "state.sqlite")
    try:
        start = start_run(
            config, store, Replica.for_run(config), Path(config.state_dir) / "checkpoints", now=0.0
        )
    finally:
        store.close()
    assert repr(sorted(start.history.items())) == live
