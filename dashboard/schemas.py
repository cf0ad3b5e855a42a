"""Typed JSON documents of the dashboard API (they are also the OpenAPI schema).

`RunConfigInfo`, `ServerStatus`, `RoundInfo`, `ClientInfo` and `Event` mirror the StatusService messages
with JSON-friendly types (hex fingerprints, `None` for NaN). The `*Response` models add what the page
derives from them (progress, deadline, cumulative bytes, the FedAvg comparison).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "ApiError",
    "ClientInfo",
    "ClientRoundInfo",
    "ClientsResponse",
    "Event",
    "EventPage",
    "HealthResponse",
    "ModelSize",
    "RoundInfo",
    "RoundsResponse",
    "RunConfigInfo",
    "ServerStatus",
    "StatusResponse",
]


class RunConfigInfo(BaseModel):
    """The run's immutable configuration (the subset an operator reads)."""

    run_id: str
    model: str = Field(description="model name, e.g. tiny-random")
    mode: str = Field(description="full | lora")
    lora_rank: int = 0
    base_dtype: str = Field("fp32", description="LoRA: dtype of the frozen base weights, fp32 | bf16 | fp16")
    weights: str = Field("fp32", description="full mode: the trained weights, fp32 | bf16-sr")
    freeze: str = Field("", description="full mode: comma-separated parts of names of weights kept frozen")
    total_rounds: int
    local_steps: int = Field(description="tau: MeZO steps per client per round")
    clients_per_round: int
    client_fraction: float
    min_clients: int = Field(description="online clients needed before a round opens")
    quorum_fraction: float
    round_deadline_s: float
    lr: float = Field(description="eta_0")
    lr_spread: float = Field(description="delta of the personalized learning rates")
    lr_strategy: str
    lr_schedule: str = Field(
        "constant", description="constant | cosine (eta_0 decays to 0.1x by the last round)"
    )
    eps: float
    estimator: str = Field(
        "mezo", description="zeroth-order estimator of a local step: mezo | fzoo | adamezo"
    )
    perturbations: int = Field(1, description="P: seeded perturbations (and scalars) per local step")
    seed_scheme: str = Field("per-client", description="per-client | shared (one seed set per round)")
    batch_size: int
    aggregation: str
    heartbeat_timeout_s: float
    rng_spec: str
    trainable_params: int | None = Field(
        None, description="elements of the trainable buffer (LoRA: adapters); None from older servers"
    )
    model_weight_bytes: int | None = Field(
        None, description="bytes of all model parameters on the server; None from older servers"
    )


class ServerStatus(BaseModel):
    """GetStatus: progress and run totals."""

    run_state: str = Field(description="waiting_for_clients | round_open | finished | unspecified")
    rounds_completed: int
    current_round: int = Field(description="the open round, 0 when none")
    total_rounds: int
    fingerprint: str = Field(description="server fingerprint (hex SHA-256) at rounds_completed")
    clients_online: int
    clients_total: int
    bytes_up: int
    bytes_down: int
    started_at_unix_ms: int
    last_event_cursor: int


class ClientRoundInfo(BaseModel):
    """One selected client in one round."""

    client_id: str
    submitted: bool
    accepted: bool
    rejected_reason: str
    lr: float
    weight: float
    mean_loss: float | None
    losses: list[float]
    step_time_s: float
    peak_memory_bytes: int
    device: str
    bytes_up: int
    bytes_down: int


class RoundInfo(BaseModel):
    """One round (round 0: the initial model, present once evaluated); the fields after `clients` are
    derived by the dashboard."""

    round_id: int
    state: str = Field(description="open | closed | aborted")
    opened_at_unix_ms: int
    closed_at_unix_ms: int
    deadline_at_unix_ms: int = Field(description="deadline after extensions; 0 for round 0")
    duration_s: float
    mean_loss: float | None = Field(description="mean over accepted clients of their mean step loss")
    bytes_up: int
    bytes_down: int
    num_seeds: int
    fingerprint: str
    eval_metrics: dict[str, float]
    clients: list[ClientRoundInfo] = Field(description="per-client rows; empty in a summary (large runs)")
    num_selected: int = Field(0, description="clients the round selected (also in a summary)")
    num_submitted: int = Field(0, description="of them, those that submitted an update")
    cumulative_bytes: int = Field(0, description="bytes up + down of rounds 1..this one")
    fedavg_cumulative_bytes: int | None = Field(
        None,
        description="what FedAvg with full fp32 tensors would have sent by this round: "
        "2 x 4 B x trainable params x clients that submitted, summed (None when the size is unknown)",
    )
    eval_loss: float | None = Field(None, description="eval_metrics['eval_loss']: held-out loss")
    eval_exact_match: float | None = Field(None, description="eval_metrics['exact_match'], a fraction")


class ClientInfo(BaseModel):
    """One client as the server sees it."""

    client_id: str
    online: bool
    activity: str = Field(description="idle | training | syncing | offline")
    joined_at_unix_ms: int
    last_heartbeat_unix_ms: int = Field(description="0 when not seen since the server started")
    rounds_participated: int = Field(description="accepted updates")
    last_loss: float | None
    fingerprint: str
    fingerprint_version: int
    in_sync: bool
    device: str
    peak_memory_bytes: int = Field(description="peak while training (MeZO), 0 before the first update")
    inference_peak_memory_bytes: int = Field(description="peak of one plain forward; 0 = not reported")
    bytes_up: int
    bytes_down: int
    num_examples: int
    model_version: int


class Event(BaseModel):
    """One run event (round opened/closed, update accepted/rejected, client joined, ...)."""

    cursor: int
    time_unix_ms: int
    kind: str
    round_id: int
    client_id: str
    message: str


class EventPage(BaseModel):
    events: list[Event]
    next_cursor: int


class ModelSize(BaseModel):
    """Parameter count and weight bytes of the run's model, and where the numbers came from."""

    trainable_params: int | None
    weight_bytes: int | None = Field(description="all weights in fp32: the inference memory baseline")
    source: str = Field(description="how the numbers were obtained, shown on the page")


class StatusResponse(BaseModel):
    """GET /api/status: the run header."""

    server: str = Field(description="address of the fedmezo server the dashboard reads")
    server_time_unix_ms: int = Field(description="dashboard clock, to run countdowns without skew")
    status: ServerStatus
    config: RunConfigInfo
    model_size: ModelSize
    progress: float = Field(description="rounds_completed / total_rounds, in [0, 1]")
    waiting_for_clients: int = Field(description="clients still needed before a round opens (0 = none)")
    deadline_at_unix_ms: int | None = Field(description="the open round's deadline (after extensions)")


class RoundsResponse(BaseModel):
    """GET /api/rounds: every round, oldest first."""

    rounds: list[RoundInfo]
    trainable_params: int | None
    fedavg_note: str = Field(description="how the FedAvg comparison is computed, or why it is missing")


class ClientsResponse(BaseModel):
    """GET /api/clients: one page of the clients that ever joined, in client id order."""

    clients: list[ClientInfo]
    next_after: str = Field("", description="ask again with ?after= this for the next page; empty: last page")
    total: int = Field(0, description="clients that ever joined")


class ClientsPage(BaseModel):
    """One ListClients page as the source reads it."""

    clients: list[ClientInfo]
    next_after: str = ""


class HealthResponse(BaseModel):
    status: str = Field(description="always 'ok' while the dashboard process serves")


class ApiError(BaseModel):
    """Body of every 502/503 answer."""

    error: str = Field(description="machine-readable kind, e.g. status_service_unavailable")
    detail: str
    server: str
