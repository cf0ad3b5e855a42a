"""`GrpcServerLink` over a real socket against a scripted in-process servicer: conversions, metadata,
deadlines and the translation of gRPC status codes into the client's error tree."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from fedmezo.client.connection import ChannelSettings, GrpcServerLink
from fedmezo.client.errors import AuthFailed, Incompatible, Refused, Unavailable
from fedmezo.fl.records import Activity, TaskStatus, Update
from fedmezo.v1 import common_pb2, federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc

CONFIG = common_pb2.RunConfig(
    run_id="r1",
    model="tiny-random",
    mode=common_pb2.TRAINING_MODE_LORA,
    lora_rank=4,
    run_seed=2**63 + 5,
    rng_spec="fedmezo-rng-v1",
    manifest_sha256=bytes(range(32)),
    total_rounds=3,
    local_steps=20,
    lr=1e-5,
    eps=1e-3,
    batch_size=4,
    heartbeat_interval_s=2.0,
    max_length=77,
)


class Scripted(federation_pb2_grpc.FederationServiceServicer, status_pb2_grpc.StatusServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self.requests: list[Any] = []
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.blob = bytes(range(256)) * 9000  # > 2 chunks
        self.config = CONFIG

    def _seen(self, request: Any, context: grpc.ServicerContext) -> None:
        self.metadata = list(context.invocation_metadata())
        self.requests.append(request)
        if self.abort is not None:
            code, reason = self.abort
            context.set_trailing_metadata((("fedmezo-reason", reason),))
            context.abort(code, f"scripted {reason}")

    def GetRunConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        return status_pb2.GetRunConfigResponse(config=self.config)

    def Join(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        return federation_pb2.JoinResponse(
            config=CONFIG,
            rounds_completed=2,
            fingerprint=b"\x01" * 32,
            checkpoint_round=1,
            checkpoint_size_bytes=len(self.blob),
            run_state=common_pb2.RUN_STATE_ROUND_OPEN,
        )

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        return federation_pb2.HeartbeatResponse(rounds_completed=2)

    def GetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        task = federation_pb2.Task(round_id=3, local_steps=20, lr=1e-5, eps=1e-3, batch_size=4, run_seed=7)
        return federation_pb2.GetTaskResponse(
            status=federation_pb2.TASK_STATUS_ASSIGNED, task=task, rounds_completed=2
        )

    def SubmitUpdate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        return federation_pb2.SubmitUpdateResponse(status=federation_pb2.UPDATE_STATUS_ACCEPTED, round_id=3)

    def ReportFingerprint(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._seen(request, context)
        return federation_pb2.ReportFingerprintResponse(
            in_sync=False, action=federation_pb2.SYNC_ACTION_RESYNC
        )

    def StreamRoundDeltas(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._seen(request, context)
        for r in range(request.from_round, 3):
            yield federation_pb2.StreamRoundDeltasResponse(
                round_id=r,
                participants=[federation_pb2.Participant(client_id="a", local_steps=2)],
                coefficients=[0.5, -0.25],
                fingerprint=bytes([r]) * 32,
            )

    def DownloadCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._seen(request, context)
        chunk = 1 << 20
        for offset in range(0, len(self.blob), chunk):
            message = federation_pb2.DownloadCheckpointResponse(
                offset=offset, data=self.blob[offset : offset + chunk]
            )
            if offset == 0:
                message.round_id, message.total_size = 1, len(self.blob)
                message.sha256, message.fingerprint = hashlib.sha256(self.blob).digest(), b"\x02" * 32
            yield message


@pytest.fixture
def served() -> Iterator[tuple[Scripted, GrpcServerLink]]:
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    federation_pb2_grpc.add_FederationServiceServicer_to_server(servicer, server)
    status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    link = GrpcServerLink(
        ChannelSettings(f"127.0.0.1:{port}", "me", token="tok", insecure=True, rpc_deadline_s=5)
    )
    try:
        yield servicer, link
    finally:
        link.close()
        server.stop(grace=None)


def test_conversions_and_bearer_token(served: tuple[Scripted, GrpcServerLink]) -> None:
    servicer, link = served
    settings = link.get_run_config()
    assert ("authorization", "Bearer tok") in servicer.metadata
    assert (settings.mode, settings.lora_rank, settings.run_seed) == ("lora", 4, 2**63 + 5)
    assert settings.manifest_sha256 == bytes(range(32)).hex()
    assert settings.max_length == 77  # the server's truncation length wins over the client's flag
    joined = link.join(
        manifest_sha256="ab" * 32,
        rng_spec="fedmezo-rng-v1",
        num_examples=9,
        device="cpu",
        model_version=1,
        inference_peak_memory_bytes=5 << 20,
    )
    assert servicer.requests[-1].manifest_sha256 == b"\xab" * 32 and servicer.requests[-1].client_id == "me"
    assert servicer.requests[-1].inference_peak_memory_bytes == 5 << 20
    assert joined.settings.max_length == 77
    assert (joined.rounds_completed, joined.checkpoint_round, joined.finished) == (2, 1, False)
    assert link.heartbeat(model_version=2, activity=Activity.TRAINING, round_id=3, step=4) == 2
    poll = link.get_task(known_version=2, wait_s=0.1)
    assert poll.status is TaskStatus.ASSIGNED and poll.task is not None and poll.task.round_id == 3
    assert poll.task.clip is None  # 0 on the wire = off
    link.submit(Update(3, (0.5, -1.0), (2.0, 2.1), 0.1, 123, "cpu"))
    assert list(servicer.requests[-1].projected_grads) == [0.5, -1.0]
    # the scripted server answers RESYNC: the link says "not in sync" (True meant "resync" before fl)
    assert link.report_fingerprint(model_version=2, fingerprint=bytes(32)) is False
    deltas = list(link.stream_deltas(from_round=1, follow=False))
    assert [d.round_id for d in deltas] == [1, 2] and deltas[0].participants == (("a", 2),)
    assert deltas[1].fingerprint == b"\x02" * 32
    checkpoint = link.download_checkpoint()
    assert checkpoint.data == servicer.blob and checkpoint.sha256 == hashlib.sha256(servicer.blob).digest()
    assert link.bytes_up > 0 and link.bytes_down > len(servicer.blob)


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", AuthFailed),
        (grpc.StatusCode.PERMISSION_DENIED, "permission_denied", AuthFailed),
        (grpc.StatusCode.FAILED_PRECONDITION, "incompatible_client", Incompatible),
        (grpc.StatusCode.FAILED_PRECONDITION, "round_closed", Refused),
        (grpc.StatusCode.FAILED_PRECONDITION, "diverged", Refused),  # the daemon resyncs
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_update", Refused),
        (grpc.StatusCode.UNAVAILABLE, "", Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited", Unavailable),  # retried with backoff
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_clients", Refused),  # waiting will not help
    ],
)
def test_status_codes_map_onto_the_error_tree(
    served: tuple[Scripted, GrpcServerLink], code: grpc.StatusCode, reason: str, error: type[Exception]
) -> None:
    servicer, link = served
    servicer.abort = (code, reason)
    with pytest.raises(error) as info:
        link.submit(Update(3, (0.5,), (), 0.1, 1, "cpu"))
    assert info.value.code == code.name and info.value.reason == reason  # type: ignore[attr-defined]


def test_stream_errors_are_translated_too(served: tuple[Scripted, GrpcServerLink]) -> None:
    servicer, link = served
    servicer.abort = (grpc.StatusCode.FAILED_PRECONDITION, "not_joined")
    with pytest.raises(Refused, match="not_joined"):
        list(link.stream_deltas(from_round=1, follow=True))


def test_a_call_after_close_is_cancelled_like_one_in_flight(served: tuple[Scripted, GrpcServerLink]) -> None:
    """A stop closes the link from a signal handler; the loop may be just about to start its next call.
    That call must end as a cancelled one does (Unavailable, which the daemon reads as "stopping" once its
    stop is set), not with grpc's ValueError for a closed channel, which would exit the client with 1."""
    _, link = served
    link.close()
    with pytest.raises(Unavailable, match="closed") as info:
        link.get_run_config()
    assert info.value.code == "CANCELLED"  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="closed"):
        link.heartbeat(model_version=0, activity=Activity.IDLE)
    with pytest.raises(Unavailable, match="closed"):
        list(link.stream_deltas(from_round=1, follow=True))


def test_an_older_server_without_max_length_leaves_it_to_the_client(
    served: tuple[Scripted, GrpcServerLink],
) -> None:
    servicer, link = served
    servicer.config = common_pb2.RunConfig()
    servicer.config.CopyFrom(CONFIG)
    servicer.config.ClearField("max_length")  # 0 on the wire: a server from before the field
    assert link.get_run_config().max_length is None


def test_no_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    link = GrpcServerLink(ChannelSettings(f"127.0.0.1:{port}", "me", insecure=True, rpc_deadline_s=2))
    try:
        with pytest.raises(Unavailable):
            link.get_run_config()
    finally:
        link.close()
