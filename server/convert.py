"""Protobuf conversions of the status service (the server's views out). No logic beyond shape.

The federation service's conversions, which the client shares, are in `fedmezo.fl.wire`.
"""

from __future__ import annotations

from fedmezo.fl import vocabulary, wire
from fedmezo.fl.records import EventRecord, RoundState
from fedmezo.server.status_view import ClientView, RoundView, StatusView
from fedmezo.v1 import status_pb2

__all__ = [
    "client_view_to_pb",
    "cursor_from_pb",
    "event_to_pb",
    "round_view_to_pb",
    "status_view_to_pb",
]

_ROUND_STATES = {
    RoundState.OPEN: status_pb2.ROUND_STATE_OPEN,
    RoundState.CLOSED: status_pb2.ROUND_STATE_CLOSED,
    RoundState.ABORTED: status_pb2.ROUND_STATE_ABORTED,
}


def cursor_from_pb(cursor: int) -> int:
    """An event cursor past the last storable one means "after everything"."""
    return min(cursor, vocabulary.MAX_EVENT_CURSOR)


# --- status ---
def status_view_to_pb(view: StatusView) -> status_pb2.GetStatusResponse:
    return status_pb2.GetStatusResponse(
        run_state=wire.run_state_to_pb(view.run_state),
        rounds_completed=view.rounds_completed,
        current_round=view.current_round,
        total_rounds=view.total_rounds,
        fingerprint=view.fingerprint,
        clients_online=view.clients_online,
        clients_total=view.clients_total,
        bytes_up=view.bytes_up,
        bytes_down=view.bytes_down,
        started_at_unix_ms=wire.ms(view.started_at),
        last_event_cursor=view.last_event_cursor,
    )


def round_view_to_pb(view: RoundView) -> status_pb2.RoundInfo:
    return status_pb2.RoundInfo(
        round_id=view.round_id,
        state=_ROUND_STATES[view.state],
        opened_at_unix_ms=wire.ms(view.opened_at),
        closed_at_unix_ms=wire.ms(view.closed_at),
        duration_s=view.duration_s,
        num_selected=view.num_selected,
        num_submitted=view.num_submitted,
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
                forward_passes=c.forward_passes,
            )
            for c in view.clients
        ],
        mean_loss=view.mean_loss,
        bytes_up=view.bytes_up,
        bytes_down=view.bytes_down,
        num_seeds=view.num_seeds,
        fingerprint=view.fingerprint,
        eval_metrics=view.eval_metrics,
        deadline_at_unix_ms=wire.ms(view.deadline_at),
    )


def client_view_to_pb(view: ClientView) -> status_pb2.ClientInfo:
    return status_pb2.ClientInfo(
        client_id=view.client_id,
        online=view.online,
        joined_at_unix_ms=wire.ms(view.joined_at),
        last_heartbeat_unix_ms=wire.ms(view.last_heartbeat),
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
        time_unix_ms=wire.ms(event.time),
        kind=event.kind,
        round_id=event.round_id,
        client_id=event.client_id,
        message=event.message,
    )
