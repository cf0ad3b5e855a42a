"""Who is online: what the server knows about each client that is not worth persisting.

Rebuilt as clients reconnect after a restart. A client is online while it holds a long-poll or stream,
or when it was seen within the heartbeat timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["ClientLive", "Presence"]


@dataclass
class ClientLive:
    last_seen: float = 0.0
    model_version: int = 0
    activity: str = "idle"
    polls: int = 0  # long-polls / streams in progress: a client waiting on us is online


class Presence:
    def __init__(self, clock: Callable[[], float], timeout_s: float) -> None:
        self.clock = clock
        self.timeout_s = timeout_s
        self.live: dict[str, ClientLive] = {}

    def seen(self, client_id: str) -> ClientLive:
        """The client's entry, stamped now."""
        live = self.live.setdefault(client_id, ClientLive())
        live.last_seen = self.clock()
        return live

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
