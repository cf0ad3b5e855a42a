"""`GrpcServerLink`: the real `ServerLink` over a gRPC channel, and the one place grpc errors are translated.

One channel per daemon, TLS by default (mTLS with a client certificate, plaintext only with an explicit
`insecure=True`), the bearer token as metadata on every call, a deadline on every call, explicit
message size limits, and a short reconnect backoff inside gRPC so a restarted server is found quickly
(our own retry policy decides what to do with the failures meanwhile).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedmezo.client.errors import AuthFailed, Incompatible, Refused, RpcFailed, Unavailable
from fedmezo.fl import errors, vocabulary, wire
from fedmezo.fl.records import (
    Activity,
    Checkpoint,
    DeltaRecord,
    JoinInfo,
    JoinResult,
    RunSettings,
    TaskResult,
    Update,
)
from fedmezo.v1 import federation_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc

__all__ = [
    "CHECKPOINT_DEADLINE_S",
    "FOLLOW_DEADLINE_S",
    "REPLAY_DEADLINE_S",
    "ChannelSettings",
    "GrpcServerLink",
    "translate_error",
]

logger = logging.getLogger("fedmezo.client")

REPLAY_DEADLINE_S = 600.0  # a non-following delta stream: replaying many rounds of a big model takes a while
FOLLOW_DEADLINE_S = 300.0  # a following stream is reopened after this (seconds), so it never hangs forever
CHECKPOINT_DEADLINE_S = 1800.0  # a full-model download over a slow edge link
RECONNECT_BACKOFF_MS = 1000  # gRPC's own reconnect backoff cap: find a restarted server within ~1 s

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}
_AUTH = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# RESOURCE_EXHAUSTED refusals that pass with time: back off and retry instead of giving up.
_RETRY_REASONS = frozenset({errors.RateLimited.reason, errors.TooManyStreams.reason})

T = TypeVar("T")


def translate_error(exc: grpc.RpcError) -> RpcFailed:
    """Map a gRPC failure onto our tree (errors.py): transient, auth, incompatible, or a final refusal."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    reason = ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == vocabulary.REASON_METADATA_KEY:
            reason = value if isinstance(value, str) else value.decode()
    name = code.name if code is not None else "UNKNOWN"
    if code in _TRANSIENT or reason in _RETRY_REASONS:
        return Unavailable(name, reason, details)
    if code in _AUTH:
        return AuthFailed(name, reason, details)
    if reason == errors.IncompatibleClient.reason:
        return Incompatible(name, reason, details)
    return Refused(name, reason, details)


@dataclass(frozen=True)
class ChannelSettings:
    target: str
    client_id: str
    token: str | None = None
    insecure: bool = False
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    rpc_deadline_s: float = 30.0


def _channel(settings: ChannelSettings) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", vocabulary.MAX_MESSAGE_BYTES),  # what the server accepts
        ("grpc.max_receive_message_length", vocabulary.MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),  # retries are ours (retry.py), not gRPC's
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]
    if settings.insecure:
        return grpc.insecure_channel(settings.target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca,
        private_key=settings.tls_key,
        certificate_chain=settings.tls_cert,
    )
    return grpc.secure_channel(settings.target, credentials, options=options)


