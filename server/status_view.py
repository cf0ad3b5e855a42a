"""What the status service shows, assembled from the store, the live client table and the traffic
meter. Plain dataclasses: convert.py turns them into protobuf, the CLI into JSON."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import ClientUpdateStats, RoundRecord, RoundState, RunState
from fedmezo.server.presence import Presence
from fedmezo.server.store import Store
from fedmezo.server.traffic import TrafficMeter

__all__ = [
    "ClientRoundView",
    "ClientView",
    "RoundView",
    "RunReader",
    "StatusSource",
    "StatusView",
    "client_views",
    "initial_round_view",
    "round_views",
    "status_view",
]


class RunReader(Protocol):
    """What the status views read of a running server (the coordinator is one); nothing they can change."""

    config: RunConfig
    store: Store
    traffic: TrafficMeter
    presence: Presence
    started_at: float

    @property
    def rounds_completed(self) -> int: ...

    def clock(self) -> float: ...

    def fingerprint_at(self, version: int) -> bytes | None: ...

    def run_state(self) -> RunState: ...


class StatusSource(RunReader, Protocol):
    """What the status service serves from: the running server, or a read replica of its store."""

    def changed(self) -> asyncio.Event:
        """Set at the next change worth waking an event stream for."""
        ...

    def fail(self, exc: StoreError) -> None:
        """The store failed while serving a status call."""
        ...


@dataclass(frozen=True)
class StatusView:
    run_state: RunState
    rounds_completed: int
    current_round: int
    total_rounds: int
    fingerprint: bytes
    clients_online: int
    clients_total: int
    bytes_up: int
    bytes_down: int
    started_at: float
    last_event_cursor: int


@dataclass(frozen=True)
class ClientRoundView:
    client_id: str
    submitted: bool
    accepted: bool
    rejected_reason: str
    lr: float
    weight: float
    mean_loss: float
    losses: tuple[float, ...]
    step_time_s: float
    peak_memory_bytes: int
    device: str
    bytes_up: int
    bytes_down: int
    forward_passes: int = 0


@dataclass(frozen=True)
class RoundView:
    round_id: int
    state: RoundState
    opened_at: float
    closed_at: float
    duration_s: float
    clients: tuple[ClientRoundView, ...]
    mean_loss: float
    bytes_up: int
    bytes_down: int
    num_seeds: int
    fingerprint: bytes
    eval_metrics: dict[str, float] = field(default_factory=dict)
    deadline_at: float = 0.0  # after extensions; 0 for round 0 (the initial model)
    num_selected: int = 0  # len(clients), also when a summary left the rows out
    num_submitted: int = 0  # of them, those that submitted an update


@dataclass(frozen=True)
class ClientView:
    client_id: str
    online: bool
    joined_at: float
    last_heartbeat: float
    rounds_participated: int
    last_loss: float
    fingerprint: bytes
    fingerprint_version: int
    in_sync: bool
    device: str
    peak_memory_bytes: int
    bytes_up: int
    bytes_down: int
    num_examples: int
    model_version: int
    activity: str
    inference_peak_memory_bytes: int = 0


def status_view(coord: RunReader) -> StatusView:
    open_round = coord.store.open_round_record()
    bytes_up, bytes_down = coord.traffic.run_totals()
    return StatusView(
        run_state=coord.run_state(),
        rounds_completed=coord.rounds_completed,
        current_round=open_round.round_id if open_round else 0,
        total_rounds=coord.config.rounds,
        fingerprint=coord.fingerprint_at(coord.rounds_completed) or b"",
        clients_online=len(coord.presence.online()),
        clients_total=coord.store.count_clients(),
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        started_at=coord.started_at,
        last_event_cursor=coord.store.last_event_cursor(),
    )


def initial_round_view(coord: RunReader) -> RoundView | None:
    """Round 0, the initial model θ_0, once it has been evaluated: no clients, only metrics."""
    metrics = coord.store.get_metrics(0)
    if not metrics:
        return None
    return RoundView(
        round_id=0,
        state=RoundState.CLOSED,
        opened_at=0.0,
        closed_at=0.0,
        duration_s=0.0,
        clients=(),
        mean_loss=math.nan,
        bytes_up=0,
        bytes_down=0,
        num_seeds=0,
        fingerprint=coord.fingerprint_at(0) or b"",
        eval_metrics=metrics,
    )


def round_views(
    coord: RunReader, from_round: int = 1, limit: int = 0, *, with_clients: bool = True
) -> Iterator[RoundView]:
    """Rounds from `from_round` on (at most `limit`, 0 = all); from_round 0 adds round 0 when evaluated.

    Lazily, one round at a time: a ListRounds page that fills its byte budget after two rounds of a
    10,000-client run stops there instead of decoding every update of the other rounds it may hold.
    Without clients (a summary) a round costs its record, a count and its traffic totals."""
    initial = initial_round_view(coord) if from_round == 0 else None
    if initial is not None:
        yield initial
        if limit == 1:
            return
        limit = limit - 1 if limit else 0
    for rec in coord.store.list_rounds(max(1, from_round), limit):
        if not with_clients:
            up, down = coord.traffic.round_totals(rec.round_id)
            counts = len(rec.selected), coord.store.count_updates(rec.round_id)
            yield _round_view(coord, rec, (), up, down, counts)
            continue
        updates = {u.client_id: u for u in coord.store.list_updates(rec.round_id)}
        outcomes = {o.client_id: o for o in coord.store.list_outcomes(rec.round_id)}
        tasks = {t.client_id: t for t in coord.store.list_tasks(rec.round_id)}
        traffic = coord.traffic.by_round(rec.round_id)
        clients = []
        # The selected clients only: anyone's traffic may be booked to a round (a delta stream, a
        # fingerprint report), and it counts in the round's totals, but it makes no one a member.
        for client_id in sorted(tasks):
            u, o, t = updates.get(client_id), outcomes.get(client_id), tasks.get(client_id)
            up, down = traffic.get(client_id, (0, 0))
            clients.append(
                ClientRoundView(
                    client_id=client_id,
                    submitted=u is not None,
                    accepted=bool(o and o.accepted),
                    rejected_reason=o.rejected_reason if o else "",
                    lr=t.lr if t else 0.0,
                    weight=o.weight if o else 0.0,
                    mean_loss=u.mean_loss if u else math.nan,
                    losses=u.losses if u else (),
                    step_time_s=u.step_time_s if u else 0.0,
                    peak_memory_bytes=u.peak_memory_bytes if u else 0,
                    device=u.device if u else "",
                    bytes_up=up,
                    bytes_down=down,
                    forward_passes=u.forward_passes if u else 0,
                )
            )
        up, down = coord.traffic.round_totals(rec.round_id)
        yield _round_view(coord, rec, tuple(clients), up, down, (len(clients), len(updates)))


def _round_view(
    coord: RunReader,
    rec: RoundRecord,
    clients: tuple[ClientRoundView, ...],
    up: int,
    down: int,
    counts: tuple[int, int],
) -> RoundView:
    end = rec.closed_at or coord.clock()
    return RoundView(
        round_id=rec.round_id,
        state=rec.state,
        opened_at=rec.opened_at,
        closed_at=rec.closed_at,
        duration_s=max(0.0, end - rec.opened_at),
        clients=clients,
        mean_loss=rec.mean_loss,
        bytes_up=up,
        bytes_down=down,
        num_seeds=rec.num_seeds,
        fingerprint=rec.fingerprint,
        eval_metrics=coord.store.get_metrics(rec.round_id),
        deadline_at=rec.deadline_at,
        num_selected=counts[0],
        num_submitted=counts[1],
    )


def client_views(coord: RunReader, after: str = "", limit: int = 0) -> list[ClientView]:
    """The clients with an id above `after` in id order, at most `limit` (0 = all); every figure is read
    for those clients only, so a page of a 10,000-client run costs a page."""
    records = coord.store.list_clients(after, limit)
    ids = None if not after and not limit else [c.client_id for c in records]
    fingerprints = coord.store.latest_fingerprints(ids)
    traffic = coord.traffic.by_client(ids)
    stats = coord.store.client_update_stats(ids)
    none = ClientUpdateStats(0, math.nan, 0)
    finished = coord.run_state() == RunState.FINISHED
    views = []
    for client in records:
        live = coord.presence.live.get(client.client_id)
        online = coord.presence.is_online(client.client_id)
        # What a client last said it was doing holds while it is online in a running run: an offline
        # client is offline whatever its last heartbeat said, and nobody trains once the run finished.
        activity = live.activity if live and online and not finished else "idle" if online else "offline"
        fp = fingerprints.get(client.client_id)
        s = stats.get(client.client_id, none)
        up, down = traffic.get(client.client_id, (0, 0))
        views.append(
            ClientView(
                client_id=client.client_id,
                online=online,
                joined_at=client.joined_at,
                last_heartbeat=live.last_seen if live else 0.0,
                rounds_participated=s.accepted_rounds,
                last_loss=s.last_mean_loss,
                fingerprint=fp.fingerprint if fp else b"",
                fingerprint_version=fp.version if fp else 0,
                in_sync=bool(fp and fp.in_sync and fp.fingerprint == coord.fingerprint_at(fp.version)),
                device=client.device,
                peak_memory_bytes=s.peak_memory_bytes,
                bytes_up=up,
                bytes_down=down,
                num_examples=client.num_examples,
                model_version=live.model_version if live else 0,
                activity=activity,
                inference_peak_memory_bytes=client.inference_peak_memory_bytes,
            )
        )
    return views
