"""Typed records of the server's state: what the store keeps and the handlers pass around.

Times are Unix seconds (float). Fingerprints and hashes are raw 32-byte SHA-256 digests. Scalars are
stored as the fp32 values that travelled (the server never widens them before storing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "CheckpointRecord",
    "ClientRecord",
    "DeltaRecord",
    "EventRecord",
    "FingerprintRecord",
    "NewEvent",
    "RoundClose",
    "RoundRecord",
    "RoundState",
    "TaskRecord",
    "TrafficRecord",
    "UpdateOutcome",
    "UpdateRecord",
]


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

    def same_payload(self, other: UpdateRecord) -> bool:
        """Equal content (received_at aside): a retransmission, answered idempotently."""
        return (
            self.projected_grads == other.projected_grads
            and self.losses == other.losses
            and self.step_time_s == other.step_time_s
            and self.peak_memory_bytes == other.peak_memory_bytes
            and self.device == other.device
            and self.num_examples == other.num_examples
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
