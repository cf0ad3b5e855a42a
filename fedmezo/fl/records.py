"""The protocol's domain types: what travels (task, update, delta) and what the server's store keeps.

Times are Unix seconds (float). Fingerprints and hashes are raw 32-byte SHA-256 digests. Scalars are
stored as the fp32 values that travelled (the server never widens them before storing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "Activity",
    "Checkpoint",
    "CheckpointRecord",
    "ClientRecord",
    "DeltaRecord",
    "EventRecord",
    "FingerprintRecord",
    "JoinInfo",
    "JoinResult",
    "NewEvent",
    "RoundClose",
    "RoundRecord",
    "RoundState",
    "RunSettings",
    "RunState",
    "Task",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TrafficRecord",
    "Update",
    "UpdateOutcome",
    "UpdateRecord",
]


class RunState(StrEnum):
    WAITING_FOR_CLIENTS = "waiting_for_clients"
    ROUND_OPEN = "round_open"
    FINISHED = "finished"


class TaskStatus(StrEnum):
    ASSIGNED = "assigned"
    NO_TASK = "no_task"
    RUN_FINISHED = "run_finished"


class Activity(StrEnum):
    """What a client is doing, as its heartbeat says."""

    IDLE = "idle"
    TRAINING = "training"
    SYNCING = "syncing"


@dataclass(frozen=True)
class RunSettings:
    """What the server dictates for the whole run, as a client reads it (proto RunConfig)."""

    run_id: str
    model: str
    mode: Literal["full", "lora"]
    run_seed: int
    rng_spec: str
    manifest_sha256: str  # hex
    total_rounds: int
    local_steps: int
    batch_size: int
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_seed: int = 0
    heartbeat_interval_s: float = 10.0
    clients_per_round: int = 0
    max_length: int | None = None  # None: the server does not say; the client's own setting applies
    estimator: str = "mezo"
    perturbations: int = 1
    seed_scheme: str = "per-client"
    base_dtype: str = "fp32"  # LoRA: the frozen base's dtype (the adapters are fp32)
    weights: str = "fp32"  # full mode: the trained weights' format, fp32 or bf16-sr
    freeze: str = ""  # comma-separated parts of the names of weights that stay frozen (lora: of adapters)


@dataclass(frozen=True)
class JoinInfo:
    """What a client says about itself when it joins."""

    manifest_sha256: bytes
    rng_spec: str
    num_examples: int
    device: str = ""
    model_version: int = 0
    client_version: str = ""
    inference_peak_memory_bytes: int = 0

    def to_record(self, client_id: str, now: float, previous: ClientRecord | None) -> ClientRecord:
        """The client as stored; a peak of 0 (not measured) keeps what an earlier join reported."""
        peak = self.inference_peak_memory_bytes or (previous.inference_peak_memory_bytes if previous else 0)
        return ClientRecord(client_id, now, self.num_examples, self.device, self.client_version, peak)


@dataclass(frozen=True)
class JoinResult:
    rounds_completed: int  # the server's model version
    fingerprint: bytes  # the server's fingerprint at rounds_completed
    checkpoint_round: int
    checkpoint_size_bytes: int
    run_state: RunState
    settings: RunSettings | None = None  # the run config, as the client reads it from the answer

    @property
    def finished(self) -> bool:
        return self.run_state == RunState.FINISHED


@dataclass(frozen=True)
class Checkpoint:
    """A downloaded checkpoint file."""

    round_id: int
    data: bytes  # the whole safetensors file
    sha256: bytes  # as announced by the server
    fingerprint: bytes  # of the weights inside


class RoundState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ClientRecord:
    """A client that joined at least once."""

    client_id: str
    joined_at: float
    num_examples: int = 0
    device: str = ""
    client_version: str = ""
    inference_peak_memory_bytes: int = 0  # one plain forward's peak, measured by the client; 0 = unknown


@dataclass(frozen=True)
class RoundRecord:
    round_id: int
    state: RoundState
    opened_at: float
    deadline_at: float
    selected: tuple[str, ...]
    extensions: int = 0
    closed_at: float = 0.0
    fingerprint: bytes = b""
    mean_loss: float = float("nan")
    num_seeds: int = 0


@dataclass(frozen=True)
class TaskRecord:
    """One selected client's work in one round; lr is already fp32-exact."""

    round_id: int
    client_id: str
    lr: float
    local_steps: int


@dataclass(frozen=True)
class Task:
    """One round's work as a client receives it; its seeds are derived from (run_seed, round, client, t).

    lr, eps and clip are the fp32 values the client trains with (the server aggregates with them too)."""

    round_id: int
    local_steps: int
    lr: float
    eps: float
    batch_size: int
    run_seed: int
    clip: float | None = None
    deadline_s: float = 0.0  # seconds left until the round closes, when the task was handed out
    estimator: str = "mezo"
    perturbations: int = 1  # P: seeds (and scalars) per local step
    seed_scheme: str = "per-client"


