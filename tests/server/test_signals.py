"""PacedGate: a round change wakes thousands of long-polls a chunk at a time, at a pace set by how
long each chunk kept the event loop busy; none is lost, none is woken twice, a waiter that gave up is
skipped, and a waiter arriving after the change passes at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from fedmezo.server.signals import (
    COMPACT_AFTER,
    SETTLE_CAP_S,
    PacedGate,
    Signals,
    wait_or_timeout,
    watch_call,
)


async def _waiting(gate: PacedGate, n: int) -> tuple[list[asyncio.Task[None]], list[int]]:
    """n waiters queued on the gate, and the list each appends its number to once woken."""
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await gate.wait()
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(n)]
    await asyncio.sleep(0)
    return tasks, woken


async def _woken_order(gate: PacedGate, n: int, busy_s: float = 0.0) -> list[tuple[int, float]]:
    woken: list[tuple[int, float]] = []

    async def waiter(i: int) -> None:
        await gate.wait()
        woken.append((i, time.perf_counter()))
        time.sleep(busy_s)  # the answer's work, holding the loop as a real handler does

    tasks = [asyncio.create_task(waiter(i)) for i in range(n)]
    await asyncio.sleep(0)  # every waiter queued
    gate.set()
    await asyncio.gather(*tasks)
    return woken


def test_few_waiters_wake_in_one_pass_like_an_event() -> None:
    async def main() -> None:
        gate = PacedGate(chunk=8)
        woken = await _woken_order(gate, 8)
        assert [i for i, _ in woken] == list(range(8))
        assert not gate.releasing

    asyncio.run(main())


def test_many_waiters_wake_a_chunk_at_a_time_in_arrival_order() -> None:
    async def main() -> None:
        gate = PacedGate(chunk=3)
        released_per_pass: list[int] = []
        tasks, woken = await _waiting(gate, 10)
        gate.set()
        assert gate.releasing
        while len(woken) < 10:
            before = len(woken)
            await asyncio.sleep(0)
            released_per_pass.append(len(woken) - before)
        await asyncio.gather(*tasks)
        assert woken == list(range(10))  # first come, first woken; each once
        assert max(released_per_pass) <= 3

    asyncio.run(main())


def test_rest_follows_the_busy_time_of_each_chunk() -> None:
    async def main() -> None:
        gate = PacedGate(chunk=2, rest_per_busy=2.0)
        woken = await _woken_order(gate, 6, busy_s=0.01)  # a chunk keeps the loop ~20 ms busy
        times = [t for _, t in woken]
        for k in (2, 4):  # the first waiter of the next chunk comes after a rest of ~2 x 20 ms
            assert times[k] - times[k - 1] >= 0.035
        assert times[1] - times[0] < 0.035  # within a chunk, no rest

    asyncio.run(main())


def test_a_waiter_that_gave_up_is_skipped_and_a_late_one_passes_at_once() -> None:
    async def main() -> None:
        gate = PacedGate(chunk=2)
        woken: list[int] = []

        async def waiter(i: int, timeout_s: float) -> None:
            await wait_or_timeout(gate, timeout_s)
            woken.append(i)

        gone = [asyncio.create_task(waiter(i, 0.01)) for i in range(4)]
        await asyncio.gather(*gone)  # all four timed out, their places stay queued
        staying = [asyncio.create_task(waiter(i, 30.0)) for i in range(4, 7)]
        await asyncio.sleep(0)
        woken.clear()
        gate.set()
        late = asyncio.create_task(waiter(99, 30.0))
        await asyncio.wait_for(asyncio.gather(*staying, late), 10.0)
        assert sorted(woken) == [4, 5, 6, 99]
        assert gate.waiting == 0

    asyncio.run(main())


def test_chunk_zero_wakes_everyone_at_once() -> None:
    async def main() -> None:
        gate = PacedGate(chunk=0)
        tasks, woken = await _waiting(gate, 500)
        gate.set()
        assert not gate.releasing
        await asyncio.sleep(0)
        assert len(woken) == 500
        await asyncio.gather(*tasks)

    asyncio.run(main())


@pytest.mark.parametrize("chunk", [0, 4])
def test_each_round_change_is_a_fresh_gate(chunk: int) -> None:
    async def main() -> None:
        signals = Signals(chunk)
        first = signals.round_changed()
        signals.notify_round()
        assert first.is_set()
        second = signals.round_changed()
        assert second is not first and not second.is_set() and second.chunk == chunk
        await asyncio.wait_for(first.wait(), 1.0)  # set: passes at once

    asyncio.run(main())


def test_a_step_waits_until_the_calls_it_woke_have_ended() -> None:
    """A call's answer leaves after its handler returns; the next chunk is woken only once the calls of
    this one ended (their done callbacks ran), or waited again."""

    async def main() -> None:
        gate = PacedGate(chunk=2, rest_per_busy=0.0)
        log: list[tuple[str, int, float]] = []

        async def call(i: int, ends_after_s: float, waits_again: bool) -> None:
            done: list[Callable[..., None]] = []
            watch_call(done.append)
            await gate.wait()
            log.append(("woken", i, time.perf_counter()))
            if waits_again:  # no task yet: it waits on the next round change instead of answering
                task = asyncio.ensure_future(PacedGate().wait())
                await asyncio.sleep(0)
                task.cancel()
                return
            await asyncio.sleep(ends_after_s)
            log.append(("ended", i, time.perf_counter()))
            for callback in done:
                callback(None)

        calls = [asyncio.create_task(call(i, 0.05, waits_again=i == 2)) for i in range(6)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*calls), 5.0)
        at = {(kind, i): t for kind, i, t in log}
        assert at["woken", 2] >= max(at["ended", 0], at["ended", 1])
        assert at["woken", 4] >= at["ended", 3]
        # call 2 waited again at once: its chunk was held only by call 3 (50 ms), not for SETTLE_CAP_S
        assert at["woken", 4] - at["woken", 2] < SETTLE_CAP_S

    asyncio.run(main())


def test_waiters_that_time_out_again_and_again_do_not_pile_up() -> None:
    """A long round: every poll times out (RECHECK_S) and waits again on the same gate, many times."""

    async def main() -> None:
        gate = PacedGate(chunk=8)
        for _ in range(20):  # 20 timeouts of 100 waiters each: 2,000 given up
            await asyncio.gather(*(wait_or_timeout(gate, 0.001) for _ in range(100)))
        assert gate.waiting <= 2 * COMPACT_AFTER + 100
        tasks, woken = await _waiting(gate, 30)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
        assert sorted(woken) == list(range(30))

    asyncio.run(main())
