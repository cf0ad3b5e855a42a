"""The seam between the daemon and the server: a small `ServerLink` protocol over plain dataclasses.

The daemon's logic never sees protobuf or gRPC; `connection.GrpcServerLink` is the real link and a
40-line fake is enough to test the daemon (style §13). Fingerprints and hashes are lowercase hex here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

__all__ = [
    "Activity",
    "Checkpoint",
    "DeltaMessage",
    "JoinResult",
    "RunSettings",
    "ServerLink",
    "Task",
    "TaskPoll",
    "TaskStatus",
    "Update",
]


@dataclass(frozen=True)
class RunSettings:
    """What the server dictates for the whole run (proto RunConfig, the fields a client needs)."""

    run_id: str
    model: str
    mode: Literal["full", "lora"]
    run_seed: int
    rng_spec: str
    manifest_sha256: str  # hex
    total_rounds: int
    local_steps: int
    lr: float
    eps: float
    batch_size: int
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_seed: int = 0
    heartbeat_interval_s: float = 10.0
    clients_per_round: int = 0
    max_length: int | None = None  # None: the server does not say; the client's own setting applies


@dataclass(frozen=True)
class JoinResult:
    settings: RunSettings
    rounds_completed: int  # the server's model version
    fingerprint: str  # server fingerprint at rounds_completed (hex)
    checkpoint_round: int
    checkpoint_size_bytes: int
    finished: bool


@dataclass(frozen=True)
class Task:
    """One round's work; seeds are derive_seed(run_seed, round_id, client_id, t) for t < local_steps."""

    round_id: int
    local_steps: int
    lr: float
    eps: float
    batch_size: int
    run_seed: int
    clip: float | None = None
    deadline_s: float = 0.0


class TaskStatus(Enum):
    ASSIGNED = "assigned"
    NO_TASK = "no_task"
    FINISHED = "finished"


@dataclass(frozen=True)
class TaskPoll:
    status: TaskStatus
    rounds_completed: int
    task: Task | None = None


@dataclass(frozen=True)
class Update:
    """A trained task's upload: τ fp32 scalars plus metrics (seeds never travel back)."""

    round_id: int
    projected_grads: tuple[float, ...]
    losses: tuple[float, ...]
    step_time_s: float
    peak_memory_bytes: int
    device: str
    num_examples: int = 0


@dataclass(frozen=True)
class DeltaMessage:
    """Round r's delta as it travels: derived-seed participants + coefficients, or packed pairs."""

    round_id: int
    participants: tuple[tuple[str, int], ...]  # (client_id, local_steps), ascending client_id
    coefficients: tuple[float, ...]
    packed: bytes = b""  # RoundDelta.to_bytes() when seeds cannot be derived
    fingerprint: str = ""  # server fingerprint after this round (hex), "" when not sent


@dataclass(frozen=True)
class Checkpoint:
    round_id: int
    data: bytes  # the whole safetensors file
    sha256: str  # hex, as announced by the server
    fingerprint: str  # hex fingerprint of the weights inside


class Activity(Enum):
    IDLE = "idle"
    TRAINING = "training"
    SYNCING = "syncing"


class ServerLink(Protocol):
    """Every call has a deadline; failures raise `errors.RpcFailed` subclasses, never grpc errors."""

    def get_run_config(self) -> RunSettings: ...

    def join(
        self,
        *,
        manifest_sha256: str,
        rng_spec: str,
        num_examples: int,
        device: str,
        model_version: int,
        inference_peak_memory_bytes: int = 0,
    ) -> JoinResult: ...

    def heartbeat(self, *, model_version: int, activity: Activity, round_id: int = 0, step: int = 0) -> int:
        """Returns the server's rounds_completed."""
        ...

    def get_task(self, *, known_version: int, wait_s: float) -> TaskPoll: ...

    def submit(self, update: Update) -> None: ...

    def report_fingerprint(self, *, model_version: int, fingerprint: str) -> bool:
        """Returns True when the server asks this client to resync from a checkpoint."""
        ...

    def stream_deltas(self, *, from_round: int, follow: bool) -> Iterator[DeltaMessage]: ...

    def download_checkpoint(self) -> Checkpoint: ...

    def close(self) -> None: ...
