"""Bytes a simulated round would put on the wire, counted on the real protocol messages.

The seed-scalar count serialises the very messages a daemon and the server exchange in one round
(GetTask, SubmitUpdate, StreamRoundDeltas, ReportFingerprint; requests and responses), built by the
same conversion functions, and measured like the server's traffic meter does: serialized protobuf
bytes, without HTTP/2 framing. Full-state methods move the trainable tensors both ways, fp32.
"""

from __future__ import annotations

from fedmezo.fl.config import RunConfig
from fedmezo.fl.records import DeltaRecord, TaskRecord, TaskResult, TaskStatus
from fedmezo.fl.rounds import task_for
from fedmezo.fl.vocabulary import FINGERPRINT_BYTES
from fedmezo.fl.wire import delta_to_pb, task_result_to_pb
from fedmezo.v1 import federation_pb2 as fpb

__all__ = ["full_state_round_bytes", "seed_scalar_round_bytes"]

FP32_BYTES = 4
MAX_WAIT_S = 30.0  # a daemon's long-poll wait as it asks for it (the server's default cap)


def seed_scalar_round_bytes(
    config: RunConfig,
    task: TaskRecord,
    submitted: fpb.SubmitUpdateRequest,
    delta: DeltaRecord,
    *,
    rounds_completed: int,
) -> tuple[int, int]:
    """(up, down) bytes of one client's round under fedmezo's protocol (`submitted`: its upload)."""
    client_id, round_id = task.client_id, task.round_id
    up_messages = [
        fpb.GetTaskRequest(client_id=client_id, known_version=rounds_completed, wait_s=MAX_WAIT_S),
        submitted,
        fpb.StreamRoundDeltasRequest(client_id=client_id, from_round=round_id),
        fpb.ReportFingerprintRequest(
            client_id=client_id, model_version=round_id, fingerprint=bytes(FINGERPRINT_BYTES)
        ),
    ]
    task_result = TaskResult(TaskStatus.ASSIGNED, rounds_completed, task_for(config, task, config.deadline_s))
    down_messages = [
        task_result_to_pb(task_result),
        fpb.SubmitUpdateResponse(status=fpb.UPDATE_STATUS_ACCEPTED, round_id=round_id),
        delta_to_pb(delta, seed_scheme=config.seed_scheme),
        fpb.ReportFingerprintResponse(in_sync=True, action=fpb.SYNC_ACTION_NONE),
    ]
    return (
        sum(m.ByteSize() for m in up_messages),
        sum(m.ByteSize() for m in down_messages),
    )


def full_state_round_bytes(trainable_params: int) -> tuple[int, int]:
    """(up, down) bytes of one client's round when the trainable tensors travel as fp32."""
    size = trainable_params * FP32_BYTES
    return size, size
