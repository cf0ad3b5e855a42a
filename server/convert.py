"""Protobuf <-> domain conversions the server needs (requests in, responses out). No logic beyond shape.

The client builds its requests in fedmezo.client.connection (it may not import the server).

Times cross the wire as Unix milliseconds (int64); fingerprints and hashes as raw 32-byte digests.

Shape includes size: a request field that could never be valid (text longer than any name, an integer
SQLite cannot store, more scalars than a task has steps) is refused here, before it is copied or
stored. The domain checks (exact step count, finite values, the round) stay in the coordinator.
"""

from __future__ import annotations

from fedmezo.server.config import ServerConfig
from fedmezo.server.coordinator import JoinInfo, JoinResult, RunState, TaskResult, TaskStatus, UpdateInput
from fedmezo.fl.errors import InvalidRequest, InvalidUpdate
from fedmezo.fl.records import DeltaRecord, EventRecord, RoundState
from fedmezo.server.status_view import ClientView, RoundView, StatusView
from fedmezo.v1 import common_pb2, federation_pb2, status_pb2
from fedmezo.zo import RNG_SPEC

__all__ = [
    "MAX_TEXT_CHARS",
    "activity_from_pb",
    "client_view_to_pb",
    "cursor_from_pb",
    "delta_to_pb",
    "event_to_pb",
    "join_info_from_pb",
    "join_result_to_pb",
    "ms",
    "round_view_to_pb",
    "run_config_to_pb",
    "run_state_to_pb",
    "status_view_to_pb",
    "task_result_to_pb",
    "update_from_pb",
]

_RUN_STATES = {
    RunState.WAITING_FOR_CLIENTS: common_pb2.RUN_STATE_WAITING_FOR_CLIENTS,
    RunState.ROUND_OPEN: common_pb2.RUN_STATE_ROUND_OPEN,
    RunState.FINISHED: common_pb2.RUN_STATE_FINISHED,
}
_TASK_STATUS = {
    TaskStatus.ASSIGNED: federation_pb2.TASK_STATUS_ASSIGNED,
    TaskStatus.NO_TASK: federation_pb2.TASK_STATUS_NO_TASK,
    TaskStatus.RUN_FINISHED: federation_pb2.TASK_STATUS_RUN_FINISHED,
}
_ROUND_STATES = {
    RoundState.OPEN: status_pb2.ROUND_STATE_OPEN,
    RoundState.CLOSED: status_pb2.ROUND_STATE_CLOSED,
    RoundState.ABORTED: status_pb2.ROUND_STATE_ABORTED,
}
ACTIVITIES = {
    federation_pb2.CLIENT_ACTIVITY_UNSPECIFIED: "idle",
    federation_pb2.CLIENT_ACTIVITY_IDLE: "idle",
    federation_pb2.CLIENT_ACTIVITY_TRAINING: "training",
    federation_pb2.CLIENT_ACTIVITY_SYNCING: "syncing",
}
MAX_TEXT_CHARS = 256  # device names, versions, specs: a line on the dashboard, not a payload
MAX_STORED_INT = 2**63 - 1  # SQLite INTEGER is signed 64-bit; a larger uint64 cannot be stored


def _text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"{name} is longer than {MAX_TEXT_CHARS} characters")
    return value


def _stored_int(name: str, value: int) -> int:
    if value > MAX_STORED_INT:
        raise InvalidRequest(f"{name} {value} is out of range (at most {MAX_STORED_INT})")
    return value


def activity_from_pb(activity: int) -> str:
    """An activity number from a newer client (proto3 enums are open) reads as idle."""
    return ACTIVITIES.get(activity, "idle")  # type: ignore[call-overload]


def cursor_from_pb(cursor: int) -> int:
    """An event cursor past the last storable one means "after everything"."""
    return min(cursor, MAX_STORED_INT)


def ms(unix_s: float) -> int:
    return round(unix_s * 1000.0)


