"""How long a new call waits while a grpc.aio server answers a burst of held long-polls (issue #15).

At 10,000 clients the tail of SubmitUpdate is the round opening: every client's GetTask long-poll is
answered at once, and session 13 saw no new call start in the server until the last answer left. This
isolates that from fedmezo: a bare grpc.aio server (no fedmezo code) holds `--waiters` long-polls from
one process, a second process pings it every 10 ms on 40 connections, and the long-polls are released
(a) all at once, (b) `--chunk` per pass of the event loop, or (c) `--chunk` every `--pause-s` seconds;
`--listeners K` serves the port from K grpc servers in the one process (SO_REUSEPORT: K new calls per
method can be waiting to be accepted instead of one). It reports the pings' latency before and during
the burst. Findings on this project's 2-core machine are in benchmarks/RESULTS.md.

    python benchmarks/bench_wake_burst.py --waiters 5000                 # all at once
    python benchmarks/bench_wake_burst.py --waiters 5000 --chunk 64 --pause-s 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

SERVICE = "bench.Burst"
PROBE_CHANNELS = 40
PROBE_EVERY_S = 0.01
SETTLE_S = 4.0  # every long-poll in flight before the probes start
PROBE_S = 4.0  # how long the probes run: a second before the release, the burst, and after
_spawn = multiprocessing.get_context("spawn")  # grpc does not survive fork() once used


def _same(data: bytes) -> bytes:
    return data


def _handler(fn: Callable[[bytes, Any], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_same, response_serializer=_same)


def serve(listeners: int, chunk: int, pause_s: float, ports: Any) -> None:
    """The server process: Wait holds until Release; Ping answers at once."""

    async def main() -> None:
        waiting: list[asyncio.Future[None]] = []
        keep: set[asyncio.Task[None]] = set()

        async def wait(request: bytes, context: Any) -> bytes:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append(future)
            await future
            return b"t" * 40  # about a task's size

        async def paced() -> None:
            for i, future in enumerate(waiting):
                future.set_result(None)
                if i % chunk == chunk - 1:
                    await asyncio.sleep(pause_s)

        async def release(request: bytes, context: Any) -> bytes:
            if chunk <= 0:
                for future in waiting:
                    future.set_result(None)
            else:
                task = asyncio.get_running_loop().create_task(paced())
                keep.add(task)
            return b""

        async def ping(request: bytes, context: Any) -> bytes:
            return b"p"

        handlers = {"Wait": _handler(wait), "Release": _handler(release), "Ping": _handler(ping)}
        servers, port = [], 0
        for _ in range(listeners):
            server = grpc.aio.server(
                options=[
                    ("grpc.server.max_pending_requests", 100_000),
                    ("grpc.server.max_pending_requests_hard_limit", 100_000),
                ]
            )
            server.add_registered_method_handlers(SERVICE, handlers)
            port = server.add_insecure_port(f"127.0.0.1:{port}")
            servers.append(server)
        for server in servers:
            await server.start()
        ports.put(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def probe(target: str, results: Any) -> None:
    """The prober process: (start, latency) of every ping over PROBE_S seconds."""

    async def main() -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(PROBE_CHANNELS)]
        for channel in channels:
            await channel.unary_unary(f"/{SERVICE}/Ping")(b"")
        samples: list[tuple[float, float]] = []
        end = time.perf_counter() + PROBE_S

        async def pinger(channel: grpc.aio.Channel) -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                await channel.unary_unary(f"/{SERVICE}/Ping")(b"")
                samples.append((start, time.perf_counter() - start))
                await asyncio.sleep(PROBE_EVERY_S)

        await asyncio.gather(*(pinger(channel) for channel in channels))
        results.put(samples)

    asyncio.run(main())


def _quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def ping_report(
    samples: list[tuple[float, float]], released: float, answered: float, before_s: float = math.inf
) -> dict[str, Any]:
    """The pings' (start, latency) split at the burst: those started in the `before_s` seconds before
    `released`, and those started between `released` and `answered`."""
    during = [latency for start, latency in samples if released <= start <= answered]
    before = [latency for start, latency in samples if released - before_s <= start < released]
    return {
        "pings_before": len(before),
        "ping_p50_before_ms": _quantile_ms(before, 0.5),
        "ping_p99_before_ms": _quantile_ms(before, 0.99),
        "pings_during": len(during),
        "ping_p50_during_ms": _quantile_ms(during, 0.5),
        "ping_p99_during_ms": _quantile_ms(during, 0.99),
        "ping_max_during_ms": _quantile_ms(during, 1.0),
    }


async def drive(target: str, waiters: int) -> dict[str, Any]:
    """Hold the long-polls, start the prober, release, and split the pings at the burst."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, waiters // 10))]
    polls = [
        asyncio.ensure_future(channels[i % len(channels)].unary_unary(f"/{SERVICE}/Wait")(b"", timeout=120))
        for i in range(waiters)
    ]
    await asyncio.sleep(SETTLE_S)
    results = _spawn.Queue()
    prober = _spawn.Process(target=probe, args=(target, results), daemon=True)
    prober.start()
    await asyncio.sleep(PROBE_S / 2)  # the prober's connections are up and it has pinged a while
    released = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
    await channels[0].unary_unary(f"/{SERVICE}/Release")(b"")
    await asyncio.gather(*polls)
    answered = time.perf_counter()
    samples = await asyncio.to_thread(results.get)
    prober.join()
    return {"burst_s": round(answered - released, 3)} | ping_report(samples, released, answered)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiters", type=int, default=5000, help="long-polls held, then released")
    parser.add_argument("--listeners", type=int, default=1, help="grpc servers sharing the port")
    parser.add_argument("--chunk", type=int, default=0, help="release this many at a time (0 = all at once)")
    parser.add_argument("--pause-s", type=float, default=0.0, help="pause between chunks (0 = one loop pass)")
    args = parser.parse_args()
    ports = _spawn.Queue()
    server = _spawn.Process(target=serve, args=(args.listeners, args.chunk, args.pause_s, ports), daemon=True)
    server.start()
    try:
        report = {
            "waiters": args.waiters,
            "listeners": args.listeners,
            "chunk": args.chunk,
            "pause_s": args.pause_s,
        }
        report |= asyncio.run(drive(f"127.0.0.1:{ports.get(timeout=60)}", args.waiters))
        print(json.dumps(report))
    finally:
        server.kill()


if __name__ == "__main__":
    main()
