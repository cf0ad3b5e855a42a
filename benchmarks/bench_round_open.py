"""How long a new call waits while fedmezo's server opens a round for thousands of waiting long-polls.

bench_wake_burst.py showed it on a bare grpc.aio server; this is the same probe on `fedmezo server`
(issue #15), so that the server's own answer to a round opening can be judged without bench_server's
load generators, whose event loops also receive the burst and time their own calls late. Three
processes besides the server, all on CLOCK_MONOTONIC:

  holders   join `--waiters` clients, one connection each, and hold a GetTask long-poll each (they do
            nothing else, so their answers are timed as they arrive);
  prober    `PROBERS` clients, joined first, each sending a Heartbeat every 10 ms: the new calls;
  this one  joins the last client once every poll waits: the server opens the round at once
            (min_clients = everyone) and answers the polls, all at once (`--wake-chunk 0`) or a
            chunk at a time (the server's default).

It reports the burst (trigger to the last task received) and the heartbeats' latency before and
during it. Findings are in benchmarks/RESULTS.md.

    python benchmarks/bench_round_open.py --waiters 2000                      # the server's default
    python benchmarks/bench_round_open.py --waiters 10000 --wake-chunk 0      # all at once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

import grpc

from fedmezo.v1 import common_pb2, federation_pb2, federation_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))  # PYTHONSAFEPATH=1 (the device script) leaves it out
from bench_server import LONG_POLL_S, ServerProcess, raise_fd_limit
from bench_wake_burst import ping_report

PROBERS = 40
PROBE_EVERY_S = 0.01
BEFORE_S = 1.0  # heartbeats before the trigger: the idle baseline
AFTER_S = 0.5  # and after the last task arrived
JOINS_AT_ONCE = 256
RPC_TIMEOUT_S = 120.0
_spawn = multiprocessing.get_context("spawn")  # grpc does not survive fork() once used
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _join(client_id: str, config: common_pb2.RunConfig) -> federation_pb2.JoinRequest:
    return federation_pb2.JoinRequest(
        client_id=client_id, manifest_sha256=config.manifest_sha256, rng_spec=config.rng_spec,
        num_examples=64, device="sim", client_version="bench_round_open",
    )  # fmt: skip


async def _joined(target: str, ids: list[str], config_bytes: bytes) -> tuple[list[Any], dict[str, Any]]:
    """One connection per client, every client joined; (channels, stub per client id)."""
    config = common_pb2.RunConfig.FromString(config_bytes)
    channels = {c: grpc.aio.insecure_channel(target, options=_OWN_CONNECTION) for c in ids}
    stubs = {c: federation_pb2_grpc.FederationServiceStub(ch) for c, ch in channels.items()}
    gate = asyncio.Semaphore(JOINS_AT_ONCE)

    async def one(client_id: str, stub: Any) -> None:
        async with gate:
            await stub.Join(_join(client_id, config), timeout=RPC_TIMEOUT_S)

    await asyncio.gather(*(one(c, s) for c, s in stubs.items()))
    return list(channels.values()), stubs


def hold(target: str, ids: list[str], config_bytes: bytes, ready: Any, results: Any) -> None:
    """Join, then hold one long-poll per client; put the monotonic time each task arrived."""

    async def main() -> None:
        channels, stubs = await _joined(target, ids, config_bytes)
        arrived: list[float] = []

        async def poll(client_id: str, stub: Any) -> None:
            request = federation_pb2.GetTaskRequest(client_id=client_id, known_version=0, wait_s=LONG_POLL_S)
            response = await stub.GetTask(request, timeout=RPC_TIMEOUT_S)
            if response.status != federation_pb2.TASK_STATUS_ASSIGNED:
                raise RuntimeError(f"{client_id}: no task ({response.status}): no round opened in time")
            arrived.append(time.monotonic())

        polls = [asyncio.ensure_future(poll(c, s)) for c, s in stubs.items()]
        await asyncio.sleep(min(5.0, 1.0 + len(ids) / 2000))  # every poll reached the server and waits
        ready.put(True)
        await asyncio.gather(*polls)
        results.put(arrived)
        for channel in channels:
            await channel.close()

    asyncio.run(main())


def probe(target: str, ids: list[str], config_bytes: bytes, stop: Any, results: Any) -> None:
    """Join, then heartbeat every PROBE_EVERY_S from each client until `stop`; put (start, latency)."""

    async def main() -> None:
        channels, stubs = await _joined(target, ids, config_bytes)
        results.put("joined")
        samples: list[tuple[float, float]] = []

        async def pinger(client_id: str, stub: Any) -> None:
            request = federation_pb2.HeartbeatRequest(client_id=client_id)
            while not stop.is_set():
                start = time.monotonic()
                await stub.Heartbeat(request, timeout=RPC_TIMEOUT_S)
                samples.append((start, time.monotonic() - start))
                await asyncio.sleep(PROBE_EVERY_S)

        await asyncio.gather(*(pinger(c, s) for c, s in stubs.items()))
        results.put(samples)
        for channel in channels:
            await channel.close()

    asyncio.run(main())


def _get(queue: Any, process: Any, what: str, timeout_s: float = 600.0) -> Any:
    """The next item `process` puts; its exit first (it failed: see its stderr) is an error."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        with contextlib.suppress(Empty):
            return queue.get(timeout=0.5)
        if not process.is_alive():
            raise RuntimeError(f"{what} exited with {process.exitcode}")
    raise RuntimeError(f"{what}: nothing in {timeout_s:.0f} s")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    clients = args.waiters + PROBERS + 1
    server = ServerProcess(
        workdir, clients=clients, rounds=1, local_steps=args.local_steps, heartbeat_s=30.0,
        seed_scheme="shared",
        extra=("--rate-limit-rps=0", f"--max-clients={clients}", f"--wake-chunk={args.wake_chunk}"),
    )  # fmt: skip
    server.start()
    try:
        target, config = server.target, server.run_config()
        config_bytes = config.SerializeToString()
        queue_p, stop, ready, queue_h = _spawn.Queue(), _spawn.Event(), _spawn.Queue(), _spawn.Queue()
        prober = _spawn.Process(
            target=probe,
            args=(target, [f"p{i}" for i in range(PROBERS)], config_bytes, stop, queue_p),
        )
        prober.start()
        _get(queue_p, prober, "the prober")
        holders = _spawn.Process(
            target=hold,
            args=(target, [f"h{i}" for i in range(args.waiters)], config_bytes, ready, queue_h),
        )
        holders.start()
        _get(ready, holders, "the holders")
        time.sleep(BEFORE_S)
        with grpc.insecure_channel(target) as channel:
            trigger = federation_pb2_grpc.FederationServiceStub(channel)
            released = time.monotonic()
            trigger.Join(_join("trigger", config), timeout=RPC_TIMEOUT_S)  # the last one: the round opens
        arrived = _get(queue_h, holders, "the holders")
        time.sleep(AFTER_S)
        stop.set()
        samples = _get(queue_p, prober, "the prober")
        prober.join(30)
        holders.join(30)
    finally:
        server.close()
    return {
        "waiters": args.waiters,
        "wake_chunk": args.wake_chunk,
        "local_steps": args.local_steps,
        "first_task_s": round(min(arrived) - released, 3),
        "burst_s": round(max(arrived) - released, 3),
    } | ping_report(samples, released, max(arrived), before_s=BEFORE_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiters", type=int, default=2000, help="clients holding a long-poll")
    parser.add_argument(
        "--wake-chunk", type=int, default=64, help="the server's --wake-chunk (0 = every poll at once)"
    )
    parser.add_argument("--local-steps", type=int, default=20, help="tau of the round's tasks")
    args = parser.parse_args(argv)
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="bench_round_open-") as tmp:
        print(json.dumps(run(args, Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