@dataclass(frozen=True)
class TaskResult:
    """The answer to a task poll: a task, nothing yet, or the end of the run."""

    status: TaskStatus
    rounds_completed: int
    task: Task | None = None
    # the rounds after the poll's known_version, in order, when the poll asked for deltas (max_deltas)
    deltas: tuple[DeltaRecord, ...] = ()
    in_sync: bool | None = None  # the poll's fingerprint against the server's; None: none was sent


@dataclass(frozen=True)
class Update:
    """A trained task's upload: τ fp32 scalars plus metrics (seeds never travel back)."""

    round_id: int
    projected_grads: tuple[float, ...]
    losses: tuple[float, ...] = ()
    step_time_s: float = 0.0
    peak_memory_bytes: int = 0
    device: str = ""
    num_examples: int = 0  # 0: the server keeps the count the client gave at Join
    forward_passes: int = 0  # forwards the task cost: the budget unit across estimators

    def to_record(self, client_id: str, *, received_at: float, num_examples: int = 0) -> UpdateRecord:
        """As stored; `num_examples` stands in when the update does not give its own."""
        return UpdateRecord(
            round_id=self.round_id,
            client_id=client_id,
            projected_grads=tuple(self.projected_grads),
            losses=tuple(self.losses),
            step_time_s=self.step_time_s,
            peak_memory_bytes=self.peak_memory_bytes,
            device=self.device,
            num_examples=self.num_examples or num_examples,
            received_at=received_at,
            forward_passes=self.forward_passes,
        )


def mean_loss(losses: tuple[float, ...]) -> float:
    """An update's mean step loss (NaN without steps; a NaN step makes it NaN)."""
    return sum(losses) / len(losses) if losses else float("nan")


@dataclass(frozen=True)
class UpdateRecord:
    """An update exactly as accepted from the wire (before any aggregation decision)."""

    round_id: int
    client_id: str
    projected_grads: tuple[float, ...]
    losses: tuple[float, ...]
    step_time_s: float
    peak_memory_bytes: int
    device: str
    num_examples: int
    received_at: float
    forward_passes: int = 0  # what the task cost the client (0: not reported)

    def same_payload(self, other: UpdateRecord) -> bool:
        """Equal content (received_at aside): a retransmission, answered idempotently."""
        return (
            self.projected_grads == other.projected_grads
            and self.losses == other.losses
            and self.step_time_s == other.step_time_s
            and self.peak_memory_bytes == other.peak_memory_bytes
            and self.device == other.device
            and self.num_examples == other.num_examples
            and self.forward_passes == other.forward_passes
        )

    @property
    def mean_loss(self) -> float:
        return mean_loss(self.losses)


@dataclass(frozen=True)
class ClientUpdateStats:
    """One client's updates over the whole run, as ListClients shows them."""

    accepted_rounds: int
    last_mean_loss: float  # of its newest update, accepted or not
    peak_memory_bytes: int  # the largest any of its updates reported


@dataclass(frozen=True)
class UpdateOutcome:
    """What aggregation decided for one update."""

    client_id: str
    accepted: bool
    weight: float
    rejected_reason: str = ""
    model_diff: float = float("nan")


@dataclass(frozen=True)
class DeltaRecord:
    """A closed round's delta: participants (ascending id) + fp32 coefficients in ascending-seed order."""

    round_id: int
    participants: tuple[tuple[str, int], ...]
    coefficients: tuple[float, ...]
    packed: bytes
    fingerprint: bytes


@dataclass(frozen=True)
class NewEvent:
    kind: str
    message: str
    time: float
    round_id: int = 0
    client_id: str = ""


@dataclass(frozen=True)
class EventRecord:
    cursor: int
    time: float
    kind: str
    message: str
    round_id: int = 0
    client_id: str = ""


@dataclass(frozen=True)
class RoundClose:
    """Everything a round close writes, committed in one transaction."""

    round_id: int
    state: RoundState
    closed_at: float
    fingerprint: bytes
    mean_loss: float
    num_seeds: int
    delta: DeltaRecord
    outcomes: tuple[UpdateOutcome, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FingerprintRecord:
    client_id: str
    version: int
    fingerprint: bytes
    in_sync: bool
    reported_at: float


@dataclass(frozen=True)
class TrafficRecord:
    """Serialized gRPC message bytes of one client in one round (round 0 = outside any round)."""

    round_id: int
    client_id: str
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class CheckpointRecord:
    round_id: int
    path: str
    sha256: bytes
    size: int
    fingerprint: bytes
