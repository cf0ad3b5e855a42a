"""Who is online: what the server knows about each client that is not worth persisting.

Rebuilt as clients reconnect after a restart. A client is online while it holds a long-poll or stream,
or when it was seen within the heartbeat timeout. The server publishes what changed to the store every
few seconds (`take_changes`), for a read replica of the status service (status_replica.py), which
`load`s it; the server itself never reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ClientLive", "Presence", "PresenceRecord"]


@dataclass
class ClientLive:
    last_seen: float = 0.0
    model_version: int = 0
    activity: str = "idle"
    polls: int = 0  # long-polls / streams in progress: a client waiting on us is online


@dataclass(frozen=True)
class PresenceRecord:
    """One client's presence as published to the store."""

    client_id: str
    last_seen: float
    model_version: int
    activity: str
    polling: bool


class Presence:
    def __init__(self, clock: Callable[[], float], timeout_s: float) -> None:
        self.clock = clock
        self.timeout_s = timeout_s
        self.live: dict[str, ClientLive] = {}
        self._changed: set[str] = set()  # seen since the last take_changes

    def seen(self, client_id: str) -> ClientLive:
        """The client's entry, stamped now (its activity and version are set by the caller, before the
        next publication can run: both happen on the event loop)."""
        live = self.live.setdefault(client_id, ClientLive())
        live.last_seen = self.clock()
        self._changed.add(client_id)
        return live

    def take_changes(self) -> list[PresenceRecord]:
        """The clients seen since the last call, as records (so a publication costs what changed)."""
        changed, self._changed = self._changed, set()
        return [
            PresenceRecord(c, live.last_seen, live.model_version, live.activity, live.polls > 0)
            for c in sorted(changed)
            if (live := self.live.get(c)) is not None
        ]

    def load(self, records: list[PresenceRecord], *, polls_hold: bool) -> None:
        """Become what a server published (a read replica). `polls_hold` False: the publication is too
        old to say who still waits on a long-poll (the server may be gone), so only heartbeats count."""
        self.live = {
            r.client_id: ClientLive(r.last_seen, r.model_version, r.activity, int(r.polling and polls_hold))
            for r in records
        }

    def is_online(self, client_id: str) -> bool:
        live = self.live.get(client_id)
        if live is None:
            return False
        return live.polls > 0 or self.clock() - live.last_seen <= self.timeout_s

    def online(self) -> list[str]:
        return sorted(c for c in self.live if self.is_online(c))

    @contextmanager
    def polling(self, client_id: str) -> Iterator[ClientLive]:
        """While a client waits on a long-poll or stream it counts as online, whatever its heartbeats."""
        live = self.seen(client_id)
        live.polls += 1
        try:
            yield live
        finally:
            live.polls -= 1
            self.seen(client_id)
