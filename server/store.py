"""The server's state behind one interface: `Store`, with `MemoryStore` here and `SqliteStore` in
sqlite_store.py. Both pass the same test suite (tests/server/test_store.py).

Every mutating method is atomic: it validates first and either applies everything it was given
(records and events together) or raises StoreError and changes nothing.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import (
    CheckpointRecord,
    ClientRecord,
    ClientUpdateStats,
    DeltaRecord,
    EventRecord,
    FingerprintRecord,
    NewEvent,
    RoundClose,
    RoundRecord,
    RoundState,
    TaskRecord,
    TrafficRecord,
    UpdateOutcome,
    UpdateRecord,
)
from fedmezo.server.presence import PresenceRecord

__all__ = ["STATUS_CONFIG_KEY", "STATUS_STARTED_KEY", "TRAFFIC_FLUSHES_KEY", "MemoryStore", "Store"]

# meta keys the server writes at start for a read replica of its status service (status_replica.py)
STATUS_CONFIG_KEY = "status_run_config"  # the RunConfig message GetRunConfig sends, serialized, hex
STATUS_STARTED_KEY = "status_started_at"  # when this server process started (GetStatus.started_at)
TRAFFIC_FLUSHES_KEY = "traffic_flushes"  # SqliteStore: counts add_traffic calls (a replica's cue)


class Store(ABC):
    """Durable run state: clients, rounds, tasks, updates, deltas, metrics, fingerprints, events."""

    # --- run metadata (config, initial fingerprint) ---
    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...
    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # --- clients ---
    @abstractmethod
    def upsert_client(self, client: ClientRecord, events: Sequence[NewEvent] = ()) -> None: ...
    @abstractmethod
    def get_client(self, client_id: str) -> ClientRecord | None: ...
    @abstractmethod
    def list_clients(self, after: str = "", limit: int = 0) -> list[ClientRecord]:
        """Clients in id order, those with an id above `after` ("" = from the first), at most `limit`
        (0 = all): a page of ListClients, read without touching the other clients."""

    # --- rounds and tasks ---
    @abstractmethod
    def open_round(
        self, round_: RoundRecord, tasks: Sequence[TaskRecord], events: Sequence[NewEvent] = ()
    ) -> None: ...
    @abstractmethod
    def extend_round(
        self, round_id: int, deadline_at: float, extensions: int, events: Sequence[NewEvent] = ()
    ) -> None: ...
    @abstractmethod
    def close_round(self, close: RoundClose, events: Sequence[NewEvent] = ()) -> None: ...
    @abstractmethod
    def get_round(self, round_id: int) -> RoundRecord | None: ...
    @abstractmethod
    def list_rounds(self, from_round: int = 1, limit: int = 0) -> list[RoundRecord]: ...
    @abstractmethod
    def get_task(self, round_id: int, client_id: str) -> TaskRecord | None: ...
    @abstractmethod
    def list_tasks(self, round_id: int) -> list[TaskRecord]: ...

    # --- updates ---
    @abstractmethod
    def add_update(
        self,
        update: UpdateRecord,
        events: Sequence[NewEvent] = (),
        fingerprint: FingerprintRecord | None = None,
    ) -> None:
        """Store an update; with `fingerprint` (the base version's, which it reported) in the same
        transaction, one commit per SubmitUpdate instead of two."""

    @abstractmethod
    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None: ...
    @abstractmethod
    def list_updates(self, round_id: int) -> list[UpdateRecord]: ...
    @abstractmethod
    def list_outcomes(self, round_id: int) -> list[UpdateOutcome]: ...

    # --- deltas and metrics ---
    @abstractmethod
    def get_delta(self, round_id: int) -> DeltaRecord | None: ...
    @abstractmethod
    def list_deltas(self, from_round: int = 1) -> list[DeltaRecord]: ...
    @abstractmethod
    def get_metrics(self, round_id: int) -> dict[str, float]: ...
    @abstractmethod
    def add_metrics(self, round_id: int, metrics: dict[str, float], events: Sequence[NewEvent] = ()) -> None:
        """Set metrics of model version `round_id` (0 = the initial model), replacing same-named ones."""

    # --- fingerprints ---
    @abstractmethod
    def record_fingerprint(self, record: FingerprintRecord, events: Sequence[NewEvent] = ()) -> None: ...
    @abstractmethod
    def latest_fingerprints(self, client_ids: Collection[str] | None = None) -> dict[str, FingerprintRecord]:
        """Each client's last reported fingerprint (only those of `client_ids` when given)."""

    # --- traffic ---
    @abstractmethod
    def add_traffic(self, records: Iterable[TrafficRecord]) -> None: ...
    @abstractmethod
    def list_traffic(self) -> list[TrafficRecord]: ...

    # --- presence: published for read replicas of the status service, never read by the server ---
    @abstractmethod
    def put_presence(self, records: Sequence[PresenceRecord], published_at: float) -> None:
        """Replace these clients' rows and stamp the publication (no fsync needed: a crash loses only
        who was online)."""

    @abstractmethod
    def list_presence(self) -> tuple[list[PresenceRecord], float]:
        """Every published row, and when the last publication ran (0.0: never)."""

    # --- checkpoints ---
    @abstractmethod
    def add_checkpoint(self, record: CheckpointRecord) -> None: ...
    @abstractmethod
    def latest_checkpoint(self) -> CheckpointRecord | None: ...

    # --- events ---
    @abstractmethod
    def add_events(self, events: Sequence[NewEvent]) -> list[int]: ...
    @abstractmethod
    def list_events(self, after_cursor: int = 0, limit: int = 0) -> list[EventRecord]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a no-op for stores that hold none)."""

    def checkpoint(self) -> None:  # noqa: B027 - optional hook
        """Housekeeping a store may want off the event loop (SQLite: fold its log into the file)."""

    def sync(self) -> None:  # noqa: B027 - optional hook
        """Make every write so far durable. `add_update`, `upsert_client` and `record_fingerprint` may
        return before their write reached the disk (a store may batch their syncs: group commit); call
        this before acknowledging one. Thread-safe. A no-op for stores with nothing to sync."""

    # --- derived helpers shared by every store ---
    def rounds_completed(self) -> int:
        """The model version: rounds closed or aborted (they are closed in order)."""
        done = [r.round_id for r in self.list_rounds() if r.state != RoundState.OPEN]
        return max(done, default=0)

    def open_round_record(self) -> RoundRecord | None:
        opened = [r for r in self.list_rounds() if r.state == RoundState.OPEN]
        return opened[-1] if opened else None

    def count_updates(self, round_id: int) -> int:
        """Updates stored for a round (the close decision after every update needs only the count)."""
        return len(self.list_updates(round_id))

    def has_update(self, round_id: int, client_id: str) -> bool:
        """Whether the client answered the round (asked on every GetTask wake-up and SubmitUpdate)."""
        return self.get_update(round_id, client_id) is not None

    def count_clients(self) -> int:
        return len(self.list_clients())

    def client_update_stats(self, client_ids: Collection[str] | None = None) -> dict[str, ClientUpdateStats]:
        """Per client over every round, only those of `client_ids` when given (a ListClients page asks on
        every call; SqliteStore answers in SQL)."""
        wanted = None if client_ids is None else set(client_ids)
        stats: dict[str, ClientUpdateStats] = {}
        for rec in self.list_rounds():
            outcomes = {o.client_id: o for o in self.list_outcomes(rec.round_id)}
            for u in self.list_updates(rec.round_id):
                if wanted is not None and u.client_id not in wanted:
                    continue
                old = stats.get(u.client_id, ClientUpdateStats(0, math.nan, 0))
                counted = outcomes.get(u.client_id)
                stats[u.client_id] = ClientUpdateStats(
                    old.accepted_rounds + int(bool(counted and counted.accepted)),
                    u.mean_loss,
                    max(old.peak_memory_bytes, u.peak_memory_bytes),
                )
        return stats

    def last_event_cursor(self) -> int:
        """The newest event's cursor (0 when none): GetStatus reports it on every call."""
        events = self.list_events()
        return events[-1].cursor if events else 0


