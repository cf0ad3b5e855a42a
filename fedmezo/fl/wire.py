"""The protobuf conversions of the federation service, both directions, in one place.

The server reads requests and writes responses with these functions, the client writes requests and
reads responses with them, and `fedmezo simulate` counts a round's bytes on the very messages they
build. No logic beyond shape and size: a field that could never be valid (text longer than any name or
holding a control character, an integer SQLite cannot store, more scalars than a task has steps) is
refused here, before it is copied;
the protocol's own checks (exact step count, finite values, the round) live in the server.

Times cross the wire as Unix milliseconds (int64); fingerprints and hashes as raw 32-byte digests.

The protocol's limits and the refusal-reason metadata key are read from the proto by
`fedmezo.fl.vocabulary` and re-exported here: FINGERPRINT_BYTES, MAX_MESSAGE_BYTES, MAX_TEXT_CHARS,
MAX_STORED_INT, MAX_EVENT_CURSOR, MAX_CLIENT_ID_CHARS, REASON_METADATA_KEY.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedmezo.fl.errors import InvalidRequest, InvalidUpdate
from fedmezo.fl.records import (
    Activity,
    DeltaRecord,
    JoinInfo,
    JoinResult,
    RunSettings,
    RunState,
    Task,
    TaskResult,
    TaskStatus,
    Update,
)
from fedmezo.fl.seeds import PER_CLIENT, SHARED
from fedmezo.fl.vocabulary import (
    FINGERPRINT_BYTES,
    MAX_CLIENT_ID_CHARS,
    MAX_EVENT_CURSOR,
    MAX_MESSAGE_BYTES,
    MAX_STORED_INT,
    MAX_TEXT_CHARS,
    REASON_METADATA_KEY,
)
from fedmezo.v1 import common_pb2, federation_pb2
from fedmezo.zo import RNG_SPEC

if TYPE_CHECKING:
    from fedmezo.fl.config import RunConfig

__all__ = [
    "FINGERPRINT_BYTES",
    "MAX_CLIENT_ID_CHARS",
    "MAX_EVENT_CURSOR",
    "MAX_MESSAGE_BYTES",
    "MAX_STORED_INT",
    "MAX_TEXT_CHARS",
    "REASON_METADATA_KEY",
    "activity_from_pb",
    "activity_to_pb",
    "delta_from_pb",
    "delta_to_pb",
    "join_info_from_pb",
    "join_request",
    "join_result_from_pb",
    "join_result_to_pb",
    "ms",
    "run_config_to_pb",
    "run_settings_from_pb",
    "run_state_from_pb",
    "run_state_to_pb",
    "sync_action_to_pb",
    "task_from_pb",
    "task_result_from_pb",
    "task_result_to_pb",
    "task_to_pb",
    "update_from_pb",
    "update_to_pb",
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
_ESTIMATORS = {
    "mezo": common_pb2.ESTIMATOR_MEZO,
    "fzoo": common_pb2.ESTIMATOR_FZOO,
    "adamezo": common_pb2.ESTIMATOR_ADAMEZO,
}
_SEED_SCHEMES = {PER_CLIENT: common_pb2.SEED_SCHEME_DERIVED, SHARED: common_pb2.SEED_SCHEME_SHARED}
_ACTIVITIES = {
    Activity.IDLE: federation_pb2.CLIENT_ACTIVITY_IDLE,
    Activity.TRAINING: federation_pb2.CLIENT_ACTIVITY_TRAINING,
    Activity.SYNCING: federation_pb2.CLIENT_ACTIVITY_SYNCING,
}


def _text(name: str, value: str) -> str:
    """A client's text as the server may store, log and show it: at most MAX_TEXT_CHARS printable
    characters. Control and format characters (escape sequences, newlines, bidi overrides) would reach
    the status views, the events and the logs verbatim, where they can forge lines or repaint a
    terminal, so they are refused, not cleaned up (the client learns its value was not taken)."""
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"{name} is longer than {MAX_TEXT_CHARS} characters")
    if not value.isprintable():
        raise InvalidRequest(f"{name} holds a control or format character (printable text only)")
    return value


def _stored_int(name: str, value: int) -> int:
    if value > MAX_STORED_INT:
        raise InvalidRequest(f"{name} {value} is out of range (at most {MAX_STORED_INT})")
    return value


def ms(unix_s: float) -> int:
    return round(unix_s * 1000.0)


# --- enums ---
def run_state_to_pb(state: RunState) -> common_pb2.RunState:
    return _RUN_STATES[state]


def run_state_from_pb(state: int) -> RunState:
    """An unknown state (proto3 enums are open) reads as waiting: the client simply asks again."""
    return next((s for s, v in _RUN_STATES.items() if v == state), RunState.WAITING_FOR_CLIENTS)


def estimator_from_pb(estimator: int) -> str:
    """UNSPECIFIED (an older peer) is MeZO; an unknown one is kept by its number, and refused later."""
    return next(
        (n for n, v in _ESTIMATORS.items() if v == estimator), "mezo" if not estimator else str(estimator)
    )


def seed_scheme_from_pb(scheme: int) -> str:
    return next(
        (n for n, v in _SEED_SCHEMES.items() if v == scheme), PER_CLIENT if not scheme else str(scheme)
    )


def activity_to_pb(activity: Activity) -> federation_pb2.ClientActivity:
    return _ACTIVITIES[activity]


def activity_from_pb(activity: int) -> Activity:
    """UNSPECIFIED (a heartbeat that says nothing) reads as idle; a number outside ClientActivity is
    refused (InvalidRequest): it would be stored and shown as something the client never said."""
    if activity == federation_pb2.CLIENT_ACTIVITY_UNSPECIFIED:
        return Activity.IDLE
    found = next((a for a, v in _ACTIVITIES.items() if v == activity), None)
    if found is None:
        raise InvalidRequest(f"activity {activity} is not a ClientActivity")
    return found


# --- the run config (both services send it; the client reads it) ---
def run_config_to_pb(
    config: RunConfig,
    run_id: str,
    manifest_sha256: bytes,
    *,
    heartbeat_interval_s: float = 0.0,
    heartbeat_timeout_s: float = 0.0,
    trainable_params: int = 0,
    model_weight_bytes: int = 0,
) -> common_pb2.RunConfig:
    lora = config.mode == "lora"
    return common_pb2.RunConfig(
        run_id=run_id,
        model=config.model,
        mode=common_pb2.TRAINING_MODE_LORA if lora else common_pb2.TRAINING_MODE_FULL,
        lora_rank=config.lora_rank if lora else 0,
        lora_alpha=config.lora_alpha if lora else 0.0,
        lora_seed=config.run_seed if lora else 0,
        base_dtype=config.base_dtype if lora else "",
        weights="" if lora or config.weights == "fp32" else config.weights,
        freeze=config.freeze,  # lora mode: the adapter parts kept frozen (lora_A: LoRA-FA)
        run_seed=config.run_seed,
        seed_scheme=_SEED_SCHEMES[config.seed_scheme],
        estimator=_ESTIMATORS[config.estimator],
        perturbations=config.perturbations,
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
        lr_schedule=config.lr_schedule,
        eps=config.eps,
        batch_size=config.batch_size,
        aggregation=config.aggregation,
        clip=config.clip,
        outlier_k=config.outlier_k,
        checkpoint_every=config.checkpoint_every,
        heartbeat_interval_s=heartbeat_interval_s,
        heartbeat_timeout_s=heartbeat_timeout_s,
        max_length=config.max_length,
        trainable_params=trainable_params,
        model_weight_bytes=model_weight_bytes,
    )


def run_settings_from_pb(config: common_pb2.RunConfig) -> RunSettings:
    return RunSettings(
        run_id=config.run_id,
        model=config.model,
        mode="lora" if config.mode == common_pb2.TRAINING_MODE_LORA else "full",
        run_seed=config.run_seed,
        rng_spec=config.rng_spec,
        manifest_sha256=config.manifest_sha256.hex(),
        total_rounds=config.total_rounds,
        local_steps=config.local_steps,
        batch_size=config.batch_size,
        lora_rank=config.lora_rank or 8,
        lora_alpha=config.lora_alpha or 16.0,
        lora_seed=config.lora_seed,
        heartbeat_interval_s=config.heartbeat_interval_s or 10.0,
        clients_per_round=config.clients_per_round,
        max_length=config.max_length or None,
        estimator=estimator_from_pb(config.estimator),
        perturbations=config.perturbations or 1,
        seed_scheme=seed_scheme_from_pb(config.seed_scheme),
        base_dtype=config.base_dtype or "fp32",
        weights=config.weights or "fp32",
        freeze=config.freeze,
    )


# --- Join ---
def join_request(client_id: str, info: JoinInfo) -> federation_pb2.JoinRequest:
    return federation_pb2.JoinRequest(
        client_id=client_id,
        manifest_sha256=info.manifest_sha256,
        rng_spec=info.rng_spec,
        num_examples=info.num_examples,
        device=info.device,
        model_version=info.model_version,
        client_version=info.client_version,
        inference_peak_memory_bytes=info.inference_peak_memory_bytes,
    )


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
        checkpoint_size_bytes=result.checkpoint_size_bytes,
        run_state=run_state_to_pb(result.run_state),
    )


def join_result_from_pb(resp: federation_pb2.JoinResponse) -> JoinResult:
    return JoinResult(
        rounds_completed=resp.rounds_completed,
        fingerprint=resp.fingerprint,
        checkpoint_round=resp.checkpoint_round,
        checkpoint_size_bytes=resp.checkpoint_size_bytes,
        run_state=run_state_from_pb(resp.run_state),
        settings=run_settings_from_pb(resp.config),
    )


# --- GetTask ---
def task_to_pb(task: Task) -> federation_pb2.Task:
    return federation_pb2.Task(
        round_id=task.round_id,
        local_steps=task.local_steps,
        lr=task.lr,
        eps=task.eps,
        batch_size=task.batch_size,
        run_seed=task.run_seed,
        clip=task.clip or 0.0,
        deadline_s=task.deadline_s,
        estimator=_ESTIMATORS[task.estimator],
        perturbations=task.perturbations,
        seed_scheme=_SEED_SCHEMES[task.seed_scheme],
    )


def task_from_pb(task: federation_pb2.Task) -> Task:
    return Task(
        round_id=task.round_id,
        local_steps=task.local_steps,
        lr=task.lr,
        eps=task.eps,
        batch_size=task.batch_size,
        run_seed=task.run_seed,
        clip=task.clip or None,
        deadline_s=task.deadline_s,
        estimator=estimator_from_pb(task.estimator),
        perturbations=task.perturbations or 1,
        seed_scheme=seed_scheme_from_pb(task.seed_scheme),
    )


def task_result_to_pb(
    result: TaskResult, deltas: Sequence[federation_pb2.StreamRoundDeltasResponse] = ()
) -> federation_pb2.GetTaskResponse:
    """`deltas`: result.deltas as messages (the server builds each round's once, for every poll)."""
    resp = federation_pb2.GetTaskResponse(
        status=_TASK_STATUS[result.status], rounds_completed=result.rounds_completed, deltas=deltas
    )
    if result.task is not None:
        resp.task.CopyFrom(task_to_pb(result.task))
    if result.in_sync is not None:
        resp.sync_action = sync_action_to_pb(result.in_sync)
    return resp


def sync_action_to_pb(in_sync: bool) -> federation_pb2.SyncAction:
    return federation_pb2.SYNC_ACTION_NONE if in_sync else federation_pb2.SYNC_ACTION_RESYNC


def task_result_from_pb(resp: federation_pb2.GetTaskResponse) -> TaskResult | None:
    """None for a status this client does not know (a newer server)."""
    status = next((s for s, v in _TASK_STATUS.items() if v == resp.status), None)
    if status is None:
        return None
    task = task_from_pb(resp.task) if status is TaskStatus.ASSIGNED else None
    in_sync = None
    if resp.sync_action != federation_pb2.SYNC_ACTION_UNSPECIFIED:
        in_sync = resp.sync_action != federation_pb2.SYNC_ACTION_RESYNC
    deltas = tuple(delta_from_pb(m) for m in resp.deltas)
    return TaskResult(status, resp.rounds_completed, task, deltas, in_sync)


# --- SubmitUpdate ---
def update_to_pb(client_id: str, update: Update) -> federation_pb2.SubmitUpdateRequest:
    return federation_pb2.SubmitUpdateRequest(
        client_id=client_id,
        round_id=update.round_id,
        projected_grads=update.projected_grads,
        losses=update.losses,
        step_time_s=update.step_time_s,
        peak_memory_bytes=update.peak_memory_bytes,
        device=update.device,
        num_examples=update.num_examples,
        forward_passes=update.forward_passes,
    )


def update_from_pb(
    req: federation_pb2.SubmitUpdateRequest, *, max_steps: int, perturbations: int = 1
) -> Update:
    """`max_steps`: the local steps τ of a task, which sends τ·P scalars and τ losses; more are refused
    before they are copied (a 4 MiB message would become ~30 MB of Python floats)."""
    limits = (
        ("projected_grads", req.projected_grads, max_steps * perturbations),
        ("losses", req.losses, max_steps),
    )
    for name, values, most in limits:
        if len(values) > most:
            raise InvalidUpdate(
                f"{len(values)} {name} for a task of at most {max_steps} local steps ({most} values)"
            )
    return Update(
        round_id=req.round_id,
        projected_grads=tuple(req.projected_grads),
        losses=tuple(req.losses),
        step_time_s=req.step_time_s,
        peak_memory_bytes=_stored_int("peak_memory_bytes", req.peak_memory_bytes),
        device=_text("device", req.device),
        num_examples=_stored_int("num_examples", req.num_examples),
        forward_passes=req.forward_passes,
    )


# --- round deltas ---
def delta_to_pb(
    record: DeltaRecord, *, seed_scheme: str = PER_CLIENT
) -> federation_pb2.StreamRoundDeltasResponse:
    """Coefficients (seeds derived by the receiver): 4 bytes per seed, plus the participants when the
    seeds are per client (shared seeds need none, so the message does not grow with the clients)."""
    participants = () if seed_scheme == SHARED else record.participants
    return federation_pb2.StreamRoundDeltasResponse(
        round_id=record.round_id,
        participants=[federation_pb2.Participant(client_id=c, local_steps=n) for c, n in participants],
        coefficients=record.coefficients,
        fingerprint=record.fingerprint,
    )


def delta_from_pb(message: federation_pb2.StreamRoundDeltasResponse) -> DeltaRecord:
    return DeltaRecord(
        round_id=message.round_id,
        participants=tuple((p.client_id, p.local_steps) for p in message.participants),
        coefficients=tuple(message.coefficients),
        packed=b"",
        fingerprint=message.fingerprint,
    )
