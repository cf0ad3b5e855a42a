"""A simulation's progress on disk, so a sweep that runs for hours survives being stopped.

After every finished round `fedmezo simulate --resume-dir DIR` writes one file, `DIR/simulation.safetensors`:
θ after that round (the replica's checkpoint: atomic, with its version and fingerprint) and, in the same
file's metadata, everything else the remaining rounds depend on: the rounds' records so far, the history
the personalized learning rates read, the poisoning bounds' scale window and the compute seconds spent.
One file keeps θ and the records consistent whatever moment the process dies at.

A rerun with the same settings loads it, checks θ against the recorded fingerprint, and goes on with the
next round: the result is the uninterrupted run's, bit for bit (every round's seeds, batches and
learning rates are derived from the run settings, not from process state). A rerun with other settings
is refused with the keys that differ, and leaves the file alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmezo.fl.bounds import Scales
from fedmezo.fl.errors import ConfigError, SyncFailed
from fedmezo.fl.lr import RoundStat
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import History

__all__ = ["STATE_FILE", "STATE_FORMAT", "Progress", "identity", "load_progress", "save_progress"]

STATE_FILE = "simulation.safetensors"
STATE_FORMAT = 1
_META_KEY = "fedmezo_simulation"
# Options that do not change a single bit of the run: where it writes, how it shows progress, and
# whether clients train in this process or on Ray actors (the same fingerprints every round).
_NOT_IDENTITY = frozenset(
    {"output", "resume_dir", "compile", "ray", "ray_workers", "ray_cpus_per_worker", "ray_gpus_per_worker",
     "ray_object_store_mb"}
)  # fmt: skip


@dataclass
class Progress:
    """What the rounds after `rounds[-1]` need besides θ; rounds are `RoundResult.to_json` dicts."""

    rounds: list[dict[str, Any]]
    history: History
    scales: Scales
    wall_seconds: float

    @property
    def last_round(self) -> int:
        return int(self.rounds[-1]["round_id"])


def _file_digest(path: str) -> str:
    """A data file is named by its content (a directory by its JSONL files' names and contents)."""
    target = Path(path)
    files = sorted(target.glob("*.jsonl")) if target.is_dir() else [target]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()[:16]


def identity(config: Mapping[str, Any], options: Mapping[str, Any], replica: Replica) -> dict[str, Any]:
    """The settings a stored run must share with this one to continue it, plus the model's manifest."""
    run = dict(config)
    if run.get("eval_data"):
        run["eval_data"] = _file_digest(str(run["eval_data"]))
    opts = {k: v for k, v in options.items() if k not in _NOT_IDENTITY}
    if opts.get("data") not in (None, "demo"):
        opts["data"] = _file_digest(str(opts["data"]))
    return json.loads(json.dumps({"config": run, "options": opts, "model": replica.manifest_sha256.hex()}))


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(stored) | set(current))
    out = []
    for key in keys:
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (stored {a!r}, now {b!r})")
    return out


def _history_json(history: History) -> dict[str, list[list[float]]]:
    return {c: [[s.round_id, s.mean_loss, s.model_diff] for s in stats] for c, stats in history.items()}


def _history_of(data: Mapping[str, Iterable[Iterable[float]]]) -> History:
    return {
        c: [RoundStat(int(r), float(loss), float(diff)) for r, loss, diff in rows] for c, rows in data.items()
    }


def save_progress(directory: Path, replica: Replica, ident: Mapping[str, Any], progress: Progress) -> None:
    """θ and the progress after `progress.rounds[-1]`, in one atomically replaced file."""
    state = {
        "format": STATE_FORMAT,
        "identity": ident,
        "rounds": progress.rounds,
        "history": _history_json(progress.history),
        "scales": list(progress.scales.window),
        "wall_seconds": progress.wall_seconds,
    }
    text = json.dumps(state, allow_nan=True)  # a NaN training loss (every step skipped) round-trips
    replica.write_checkpoint(directory / STATE_FILE, {_META_KEY: text})


def load_progress(directory: Path, replica: Replica, ident: Mapping[str, Any]) -> Progress | None:
    """The stored progress of this run, with the replica moved to its θ; None when there is none yet.

    Raises ConfigError, touching nothing, when the file is unreadable, belongs to other settings or does
    not match its own fingerprint."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    read = replica.read_checkpoint(path)
    fix = f"delete {directory} to start the run over"
    if read is None or _META_KEY not in read[0]:
        raise ConfigError(f"{path} is not a readable fedmezo simulation state; {fix}")
    meta, flat = read
    try:
        state = json.loads(meta[_META_KEY])
        stored_format = state["format"]
        rounds = state["rounds"]
        version, fingerprint = int(meta["version"]), bytes.fromhex(meta["fingerprint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} has unreadable metadata ({exc}); {fix}") from exc
    if stored_format != STATE_FORMAT:
        raise ConfigError(f"{path} is format {stored_format}, this fedmezo reads {STATE_FORMAT}; {fix}")
    differ = _differences(state["identity"], json.loads(json.dumps(ident)))
    if differ:
        raise ConfigError(f"{path} belongs to a run with other settings: {'; '.join(differ)}; {fix}")
    if not rounds or int(rounds[-1]["round_id"]) != version or rounds[-1]["fingerprint"] != fingerprint.hex():
        raise ConfigError(f"{path}: its rounds do not end at the stored model (version {version}); {fix}")
    try:
        replica.load_flat(flat, version, fingerprint)
    except SyncFailed as exc:
        raise ConfigError(f"{path}: {exc}; {fix}") from exc
    scales = Scales()
    for value in state["scales"]:
        scales.add(float(value))
    return Progress(rounds, _history_of(state["history"]), scales, float(state["wall_seconds"]))