def run_state_to_pb(state: RunState) -> common_pb2.RunState:
    return _RUN_STATES[state]


def run_config_to_pb(
    config: ServerConfig,
    run_id: str,
    manifest_sha256: bytes,
    *,
    trainable_params: int = 0,
    model_weight_bytes: int = 0,
) -> common_pb2.RunConfig:
    return common_pb2.RunConfig(
        run_id=run_id,
        model=config.model,
        mode=common_pb2.TRAINING_MODE_LORA if config.mode == "lora" else common_pb2.TRAINING_MODE_FULL,
        lora_rank=config.lora_rank if config.mode == "lora" else 0,
        lora_alpha=config.lora_alpha if config.mode == "lora" else 0.0,
        lora_seed=config.run_seed if config.mode == "lora" else 0,
        run_seed=config.run_seed,
        seed_scheme=common_pb2.SEED_SCHEME_DERIVED,
        rng_spec=RNG_SPEC,
        manifest_sha256=manifest_sha256,
        total_rounds=config.rounds,
        local_steps=config.local_steps,
        clients_per_round=config.clients_per_round,
        client_fraction=config.fraction if config.clients_per_round == 0 else 0.0,
        min_clients=config.min_clients,
        quorum_fraction=config.quorum,
        round_deadline_s=config.deadline_s,
        lr=config.lr,
        lr_spread=config.lr_spread,
        lr_strategy=config.lr_strategy,
        eps=config.eps,
        batch_size=config.batch_size,
        aggregation=config.aggregation,
        clip=config.clip,
        outlier_k=config.outlier_k,
        checkpoint_every=config.checkpoint_every,
        heartbeat_interval_s=config.heartbeat_interval_s,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        max_length=config.max_length,
        trainable_params=trainable_params,
        model_weight_bytes=model_weight_bytes,
    )


# --- Join ---
def join_info_from_pb(req: federation_pb2.JoinRequest) -> JoinInfo:
    return JoinInfo(
        manifest_sha256=req.manifest_sha256,
        rng_spec=_text("rng_spec", req.rng_spec),
        num_examples=_stored_int("num_examples", req.num_examples),
        device=_text("device", req.device),
        model_version=req.model_version,
        client_version=_text("client_version", req.client_version),
        inference_peak_memory_bytes=_stored_int(
            "inference_peak_memory_bytes", req.inference_peak_memory_bytes
        ),
    )


def join_result_to_pb(result: JoinResult, config: common_pb2.RunConfig) -> federation_pb2.JoinResponse:
    return federation_pb2.JoinResponse(
        config=config,
        rounds_completed=result.rounds_completed,
        fingerprint=result.fingerprint,
        checkpoint_round=result.checkpoint_round,
        checkpoint_size_bytes=result.checkpoint_size,
        run_state=run_state_to_pb(result.run_state),
    )


# --- GetTask ---
def task_result_to_pb(result: TaskResult, config: ServerConfig) -> federation_pb2.GetTaskResponse:
    resp = federation_pb2.GetTaskResponse(
        status=_TASK_STATUS[result.status], rounds_completed=result.rounds_completed
    )
    if result.task is not None:
        resp.task.CopyFrom(
            federation_pb2.Task(
                round_id=result.task.round_id,
                local_steps=result.task.local_steps,
                lr=result.task.lr,
                eps=config.eps,
                batch_size=config.batch_size,
                run_seed=config.run_seed,
                clip=config.clip,
                deadline_s=result.deadline_s,
            )
        )
    return resp


# --- SubmitUpdate ---
def update_from_pb(req: federation_pb2.SubmitUpdateRequest, *, max_steps: int) -> UpdateInput:
    """`max_steps`: the local steps of a task (every task gets the configured τ); more scalars than that
    are refused before they are copied (a 4 MiB message would become ~30 MB of Python floats)."""
    for name, values in (("projected_grads", req.projected_grads), ("losses", req.losses)):
        if len(values) > max_steps:
            raise InvalidUpdate(f"{len(values)} {name} for a task of at most {max_steps} local steps")
    return UpdateInput(
        round_id=req.round_id,
        projected_grads=tuple(req.projected_grads),
        losses=tuple(req.losses),
        step_time_s=req.step_time_s,
        peak_memory_bytes=_stored_int("peak_memory_bytes", req.peak_memory_bytes),
        device=_text("device", req.device),
        num_examples=_stored_int("num_examples", req.num_examples),
    )


