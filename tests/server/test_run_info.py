"""Run facts the dashboard and clients read, over a real loopback server: RunConfig.max_length,
trainable_params and model_weight_bytes; ClientInfo.inference_peak_memory_bytes; and
RoundInfo.deadline_at_unix_ms after extensions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.server_rpc import FakeClient, FakeClock, running_server

from fedmezo.fl.errors import ConfigError
from fedmezo.fl.replica import Replica
from fedmezo.fl.wire import ms
from fedmezo.server.config import ServerConfig, load_config
from fedmezo.v1 import status_pb2

MIB = 1 << 20


def _weight_bytes(replica: Replica) -> int:
    """Independently of Replica.weight_bytes: unique storages, so tied weights count once."""
    unique = {
        (p.untyped_storage().data_ptr(), p.storage_offset(), p.numel()): p.numel() * p.element_size()
        for _, p in replica.model.named_parameters(remove_duplicate=False)
    }
    return sum(unique.values())


def test_run_config_carries_max_length_and_model_size(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica, max_length=96) as app:
            client = FakeClient(app.port, "c0", manifest=replica.manifest_sha256)
            joined = await client.join()
            status = await client.status.GetRunConfig(status_pb2.GetRunConfigRequest(), **client.kw())
            await client.close()
        for config in (joined.config, status.config):
            assert config.max_length == 96
            assert config.trainable_params == replica.params.numel > 0
            assert config.model_weight_bytes == _weight_bytes(replica)
            assert config.model_weight_bytes == 4 * sum(p.numel() for p in replica.model.parameters())

    asyncio.run(main())


def test_default_max_length_is_sent_too(tmp_path: Path, replica: Replica) -> None:
    async def main() -> int:
        async with running_server(tmp_path, replica) as app:
            client = FakeClient(app.port, "c0", manifest=replica.manifest_sha256)
            config = (await client.join()).config
            await client.close()
        return int(config.max_length)

    assert asyncio.run(main()) == ServerConfig.max_length == 256


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_length": "4"}, "max_length"),
        ({"max_length": "0"}, "max_length"),
        ({"eval_every": "0"}, "eval_every"),
        ({"eval_limit": "0"}, "eval_limit"),
        ({"eval_max_new_tokens": "0"}, "eval_max_new_tokens"),
        ({"eval_data": "/nonexistent/eval.jsonl"}, "eval_data"),
    ],
)
def test_invalid_max_length_and_eval_options_are_rejected(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"insecure": True, **flags}, env={})


def test_inference_peak_is_stored_and_listed(tmp_path: Path, replica: Replica) -> None:
    async def main() -> tuple[list[int], list[int]]:
        async with running_server(tmp_path, replica) as app:
            a = FakeClient(app.port, "a", manifest=replica.manifest_sha256)
            b = FakeClient(app.port, "b", manifest=replica.manifest_sha256)
            await a.join(inference_peak_memory_bytes=700 * MIB)
            await b.join()  # an older client: nothing measured
            first = await a.status.ListClients(status_pb2.ListClientsRequest(), **a.kw())
            await a.join()  # a rejoin without the field keeps the measured value
            await b.join(inference_peak_memory_bytes=123 * MIB)
            second = await a.status.ListClients(status_pb2.ListClientsRequest(), **a.kw())
            stored = app.coordinator.store.get_client("a")
            assert stored is not None and stored.inference_peak_memory_bytes == 700 * MIB
            for c in (a, b):
                await c.close()
        return (
            [c.inference_peak_memory_bytes for c in first.clients],
            [c.inference_peak_memory_bytes for c in second.clients],
        )

    first, second = asyncio.run(main())
    assert first == [700 * MIB, 0]
    assert second == [700 * MIB, 123 * MIB]


def test_deadline_of_the_open_round_follows_extensions(tmp_path: Path, replica: Replica) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with running_server(
            tmp_path, replica, clock=clock, min_clients=2, clients_per_round=2, quorum=1.0,
            deadline_s=10.0, max_extensions=2, heartbeat_timeout_s=1e9,
        ) as app:  # fmt: skip
            clients = [FakeClient(app.port, c, manifest=replica.manifest_sha256) for c in ("a", "b")]
            for c in clients:
                await c.join()
            opened_at = clock()
            await asyncio.gather(*(c.get_task(0, 1.0) for c in clients))

            async def deadline() -> int:
                request = status_pb2.ListRoundsRequest(from_round=1)
                (round_,) = (await clients[0].status.ListRounds(request, **clients[0].kw())).rounds
                return int(round_.deadline_at_unix_ms)

            assert await deadline() == ms(opened_at + 10.0)
            clock.advance(11.0)  # past the deadline without quorum: extended by deadline_s from now
            await app.coordinator.tick()
            rec = app.coordinator.store.get_round(1)
            assert rec is not None and rec.extensions == 1
            assert await deadline() == ms(opened_at + 11.0 + 10.0)
            for c in clients:
                await c.close()

    asyncio.run(main())
