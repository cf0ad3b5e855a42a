"""Group commit: client writes are acknowledged only once on disk, one fsync covering many of them.

The store commits each client write without waiting for its fsync; `durable()` returns once every
write made so far is synced. One sync in a worker thread covers all the writes since the previous one,
so a round's thousand updates cost a few fsyncs and the event loop serves requests while the disk
works. The SQLite checkpoint (folding the log into the file) runs the same way, at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fedmezo.fl.errors import StoreError
from fedmezo.server.store import Store

__all__ = ["CHECKPOINT_S", "SLOW_SYNC_S", "GroupCommit"]

logger = logging.getLogger("fedmezo.server.coordinator")

SLOW_SYNC_S = 0.1  # a group fsync slower than this is logged: client acknowledgements waited for it
CHECKPOINT_S = 1.0  # how often the store's log is folded into its file (in a worker thread)


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes = 0  # client writes committed without their fsync (Store.sync makes them durable)
        self._synced = 0  # ... of which this many are known to be on disk
        self._sync: asyncio.Task[None] | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpoint_due = 0.0

    def wrote(self) -> None:
        """Count a committed client write that `durable()` must cover."""
        self._writes += 1

    async def durable(self) -> None:
        """Return once every client write made so far is on disk."""
        target = self._writes
        while self._synced < target:
            if self._sync is None:
                self._sync = asyncio.get_running_loop().create_task(self._sync_store())
                self._sync.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by waiters
            await asyncio.shield(self._sync)

    async def _sync_store(self) -> None:
        covered, batch = self._writes, self._writes - self._synced
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.sync)
        finally:
            self._sync = None
        self._synced = max(self._synced, covered)
        took_s = time.perf_counter() - started
        if took_s > SLOW_SYNC_S:  # every acknowledgement waiting on it waited this long
            logger.warning("slow disk: syncing %d client writes took %.3f s", batch, took_s)

    def maybe_checkpoint(self) -> None:
        """The SQLite checkpoint in a worker thread, one at a time, at most every CHECKPOINT_S."""
        now = time.monotonic()
        if self._checkpoint is not None or now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_S
        self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_store())

    async def _checkpoint_store(self) -> None:
        try:
            await asyncio.to_thread(self.store.checkpoint)
        except StoreError as exc:  # a broken disk fails the next commit, which stops the server
            logger.warning("store checkpoint failed: %s", exc)
        finally:
            self._checkpoint = None
