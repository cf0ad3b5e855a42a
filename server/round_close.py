"""Committing a round close: apply the delta to the replica, then store everything in one transaction.

The store must never lag the replica: any failure between the apply and the commit rolls the replica
back to the version it had, so a retry (or a restart) starts from a consistent pair.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fedmezo.fl.aggregation import Aggregate
from fedmezo.fl.records import DeltaRecord, NewEvent, RoundClose, RoundState
from fedmezo.fl.replica import Replica
from fedmezo.server.store import Store

__all__ = ["EventFactory", "commit_close"]

logger = logging.getLogger("fedmezo.server.coordinator")

EventFactory = Callable[..., NewEvent]  # (kind, message, round_id=0, client_id="") -> NewEvent


async def commit_close(
    replica: Replica,
    store: Store,
    r: int,
    agg: Aggregate,
    mean_loss: float,
    *,
    now: float,
    event: EventFactory,
) -> tuple[RoundClose, float]:
    """(the committed close, seconds the delta took to apply); on any failure the replica rolls back."""
    snapshot = replica.params.snapshot()
    version = replica.version
    try:
        applying = time.perf_counter()
        await asyncio.to_thread(replica.apply, agg.delta)
        apply_s = time.perf_counter() - applying
        fingerprint = await asyncio.to_thread(replica.fingerprint)
        accepted = [o for o in agg.outcomes if o.accepted]
        delta = DeltaRecord(r, agg.participants, agg.delta.coefficients, agg.delta.to_bytes(), fingerprint)
        state = RoundState.CLOSED if accepted else RoundState.ABORTED
        close = RoundClose(r, state, now, fingerprint, mean_loss, agg.delta.num_seeds, delta, agg.outcomes)
        kind = "round_closed" if accepted else "round_aborted"
        events = [event(kind, f"{len(accepted)} accepted, mean loss {mean_loss:.4f}", r)]
        events += [
            event("update_rejected", o.rejected_reason, r, o.client_id)
            for o in agg.outcomes
            if not o.accepted
        ]
        events += [
            event("update_bounded", f"norm bound: scalars scaled by {factor:.3g}", r, client)
            for client, factor in sorted(agg.bounded.scaled.items())
        ]
        events += [
            event("update_bounded", f"{hits} scalar(s) at the step ceiling", r, client)
            for client, hits in sorted(agg.bounded.ceiled.items())
        ]
        store.close_round(close, events)
    except BaseException:
        replica.params.restore(snapshot)
        replica.version = version
        logger.error("closing round %d failed; replica rolled back to version %d", r, replica.version)
        raise
    return close, apply_s
