"""A burst of calls from thousands of connections: every one is served, none is cancelled by gRPC.

gRPC's server cancels calls that arrive while 1,000-3,000 are already waiting for the Python event
loop (its default pending-request limits); at a round close every client calls at once, so the server
sizes those limits by max_clients (app.pending_rpc_options)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
from helpers.server_rpc import running_server

from fedmezo.fl.replica import Replica
from fedmezo.v1 import status_pb2, status_pb2_grpc

CONNECTIONS = 3500  # above gRPC's default hard limit of 3,000 waiting calls


def test_a_burst_from_thousands_of_connections_is_served_in_full(tmp_path: Path, replica: Replica) -> None:
    async def main() -> Counter[str]:
        async with running_server(tmp_path, replica, rate_limit_rps=0) as app:
            # A local subchannel pool per channel: one TCP connection each, as separate clients have
            # (channels of one process otherwise share one connection, and its stream limit).
            own_connection = [("grpc.use_local_subchannel_pool", 1)]
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=own_connection)
                for _ in range(CONNECTIONS)
            ]
            outcomes: Counter[str] = Counter()

            async def call(channel: grpc.aio.Channel) -> None:
                stub = status_pb2_grpc.StatusServiceStub(channel)
                try:
                    await stub.GetRunConfig(status_pb2.GetRunConfigRequest(), timeout=60.0)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1

            try:
                await asyncio.gather(*(call(c) for c in channels))
            finally:
                await asyncio.gather(*(c.close() for c in channels))
            return outcomes

    assert asyncio.run(main()) == Counter({"OK": CONNECTIONS})
