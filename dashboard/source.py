"""The one seam between the dashboard and a fedmezo server: a small `StatusSource` protocol, and its
gRPC implementation over StatusService (protobuf in, `schemas` models out).

SourceError                  the status service could not answer
├── SourceUnavailable        unreachable, timed out, shutting down  → HTTP 503
└── SourceRefused            the server refused (auth, bad request)  → HTTP 502

`grpc.RpcError` is translated here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from fedmezo.dashboard.schemas import (
    ClientInfo,
    ClientRoundInfo,
    ClientsPage,
    Event,
    EventPage,
    RoundInfo,
    RunConfigInfo,
    ServerStatus,
)
from fedmezo.status_pages import list_all_clients, list_all_rounds
from fedmezo.v1 import common_pb2, status_pb2, status_pb2_grpc

__all__ = [
    "RPC_DEADLINE_S",
    "GrpcStatusSource",
    "SourceError",
    "SourceRefused",
    "SourceUnavailable",
    "StatusSource",
]

RPC_DEADLINE_S = 5.0  # every status RPC; the page refreshes every few seconds, so fail fast
_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

T = TypeVar("T")


class SourceError(Exception):
    """The status service could not answer; `str()` is shown to the operator."""


class SourceUnavailable(SourceError):
    """The server is unreachable, timed out or is shutting down."""


class SourceRefused(SourceError):
    """The server answered with an error (bad token, permission, internal error)."""


class StatusSource(Protocol):
    """What the dashboard needs from a server; every method may raise `SourceError`."""

    address: str

    def run_config(self) -> RunConfigInfo: ...

    def status(self) -> ServerStatus: ...

    def rounds(self, from_round: int = 0, limit: int = 0, *, summary: bool = False) -> list[RoundInfo]: ...

    def clients(self) -> list[ClientInfo]: ...

    def clients_page(self, after: str = "", limit: int = 0) -> ClientsPage: ...

    def events(self, after_cursor: int, limit: int = 0) -> EventPage: ...

    def close(self) -> None: ...


def _f32(value: float) -> float:
    """A proto `float` as its shortest fp32 decimal (2e-06, not 1.9999999949504854e-06)."""
    return float(f"{value:.7g}")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else _f32(value)


MEZO = common_pb2.ESTIMATOR_MEZO


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unspecified"


class GrpcStatusSource:
    """`StatusSource` over a (sync) gRPC channel; thread-safe, so FastAPI's worker threads share it."""

    def __init__(
        self,
        channel: grpc.Channel,
        address: str,
        *,
        token: str | None = None,
        deadline_s: float = RPC_DEADLINE_S,
    ) -> None:
        self.address = address
        self._channel = channel
        self._stub = status_pb2_grpc.StatusServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._deadline_s = deadline_s

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._deadline_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            message = f"{code.name}: {details}"  # the address travels separately (ApiError.server)
            if code in _UNAVAILABLE_CODES:
                raise SourceUnavailable(message) from exc
            raise SourceRefused(message) from exc

    def run_config(self) -> RunConfigInfo:
        c = self._call(self._stub.GetRunConfig, status_pb2.GetRunConfigRequest()).config
        return RunConfigInfo(
            run_id=c.run_id,
            model=c.model,
            mode=_enum_name(common_pb2.TrainingMode, c.mode, "TRAINING_MODE_"),
            lora_rank=c.lora_rank,
            total_rounds=c.total_rounds,
            local_steps=c.local_steps,
            clients_per_round=c.clients_per_round,
            client_fraction=_f32(c.client_fraction),
            min_clients=c.min_clients,
            quorum_fraction=_f32(c.quorum_fraction),
            round_deadline_s=_f32(c.round_deadline_s),
            lr=_f32(c.lr),
            lr_spread=_f32(c.lr_spread),
            lr_strategy=c.lr_strategy,
            lr_schedule=c.lr_schedule or "constant",  # empty: a server that predates the field
            eps=_f32(c.eps),
            estimator=_enum_name(common_pb2.Estimator, c.estimator or MEZO, "ESTIMATOR_"),  # 0: older server
            perturbations=c.perturbations or 1,
            base_dtype=c.base_dtype or "fp32",  # empty: fp32 (also from servers before the field)
            weights=c.weights or "fp32",  # likewise
            freeze=c.freeze,
            seed_scheme="shared" if c.seed_scheme == common_pb2.SEED_SCHEME_SHARED else "per-client",
            batch_size=c.batch_size,
            aggregation=c.aggregation,
            heartbeat_timeout_s=_f32(c.heartbeat_timeout_s),
            rng_spec=c.rng_spec,
            trainable_params=c.trainable_params or None,  # 0: a server that predates the field
            model_weight_bytes=c.model_weight_bytes or None,
        )

    def status(self) -> ServerStatus:
        s = self._call(self._stub.GetStatus, status_pb2.GetStatusRequest())
        return ServerStatus(
            run_state=_enum_name(common_pb2.RunState, s.run_state, "RUN_STATE_"),
            rounds_completed=s.rounds_completed,
            current_round=s.current_round,
            total_rounds=s.total_rounds,
            fingerprint=s.fingerprint.hex(),
            clients_online=s.clients_online,
            clients_total=s.clients_total,
            bytes_up=s.bytes_up,
            bytes_down=s.bytes_down,
            started_at_unix_ms=s.started_at_unix_ms,
            last_event_cursor=s.last_event_cursor,
        )

    def rounds(self, from_round: int = 0, limit: int = 0, *, summary: bool = False) -> list[RoundInfo]:
        pages = list_all_rounds(
            lambda request: self._call(self._stub.ListRounds, request), from_round, limit, summary=summary
        )
        return [_round_info(r) for r in pages]

    def clients(self) -> list[ClientInfo]:
        pages = list_all_clients(lambda request: self._call(self._stub.ListClients, request))
        return [_client_info(c) for c in pages]

    def clients_page(self, after: str = "", limit: int = 0) -> ClientsPage:
        """At most `limit` clients (0: the server's page size) above `after`, and where the next page
        starts. ListClients' limit caps what the caller wants in all, so one more is asked for to
        learn whether there is a next page."""
        request = status_pb2.ListClientsRequest(after_client_id=after, limit=limit + 1 if limit else 0)
        reply = self._call(self._stub.ListClients, request)
        clients = [_client_info(c) for c in reply.clients]
        if limit and len(clients) > limit:
            return ClientsPage(clients=clients[:limit], next_after=clients[limit - 1].client_id)
        return ClientsPage(clients=clients, next_after=reply.next_after_client_id)

    def events(self, after_cursor: int, limit: int = 0) -> EventPage:
        reply = self._call(
            self._stub.ListEvents, status_pb2.ListEventsRequest(after_cursor=after_cursor, limit=limit)
        )
        return EventPage(
            events=[
                Event(
                    cursor=e.cursor,
                    time_unix_ms=e.time_unix_ms,
                    kind=e.kind,
                    round_id=e.round_id,
                    client_id=e.client_id,
                    message=e.message,
                )
                for e in reply.events
            ],
            next_cursor=max(reply.next_cursor, after_cursor),
        )

    def close(self) -> None:
        self._channel.close()