# --- round deltas ---
def delta_to_pb(record: DeltaRecord) -> federation_pb2.StreamRoundDeltasResponse:
    """Participants + coefficients (seeds derived by the receiver): 4 bytes per local step."""
    return federation_pb2.StreamRoundDeltasResponse(
        round_id=record.round_id,
        participants=[federation_pb2.Participant(client_id=c, local_steps=n) for c, n in record.participants],
        coefficients=record.coefficients,
        fingerprint=record.fingerprint,
    )


# --- status ---
def status_view_to_pb(view: StatusView) -> status_pb2.GetStatusResponse:
    return status_pb2.GetStatusResponse(
        run_state=run_state_to_pb(view.run_state),
        rounds_completed=view.rounds_completed,
        current_round=view.current_round,
        total_rounds=view.total_rounds,
        fingerprint=view.fingerprint,
        clients_online=view.clients_online,
        clients_total=view.clients_total,
        bytes_up=view.bytes_up,
        bytes_down=view.bytes_down,
        started_at_unix_ms=ms(view.started_at),
        last_event_cursor=view.last_event_cursor,
    )


def round_view_to_pb(view: RoundView) -> status_pb2.RoundInfo:
    return status_pb2.RoundInfo(
        round_id=view.round_id,
        state=_ROUND_STATES[view.state],
        opened_at_unix_ms=ms(view.opened_at),
        closed_at_unix_ms=ms(view.closed_at),
        duration_s=view.duration_s,
        clients=[
            status_pb2.ClientRoundInfo(
                client_id=c.client_id,
                submitted=c.submitted,
                accepted=c.accepted,
                rejected_reason=c.rejected_reason,
                lr=c.lr,
                weight=c.weight,
                mean_loss=c.mean_loss,
                losses=c.losses,
                step_time_s=c.step_time_s,
                peak_memory_bytes=c.peak_memory_bytes,
                device=c.device,
                bytes_up=c.bytes_up,
                bytes_down=c.bytes_down,
            )
            for c in view.clients
        ],
        mean_loss=view.mean_loss,
        bytes_up=view.bytes_up,
        bytes_down=view.bytes_down,
        num_seeds=view.num_seeds,
        fingerprint=view.fingerprint,
        eval_metrics=view.eval_metrics,
        deadline_at_unix_ms=ms(view.deadline_at),
    )


def client_view_to_pb(view: ClientView) -> status_pb2.ClientInfo:
    return status_pb2.ClientInfo(
        client_id=view.client_id,
        online=view.online,
        joined_at_unix_ms=ms(view.joined_at),
        last_heartbeat_unix_ms=ms(view.last_heartbeat),
        rounds_participated=view.rounds_participated,
        last_loss=view.last_loss,
        fingerprint=view.fingerprint,
        fingerprint_version=view.fingerprint_version,
        in_sync=view.in_sync,
        device=view.device,
        peak_memory_bytes=view.peak_memory_bytes,
        bytes_up=view.bytes_up,
        bytes_down=view.bytes_down,
        num_examples=view.num_examples,
        model_version=view.model_version,
        activity=view.activity,
        inference_peak_memory_bytes=view.inference_peak_memory_bytes,
    )


def event_to_pb(event: EventRecord) -> status_pb2.Event:
    return status_pb2.Event(
        cursor=event.cursor,
        time_unix_ms=ms(event.time),
        kind=event.kind,
        round_id=event.round_id,
        client_id=event.client_id,
        message=event.message,
    )
