"""Per-client limits that keep one hostile (or broken) caller from exhausting the server.

A token bucket per identity bounds the request rate; a counter per identity bounds the long-polls and
streams it holds open (each holds a coroutine and a socket until it ends). Both are keyed by the
authenticated identity, so 1,000 well-behaved clients never share a budget. Requests that fail
authentication have no identity: a token bucket per peer address bounds them (`peer_host`). The
limiters' own memory is bounded too: an idle bucket is refilled, indistinguishable from a new one,
and is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fedmezo.fl.errors import RateLimited, TooManyStreams

__all__ = ["RateLimiter", "StreamSlots", "peer_host"]

PRUNE_MIN_KEYS = 4096  # buckets kept before the first sweep of idle ones


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: `burst` requests at once, then `rate` per second. rate 0 = no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._prune_at = PRUNE_MIN_KEYS

    def admit(self, key: str) -> None:
        """Take one token from `key`'s bucket; raises RateLimited when it is empty."""
        if self.rate <= 0:
            return
        self._refilled(key).tokens -= 1.0

    def _refilled(self, key: str) -> _Bucket:
        """`key`'s bucket refilled to now, holding at least one token; raises RateLimited otherwise."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait_s = (1.0 - bucket.tokens) / self.rate
            raise RateLimited(
                f"rate limit: more than {self.rate:g} requests/s (burst {self.burst:g}) from {key!r}; "
                f"retry in {wait_s:.2f} s"
            )
        return bucket

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled (they equal fresh ones); amortized O(1) per new key."""
        full_after_s = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full_after_s}
        self._prune_at = max(PRUNE_MIN_KEYS, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)


def peer_host(peer: str) -> str:
    """The address part of a grpc peer string: "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7",
    "ipv6:[::1]:51234" -> "ipv6:[::1]" (the port changes with every connection; the host does not)."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class StreamSlots:
    """At most `limit` long-polls/streams open at once per key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One slot for the duration of the block; raises TooManyStreams when all are taken."""
        held = self._open.get(key, 0)
        if held >= self.limit:
            raise TooManyStreams(
                f"{key!r} already holds {held} long-polls/streams (limit {self.limit}); close one first"
            )
        self._open[key] = held + 1
        try:
            yield
        finally:
            left = self._open[key] - 1
            if left:
                self._open[key] = left
            else:
                del self._open[key]

    def held(self, key: str) -> int:
        return self._open.get(key, 0)
