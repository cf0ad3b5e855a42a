"""The server with shared seeds and P > 1, over real gRPC: tasks carry the estimator settings, an update
holds exactly τ·P scalars, the delta has τ·P coefficients and no participant list whatever the number
of clients, a client replays it from the run settings alone, and the round record keeps what each
client's task cost in forward passes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from helpers.server_rpc import FakeClient, grads_for, running_server

from fedmezo.client.sync import ReplicaSync
from fedmezo.fl.replica import Replica
from fedmezo.fl.seeds import SeedPlan
from fedmezo.fl.wire import delta_from_pb
from fedmezo.v1 import common_pb2, status_pb2
from fedmezo.v1 import federation_pb2 as fpb

STEPS, P = 3, 4


def test_shared_seed_round_over_grpc(tmp_path: Path, replica: Replica) -> None:
    follower = Replica(
        replica.params.__class__(replica.params.snapshot(), replica.params.names, replica.params.shapes)
    )

    async def main() -> None:
        async with running_server(
            tmp_path, replica, local_steps=STEPS, perturbations=P, seed_scheme="shared", estimator="fzoo",
            min_clients=3, clients_per_round=3,
        ) as app:  # fmt: skip
            manifest = replica.manifest_sha256
            clients = [FakeClient(app.port, f"c{i}", manifest=manifest) for i in range(3)]
            for c in clients:
                await c.join()
            tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
            task = tasks[0].task
            assert (task.estimator, task.perturbations, task.seed_scheme) == (
                common_pb2.ESTIMATOR_FZOO, P, common_pb2.SEED_SCHEME_SHARED,
            )  # fmt: skip
            config = await clients[0].status.GetRunConfig(status_pb2.GetRunConfigRequest(), timeout=10)
            assert (config.config.perturbations, config.config.seed_scheme) == (
                P,
                common_pb2.SEED_SCHEME_SHARED,
            )

            # τ scalars (not τ·P) are refused, and leave nothing behind
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await clients[0].submit(1, grads_for("c0", 1, STEPS))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert app.coordinator.store.count_updates(1) == 0

            for c in clients:
                await c.submit(1, grads_for(c.client_id, 1, STEPS * P), [2.0] * STEPS, forward_passes=15)
            message = await clients[0].wait_delta(1)
            assert len(message.participants) == 0 and len(message.coefficients) == STEPS * P
            ReplicaSync(follower, SeedPlan(0, "shared", P), STEPS).apply(delta_from_pb(message))
            assert follower.fingerprint() == message.fingerprint == app.coordinator.replica.fingerprint()

            rounds = await clients[0].status.ListRounds(
                status_pb2.ListRoundsRequest(from_round=1), timeout=10
            )
            assert [c.forward_passes for c in rounds.rounds[0].clients] == [15, 15, 15]
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_per_client_seeds_with_p_perturbations_list_participants(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(
            tmp_path, replica, local_steps=STEPS, perturbations=2, min_clients=2, clients_per_round=2
        ) as app:
            clients = [FakeClient(app.port, f"c{i}", manifest=replica.manifest_sha256) for i in range(2)]
            for c in clients:
                await c.join()
            await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
            for c in clients:
                response = await c.submit(1, grads_for(c.client_id, 1, STEPS * 2))
                assert response.status == fpb.UPDATE_STATUS_ACCEPTED
            message = await clients[0].wait_delta(1)
            assert [(p.client_id, p.local_steps) for p in message.participants] == [
                ("c0", STEPS),
                ("c1", STEPS),
            ]
            assert len(message.coefficients) == 2 * STEPS * 2
            for c in clients:
                await c.close()

    asyncio.run(main())
