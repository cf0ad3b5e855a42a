"""Wake-ups for waiters: long-polls, delta streams and event streams wait on these instead of polling.

Two levels, because waking every waiter on every update is O(clients²) at scale: `changed` fires on
any change (event streams), `round_changed` only when a round opens or closes (long-polls, delta
streams). Each is a fresh one per change: capture it before checking state, then wait.

`round_changed` is a `PacedGate`: when thousands of long-polls wait on it, they are woken a chunk at
a time, each chunk once the calls of the one before have ended, and after a rest as long as that took.
Woken all at once, their answers queue up in grpc ahead of every call that arrives meanwhile: at
10,000 clients a heartbeat arriving as a round opened waited 1.6 s, paced 80 ms at p99, for a burst
of 3.9-4.6 s instead of 1.7-2.3 s (benchmarks/RESULTS.md, "a round opening paced by its own answers").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from fedmezo.server.collector import work_done

__all__ = [
    "COMPACT_AFTER",
    "REST_PER_BUSY",
    "SETTLE_CAP_S",
    "WAKE_CHUNK",
    "PacedGate",
    "Signals",
    "wait_or_timeout",
    "watch_call",
]

WAKE_CHUNK = 64
# Rest per second a chunk took, from its wake-up to the last of its calls ended (its answer sent):
# answers then go out at about half of what the server can do, and a call arriving meanwhile meets
# a backlog of at most one chunk. Self-clocked: it holds on a fast, a slow or a busy machine alike.
REST_PER_BUSY = 1.0
COMPACT_AFTER = 256  # waiters given up before the queue is rebuilt without them (and more than half)
SETTLE_CAP_S = 0.25  # a chunk's calls that have not ended by then (one waits again) stop holding it
_PASSES = 3  # loop passes a woken long-poll takes to answer: wait_for's task, the handler, grpc's send


class Waitable(Protocol):
    async def wait(self) -> object: ...


class _Chunk:
    """The calls one step of a pacer woke, until each has ended or waits again."""

    def __init__(self) -> None:
        self.pending = 0
        self.settled = asyncio.Event()

    def one_settled(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self.settled.set()


class CallWatch:
    """One call's link to the chunk that woke it: released when the call ends (its answer has left)
    or waits again (it is not answering)."""

    __slots__ = ("_chunk",)

    def __init__(self) -> None:
        self._chunk: _Chunk | None = None

    def woken(self, chunk: _Chunk) -> None:
        self.settle()
        chunk.pending += 1
        self._chunk = chunk

    def settle(self, *_: object) -> None:
        if self._chunk is not None:
            self._chunk.one_settled()
            self._chunk = None


_watch: ContextVar[CallWatch | None] = ContextVar("fedmezo_call_watch", default=None)


def watch_call(add_done_callback: Callable[[Callable[..., None]], None]) -> None:
    """Let a pacer that wakes this call (the current task and those it starts) know when it ended:
    `add_done_callback` is the call's (grpc's ServicerContext.add_done_callback)."""
    watch = CallWatch()
    add_done_callback(watch.settle)
    _watch.set(watch)


class PacedGate:
    """A one-shot event whose waiters, once it is set, are woken at most `chunk` per step (`chunk`
    0: all at once, like asyncio.Event). A step waits until the calls it woke have ended (see
    `watch_call`; an unwatched waiter counts as ended a few loop passes after its wake-up), then
    rests `rest_per_busy` times as long as that took. A waiter arriving after `set` passes at once:
    it is a new call, already behind whatever grpc has queued."""

    def __init__(self, chunk: int = WAKE_CHUNK, rest_per_busy: float = REST_PER_BUSY) -> None:
        self.chunk = chunk
        self.rest_per_busy = rest_per_busy
        self._waiters: deque[tuple[asyncio.Future[None], CallWatch | None]] = deque()
        self._set = False
        self._pacer: asyncio.Task[None] | None = None
        self._given_up = 0  # cancelled waiters still in _waiters

    def is_set(self) -> bool:
        return self._set

    @property
    def waiting(self) -> int:
        """Waiters queued and not yet woken (up to half of them may have given up meanwhile)."""
        return len(self._waiters)

    @property
    def releasing(self) -> bool:
        """Whether waiters are still being woken (a pacer is running)."""
        return self._pacer is not None and not self._pacer.done()

    async def wait(self) -> bool:
        if self._set:
            return True
        watch = _watch.get()
        if watch is not None:
            watch.settle()  # woken before and waiting again: not answering, so not holding its chunk
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((future, watch))
        try:
            await future
        except asyncio.CancelledError:  # given up (its timeout, a cancelled call): the pacer skips it
            self._given_up += 1
            if self._given_up > COMPACT_AFTER and 2 * self._given_up > len(self._waiters):
                self._compact()
            raise
        return True

    def _compact(self) -> None:
        """Drop the waiters that gave up: a poll that times out while no round changes waits again on
        the same gate, every RECHECK_S, so over a long round they would pile up by the thousand."""
        self._waiters = deque(w for w in self._waiters if not w[0].done())
        self._given_up = 0

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        if self.chunk <= 0 or len(self._waiters) <= self.chunk:
            self._wake(len(self._waiters), None)
        else:
            self._pacer = asyncio.get_running_loop().create_task(self._paced())

    def _wake(self, n: int, chunk: _Chunk | None) -> int:
        """Wake up to n waiters still waiting; returns how many."""
        woken = 0
        while self._waiters and woken < n:
            future, watch = self._waiters.popleft()
            if future.done():  # it gave up: no longer counted as queued
                self._given_up -= 1
                continue
            future.set_result(None)
            woken += 1
            if chunk is not None and watch is not None:
                watch.woken(chunk)
        return woken

    async def _paced(self) -> None:
        while self._waiters:
            started = time.perf_counter()
            chunk = _Chunk()
            if not self._wake(self.chunk, chunk):
                return
            for _ in range(_PASSES):
                await asyncio.sleep(0)
            if chunk.pending > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(chunk.settled.wait(), SETTLE_CAP_S)
            await asyncio.sleep(self.rest_per_busy * (time.perf_counter() - started))


class Signals:
    def __init__(self, wake_chunk: int = WAKE_CHUNK) -> None:
        self.wake_chunk = wake_chunk
        self._changed = asyncio.Event()
        self._round_changed = PacedGate(wake_chunk)

    def changed(self) -> asyncio.Event:
        return self._changed

    def round_changed(self) -> PacedGate:
        return self._round_changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def notify_round(self) -> None:
        self._round_changed.set()
        self._round_changed = PacedGate(self.wake_chunk)
        self.notify()

    def wake_all(self) -> None:
        """Every waiter re-checks now, whatever it waits for: the tokens file was reloaded, and a
        long-poll or stream whose token was revoked must end at once, not at the next round change."""
        self.notify_round()


async def wait_or_timeout(event: Waitable, timeout_s: float) -> None:
    """Return when `event` is set or after `timeout_s`, whichever comes first.

    wait_for, not asyncio.timeout in the caller's task: then a round opening at 10,000 clients wakes,
    answers and hands grpc every long-poll's reply in one pass of the event loop, and the first
    SubmitUpdates of the round waited ~3x longer (p99 of those in the first 4 s: 1.5-1.8 s against
    0.66 s, benchmarks/RESULTS.md). Each wake is counted by the collector's pacer (`work_done`): the
    replies made in that pass outlive it, and no call finishes in it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout_s)
        work_done()
