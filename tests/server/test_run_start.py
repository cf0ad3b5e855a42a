"""A restart must run the same run: a changed run-defining field is refused, a field added since is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