def _round_info(r: Any) -> RoundInfo:
    """A RoundInfo message as the dashboard serves it (counts from the rows when the server is older)."""
    return RoundInfo(
        round_id=r.round_id,
        state=_enum_name(status_pb2.RoundState, r.state, "ROUND_STATE_"),
        opened_at_unix_ms=r.opened_at_unix_ms,
        closed_at_unix_ms=r.closed_at_unix_ms,
        deadline_at_unix_ms=r.deadline_at_unix_ms,
        num_selected=r.num_selected or len(r.clients),
        num_submitted=r.num_submitted or sum(c.submitted for c in r.clients),
        duration_s=_f32(r.duration_s),
        mean_loss=_finite(r.mean_loss),
        bytes_up=r.bytes_up,
        bytes_down=r.bytes_down,
        num_seeds=r.num_seeds,
        fingerprint=r.fingerprint.hex(),
        eval_metrics={k: float(v) for k, v in sorted(r.eval_metrics.items()) if math.isfinite(v)},
        clients=[
            ClientRoundInfo(
                client_id=c.client_id,
                submitted=c.submitted,
                accepted=c.accepted,
                rejected_reason=c.rejected_reason,
                lr=_f32(c.lr),
                weight=c.weight,
                mean_loss=_finite(c.mean_loss),
                losses=[_f32(x) for x in c.losses],
                step_time_s=_f32(c.step_time_s),
                peak_memory_bytes=c.peak_memory_bytes,
                device=c.device,
                bytes_up=c.bytes_up,
                bytes_down=c.bytes_down,
            )
            for c in r.clients
        ],
    )


def _client_info(c: Any) -> ClientInfo:
    return ClientInfo(
        client_id=c.client_id,
        online=c.online,
        activity=c.activity,
        joined_at_unix_ms=c.joined_at_unix_ms,
        last_heartbeat_unix_ms=c.last_heartbeat_unix_ms,
        rounds_participated=c.rounds_participated,
        last_loss=_finite(c.last_loss),
        fingerprint=c.fingerprint.hex(),
        fingerprint_version=c.fingerprint_version,
        in_sync=c.in_sync,
        device=c.device,
        peak_memory_bytes=c.peak_memory_bytes,
        inference_peak_memory_bytes=c.inference_peak_memory_bytes,
        bytes_up=c.bytes_up,
        bytes_down=c.bytes_down,
        num_examples=c.num_examples,
        model_version=c.model_version,
    )