def _check_close(round_: RoundRecord | None, close: RoundClose, tasks: set[str]) -> None:
    if round_ is None:
        raise StoreError(f"round {close.round_id} does not exist")
    if round_.state != RoundState.OPEN:
        raise StoreError(f"round {close.round_id} is already {round_.state.value}")
    if close.state == RoundState.OPEN:
        raise StoreError("a round cannot be closed into state open")
    unknown = {o.client_id for o in close.outcomes} - tasks
    if unknown:
        raise StoreError(f"outcomes for clients without a task: {sorted(unknown)}")


class MemoryStore(Store):
    """In-process store for tests and throwaway runs; same semantics as SqliteStore."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._meta: dict[str, str] = {}
        self._clients: dict[str, ClientRecord] = {}
        self._rounds: dict[int, RoundRecord] = {}
        self._tasks: dict[tuple[int, str], TaskRecord] = {}
        self._updates: dict[tuple[int, str], UpdateRecord] = {}
        self._outcomes: dict[tuple[int, str], UpdateOutcome] = {}
        self._deltas: dict[int, DeltaRecord] = {}
        self._metrics: dict[int, dict[str, float]] = {}
        self._fingerprints: dict[str, FingerprintRecord] = {}
        self._traffic: dict[tuple[int, str], TrafficRecord] = {}
        self._presence: dict[str, PresenceRecord] = {}
        self._presence_at = 0.0
        self._checkpoints: dict[int, CheckpointRecord] = {}
        self._events: list[EventRecord] = []

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._meta[key] = value

    def upsert_client(self, client: ClientRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._lock:
            self._clients[client.client_id] = client
            self.add_events(events)

    def get_client(self, client_id: str) -> ClientRecord | None:
        return self._clients.get(client_id)

    def list_clients(self, after: str = "", limit: int = 0) -> list[ClientRecord]:
        clients = sorted(
            (c for c in self._clients.values() if c.client_id > after), key=lambda c: c.client_id
        )
        return clients[:limit] if limit else clients

    def open_round(
        self, round_: RoundRecord, tasks: Sequence[TaskRecord], events: Sequence[NewEvent] = ()
    ) -> None:
        with self._lock:
            if round_.round_id in self._rounds:
                raise StoreError(f"round {round_.round_id} already exists")
            if any(t.round_id != round_.round_id for t in tasks):
                raise StoreError("every task must belong to the round being opened")
            self._rounds[round_.round_id] = round_
            for task in tasks:
                self._tasks[(task.round_id, task.client_id)] = task
            self.add_events(events)

    def extend_round(
        self, round_id: int, deadline_at: float, extensions: int, events: Sequence[NewEvent] = ()
    ) -> None:
        with self._lock:
            round_ = self._rounds.get(round_id)
            if round_ is None or round_.state != RoundState.OPEN:
                raise StoreError(f"round {round_id} is not open")
            self._rounds[round_id] = _replace(round_, deadline_at=deadline_at, extensions=extensions)
            self.add_events(events)

    def close_round(self, close: RoundClose, events: Sequence[NewEvent] = ()) -> None:
        with self._lock:
            round_ = self._rounds.get(close.round_id)
            _check_close(round_, close, {c for (r, c) in self._tasks if r == close.round_id})
            assert round_ is not None
            self._rounds[close.round_id] = _replace(
                round_,
                state=close.state,
                closed_at=close.closed_at,
                fingerprint=close.fingerprint,
                mean_loss=close.mean_loss,
                num_seeds=close.num_seeds,
            )
            self._deltas[close.round_id] = close.delta
            for outcome in close.outcomes:
                self._outcomes[(close.round_id, outcome.client_id)] = outcome
            self._metrics[close.round_id] = dict(close.metrics)
            self.add_events(events)

    def get_round(self, round_id: int) -> RoundRecord | None:
        return self._rounds.get(round_id)

    def list_rounds(self, from_round: int = 1, limit: int = 0) -> list[RoundRecord]:
        rounds = [self._rounds[r] for r in sorted(self._rounds) if r >= from_round]
        return rounds[:limit] if limit else rounds

    def get_task(self, round_id: int, client_id: str) -> TaskRecord | None:
        return self._tasks.get((round_id, client_id))

    def list_tasks(self, round_id: int) -> list[TaskRecord]:
        return sorted((t for (r, _), t in self._tasks.items() if r == round_id), key=lambda t: t.client_id)

    def add_update(
        self,
        update: UpdateRecord,
        events: Sequence[NewEvent] = (),
        fingerprint: FingerprintRecord | None = None,
    ) -> None:
        with self._lock:
            key = (update.round_id, update.client_id)
            if key in self._updates:
                raise StoreError(f"update {key} already stored")
            if key not in self._tasks:
                raise StoreError(f"no task {key}")
            self._updates[key] = update
            if fingerprint is not None:
                self._fingerprints[fingerprint.client_id] = fingerprint
            self.add_events(events)

    def get_update(self, round_id: int, client_id: str) -> UpdateRecord | None:
        return self._updates.get((round_id, client_id))

    def list_updates(self, round_id: int) -> list[UpdateRecord]:
        return sorted((u for (r, _), u in self._updates.items() if r == round_id), key=lambda u: u.client_id)

    def list_outcomes(self, round_id: int) -> list[UpdateOutcome]:
        return sorted((o for (r, _), o in self._outcomes.items() if r == round_id), key=lambda o: o.client_id)

    def get_delta(self, round_id: int) -> DeltaRecord | None:
        return self._deltas.get(round_id)

    def list_deltas(self, from_round: int = 1) -> list[DeltaRecord]:
        return [self._deltas[r] for r in sorted(self._deltas) if r >= from_round]

    def get_metrics(self, round_id: int) -> dict[str, float]:
        return dict(self._metrics.get(round_id, {}))

    def add_metrics(self, round_id: int, metrics: dict[str, float], events: Sequence[NewEvent] = ()) -> None:
        with self._lock:
            self._metrics.setdefault(round_id, {}).update(metrics)
            self.add_events(events)

    def record_fingerprint(self, record: FingerprintRecord, events: Sequence[NewEvent] = ()) -> None:
        with self._lock:
            self._fingerprints[record.client_id] = record
            self.add_events(events)

    def latest_fingerprints(self, client_ids: Collection[str] | None = None) -> dict[str, FingerprintRecord]:
        if client_ids is None:
            return dict(self._fingerprints)
        return {c: self._fingerprints[c] for c in client_ids if c in self._fingerprints}

    def add_traffic(self, records: Iterable[TrafficRecord]) -> None:
        with self._lock:
            for rec in records:
                key = (rec.round_id, rec.client_id)
                old = self._traffic.get(key)
                if old is not None:
                    rec = TrafficRecord(
                        rec.round_id,
                        rec.client_id,
                        old.bytes_up + rec.bytes_up,
                        old.bytes_down + rec.bytes_down,
                    )
                self._traffic[key] = rec

    def list_traffic(self) -> list[TrafficRecord]:
        return [self._traffic[k] for k in sorted(self._traffic)]

    def put_presence(self, records: Sequence[PresenceRecord], published_at: float) -> None:
        with self._lock:
            self._presence.update((r.client_id, r) for r in records)
            self._presence_at = published_at

    def list_presence(self) -> tuple[list[PresenceRecord], float]:
        with self._lock:
            return [self._presence[c] for c in sorted(self._presence)], self._presence_at

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        with self._lock:
            self._checkpoints[record.round_id] = record

    def latest_checkpoint(self) -> CheckpointRecord | None:
        return self._checkpoints[max(self._checkpoints)] if self._checkpoints else None

    def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        with self._lock:
            cursors = []
            for ev in events:
                cursor = len(self._events) + 1
                self._events.append(
                    EventRecord(cursor, ev.time, ev.kind, ev.message, ev.round_id, ev.client_id)
                )
                cursors.append(cursor)
            return cursors

    def list_events(self, after_cursor: int = 0, limit: int = 0) -> list[EventRecord]:
        events = [e for e in self._events if e.cursor > after_cursor]
        return events[:limit] if limit else events


def _replace(round_: RoundRecord, **changes: object) -> RoundRecord:
    import dataclasses

    return dataclasses.replace(round_, **changes)  # type: ignore[arg-type]
