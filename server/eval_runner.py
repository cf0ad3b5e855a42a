"""Server-side evaluation of the global model, off the round's critical path.

It runs in a worker thread after the round's transaction committed, holding the replica lock so the
next close waits for it before changing θ. Its metrics go in a transaction of their own: a crash loses
at most that evaluation, which the server redoes at restart for the current model version. A failure
is recorded as an event and never takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fedmezo.fl.errors import StoreError
from fedmezo.fl.evaluation import EVAL_LOSS, Evaluator
from fedmezo.fl.records import NewEvent
from fedmezo.fl.replica import Replica
from fedmezo.server.store import Store

__all__ = ["EvalRunner"]

logger = logging.getLogger("fedmezo.server.coordinator")


class EvalRunner:
    def __init__(
        self,
        evaluator: Evaluator | None,
        store: Store,
        replica: Replica,
        replica_lock: asyncio.Lock,
        *,
        total_rounds: int,
        event: Callable[[str, str, int], NewEvent],
        notify: Callable[[], None],
        background: set[asyncio.Task[None]],
    ) -> None:
        self.evaluator = evaluator
        self.store = store
        self.replica = replica
        self.replica_lock = replica_lock
        self.total_rounds = total_rounds
        self._event = event
        self._notify = notify
        self._background = background

    def maybe_evaluate(self, version: int) -> None:
        """Schedule the evaluation of model `version` when one is due and not stored yet."""
        if self.evaluator is None or not self.evaluator.due(version, self.total_rounds):
            return
        if EVAL_LOSS in self.store.get_metrics(version):
            return
        task = asyncio.get_running_loop().create_task(self._evaluate(self.evaluator, version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _evaluate(self, evaluator: Evaluator, version: int) -> None:
        """Evaluate the replica at `version`; store the metrics and an `eval` event."""
        try:
            async with self.replica_lock:
                if self.replica.version != version:  # the model moved on before we got to it
                    logger.warning(
                        "evaluation of round %d skipped: the model is at %d", version, self.replica.version
                    )
                    return
                outcome = await asyncio.to_thread(evaluator.evaluate, self.replica)
            self.store.add_metrics(
                version, outcome.metrics, [self._event("eval", outcome.summary(), version)]
            )
        except Exception as exc:  # an evaluation failure must never take the server down
            logger.exception("evaluation of round %d failed", version)
            with contextlib.suppress(StoreError):
                self.store.add_events([self._event("eval_failed", f"{type(exc).__name__}: {exc}", version)])
            return
        logger.info("round %d %s", version, outcome.summary())
        self._notify()
