"""ListRounds answers in bounded pages (count and bytes), and `list_all_rounds` reads them all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.server_rpc import FakeClient, grads_for, read_all_pages, running_server

from fedmezo.fl.replica import Replica
from fedmezo.server import servicer
from fedmezo.status_pages import list_all_rounds
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import status_pb2

ROUNDS = 5
STEPS = 2


async def _play(client: FakeClient) -> None:
    for version in range(ROUNDS):
        reply = await client.get_task(version, 5.0)
        assert reply.status == fpb.TASK_STATUS_ASSIGNED
        round_id = reply.task.round_id
        await client.submit(round_id, grads_for(client.client_id, round_id, STEPS), [2.0] * STEPS)
        await client.wait_delta(round_id)


def _read(port: int, from_round: int = 0, limit: int = 0) -> tuple[list[int], int]:
    """(round ids read over every page, pages it took)."""
    rounds, pages = read_all_pages(port, "ListRounds", list_all_rounds, from_round, limit)
    return [r.round_id for r in rounds], pages


def test_rounds_come_in_pages_and_are_all_read(
    tmp_path: Path, replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer, "ROUNDS_PAGE", 2)

    async def main() -> None:
        async with running_server(
            tmp_path, replica, rounds=ROUNDS, local_steps=STEPS, min_clients=1, clients_per_round=1
        ) as app:
            client = FakeClient(app.port, "a", manifest=replica.manifest_sha256)
            await client.join()
            await _play(client)
            first = await client.status.ListRounds(status_pb2.ListRoundsRequest(), **client.kw())
            assert [r.round_id for r in first.rounds] == [1, 2] and first.next_from_round == 3
            last = await client.status.ListRounds(status_pb2.ListRoundsRequest(from_round=5), **client.kw())
            assert [r.round_id for r in last.rounds] == [5] and last.next_from_round == 0
            exact = await client.status.ListRounds(status_pb2.ListRoundsRequest(limit=2), **client.kw())
            assert len(exact.rounds) == 2 and exact.next_from_round == 0  # the limit is met: no more
            assert await asyncio.to_thread(_read, app.port) == ([1, 2, 3, 4, 5], 3)
            assert await asyncio.to_thread(_read, app.port, 2, 3) == ([2, 3, 4], 2)
            # A page always holds one round, however large: a 1-byte budget still makes progress.
            monkeypatch.setattr(servicer, "ROUNDS_PAGE_BYTES", 1)
            assert await asyncio.to_thread(_read, app.port) == ([1, 2, 3, 4, 5], 5)
            await client.close()

    asyncio.run(main())


def test_a_server_that_does_not_advance_is_an_error_not_a_loop() -> None:
    stuck = status_pb2.ListRoundsResponse(rounds=[status_pb2.RoundInfo(round_id=1)], next_from_round=1)
    with pytest.raises(RuntimeError, match="did not advance"):
        list_all_rounds(lambda request: stuck, from_round=1)


def test_a_server_without_paging_is_read_in_one_reply() -> None:
    whole = status_pb2.ListRoundsResponse(rounds=[status_pb2.RoundInfo(round_id=i) for i in (1, 2, 3)])
    assert [r.round_id for r in list_all_rounds(lambda request: whole)] == [1, 2, 3]
