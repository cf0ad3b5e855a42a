"""The one retry policy: capped exponential backoff with full jitter (style §5).

Only `Unavailable` (the server is down, restarting or slow) is retried; every other failure is an
answer and is raised at once. Sleep, clock and randomness are injected so tests never wait.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fedmezo.client.errors import Stopped, Unavailable

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "RetryPolicy"]

logger = logging.getLogger("fedmezo.client")

BACKOFF_BASE_S = 0.5  # first retry waits up to this: a restarting server is usually back within seconds
BACKOFF_CAP_S = 30.0  # never wait longer than this between attempts, so reconnects stay prompt

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """`call(fn)` retries `fn` on `Unavailable` until it succeeds, `max_attempts` or `max_elapsed_s`."""

    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    max_attempts: int | None = None  # None: forever (the daemon reconnects forever)
    max_elapsed_s: float | None = None
    # `sleep` returns True when woken early by a stop request (threading.Event.wait has that shape).
    sleep: Callable[[float], bool | None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    uniform: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base·2^attempt)] (attempt counts from 0)."""
        return self.uniform() * min(self.cap_s, self.base_s * 2.0 ** min(attempt, 62))

    def wait(self, attempt: int) -> None:
        """Sleep before retry number `attempt + 1`; raise `Stopped` when the sleep was interrupted."""
        if self.sleep(self.delay(attempt)):
            raise Stopped("stop requested during backoff")

    def call(self, fn: Callable[[], T], what: str = "call") -> T:
        start = self.clock()
        attempt = 0
        while True:
            try:
                return fn()
            except Unavailable as exc:
                attempt += 1
                out_of_attempts = self.max_attempts is not None and attempt >= self.max_attempts
                out_of_time = self.max_elapsed_s is not None and self.clock() - start >= self.max_elapsed_s
                if out_of_attempts or out_of_time:
                    raise
                logger.info("%s failed (%s), retrying (attempt %d)", what, exc.code, attempt)
                self.wait(attempt - 1)
