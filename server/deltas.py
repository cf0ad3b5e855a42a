"""The closed rounds' deltas as clients read them: from the store, the newest few kept decoded.

After a close every following client asks for the same delta at once; decoding it once per round
instead of once per client keeps a 10,000-client close off the event loop.
"""

from __future__ import annotations

from fedmezo.fl.errors import StoreError
from fedmezo.fl.records import DeltaRecord
from fedmezo.server.store import Store

__all__ = ["DELTAS_KEPT", "DeltaCache"]

DELTAS_KEPT = 2  # decoded round deltas kept in memory for the clients following the stream


class DeltaCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._kept: dict[int, DeltaRecord] = {}

    def get(self, round_id: int, rounds_completed: int) -> DeltaRecord:
        """Closed round `round_id`'s delta (a missing one means the store is damaged)."""
        record = self._kept.get(round_id)
        if record is None:
            record = self.store.get_delta(round_id)
            if record is None:
                raise StoreError(f"delta of closed round {round_id} is missing")
            if round_id + DELTAS_KEPT > rounds_completed:
                self._kept[round_id] = record
                for old in [r for r in self._kept if r + DELTAS_KEPT <= rounds_completed]:
                    del self._kept[old]
        return record