class GrpcServerLink:
    """`ServerLink` over gRPC. Thread-safe (the heartbeat thread shares the channel)."""

    def __init__(self, settings: ChannelSettings) -> None:
        self._settings = settings
        self._channel = _channel(settings)
        self._federation = federation_pb2_grpc.FederationServiceStub(self._channel)
        self._status = status_pb2_grpc.StatusServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        self._lock = threading.Lock()
        self._closed = False  # set before the channel closes: a call that then finds it closed is a stop
        self.bytes_up = 0  # serialized payload bytes, for the client's own log
        self.bytes_down = 0

    def _count(self, request: Any, response: Any) -> None:
        with self._lock:
            self.bytes_up += request.ByteSize()
            self.bytes_down += response.ByteSize() if response is not None else 0

    def _closed_error(self, exc: ValueError) -> Unavailable:
        """A call started after `close` (a stop raced the loop): what a call in flight gets, CANCELLED."""
        if not self._closed:
            raise exc  # not ours: a real bug, not a stop
        return Unavailable("CANCELLED", "", "the connection was closed (stopping)")

    def _unary(self, method: Callable[..., T], request: Any, deadline_s: float | None = None) -> T:
        try:
            response = method(
                request, timeout=deadline_s or self._settings.rpc_deadline_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            raise self._closed_error(exc) from exc
        self._count(request, response)
        return response

    def _stream(self, method: Callable[..., Any], request: Any, deadline_s: float) -> Iterator[Any]:
        self._count(request, None)
        try:
            call = method(request, timeout=deadline_s, metadata=self._metadata)
        except ValueError as exc:
            raise self._closed_error(exc) from exc
        try:
            for message in call:
                self._count(federation_pb2.DownloadCheckpointRequest(), message)
                yield message
        except grpc.RpcError as exc:
            raise translate_error(exc) from exc
        finally:
            call.cancel()  # no-op when finished; frees the stream when the consumer stops early

    def get_run_config(self) -> RunSettings:
        response = self._unary(self._status.GetRunConfig, status_pb2.GetRunConfigRequest())
        return wire.run_settings_from_pb(response.config)

    def join(
        self,
        *,
        manifest_sha256: str,
        rng_spec: str,
        num_examples: int,
        device: str,
        model_version: int,
        inference_peak_memory_bytes: int = 0,
    ) -> JoinResult:
        from fedmezo import __version__

        info = JoinInfo(
            manifest_sha256=bytes.fromhex(manifest_sha256),
            rng_spec=rng_spec,
            num_examples=num_examples,
            device=device,
            model_version=model_version,
            client_version=__version__,
            inference_peak_memory_bytes=inference_peak_memory_bytes,
        )
        request = wire.join_request(self._settings.client_id, info)
        return wire.join_result_from_pb(self._unary(self._federation.Join, request))

    def heartbeat(self, *, model_version: int, activity: Activity, round_id: int = 0, step: int = 0) -> int:
        request = federation_pb2.HeartbeatRequest(
            client_id=self._settings.client_id,
            model_version=model_version,
            activity=wire.activity_to_pb(activity),
            round_id=round_id,
            step=step,
        )
        return int(self._unary(self._federation.Heartbeat, request).rounds_completed)

    def get_task(
        self, *, known_version: int, wait_s: float, max_deltas: int = 0, fingerprint: bytes = b""
    ) -> TaskResult:
        request = federation_pb2.GetTaskRequest(
            client_id=self._settings.client_id,
            known_version=known_version,
            wait_s=wait_s,
            max_deltas=max_deltas,
            fingerprint=fingerprint,
        )
        response = self._unary(self._federation.GetTask, request, wait_s + self._settings.rpc_deadline_s)
        result = wire.task_result_from_pb(response)
        if result is None:
            raise Refused("UNKNOWN", vocabulary.BAD_TASK_STATUS, f"unknown task status {response.status}")
        return result

    def submit(self, update: Update, *, base_fingerprint: bytes = b"") -> None:
        request = wire.update_to_pb(self._settings.client_id, update)
        request.base_fingerprint = base_fingerprint
        self._unary(self._federation.SubmitUpdate, request)

    def report_fingerprint(self, *, model_version: int, fingerprint: bytes) -> bool:
        """True when the server finds this replica in sync; False: it asks for a resync."""
        request = federation_pb2.ReportFingerprintRequest(
            client_id=self._settings.client_id, model_version=model_version, fingerprint=fingerprint
        )
        response = self._unary(self._federation.ReportFingerprint, request)
        return bool(response.action != federation_pb2.SYNC_ACTION_RESYNC)

    def stream_deltas(self, *, from_round: int, follow: bool) -> Iterator[DeltaRecord]:
        request = federation_pb2.StreamRoundDeltasRequest(
            client_id=self._settings.client_id, from_round=from_round, follow=follow
        )
        deadline = FOLLOW_DEADLINE_S if follow else REPLAY_DEADLINE_S
        for message in self._stream(self._federation.StreamRoundDeltas, request, deadline):
            yield wire.delta_from_pb(message)

    def download_checkpoint(self) -> Checkpoint:
        request = federation_pb2.DownloadCheckpointRequest(client_id=self._settings.client_id)
        header: federation_pb2.DownloadCheckpointResponse | None = None
        data = bytearray()
        for chunk in self._stream(self._federation.DownloadCheckpoint, request, CHECKPOINT_DEADLINE_S):
            if header is None:
                header = chunk
            if chunk.offset != len(data):
                raise Refused(
                    "DATA_LOSS", vocabulary.CHECKPOINT_GAP, f"chunk at {chunk.offset}, expected {len(data)}"
                )
            data += chunk.data
        if header is None:
            raise Refused("NOT_FOUND", errors.NoCheckpoint.reason, "empty checkpoint stream")
        if len(data) != header.total_size:
            raise Refused(
                "DATA_LOSS", vocabulary.CHECKPOINT_TRUNCATED, f"{len(data)} of {header.total_size} bytes"
            )
        return Checkpoint(
            round_id=header.round_id,
            data=bytes(data),
            sha256=header.sha256,
            fingerprint=header.fingerprint,
        )

    def close(self) -> None:
        """Close the channel; in-flight calls end with CANCELLED (how a stop interrupts a long-poll), and
        later ones raise the same `Unavailable`, so a stop that lands between two calls also ends cleanly."""
        self._closed = True
        self._channel.close()
