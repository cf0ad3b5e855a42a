"""ListClients answers in bounded pages, each read for its own clients only; `list_all_clients` reads
them all (issue #15: status and dashboard stay responsive at 10,000 clients)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.server_rpc import FakeClient, grads_for, read_all_pages, running_server

from fedmezo.fl.replica import Replica
from fedmezo.server import servicer
from fedmezo.status_pages import list_all_clients
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import status_pb2

IDS = ("a", "b", "c", "d", "e")
STEPS = 2


def _read(port: int, after: str = "", limit: int = 0) -> tuple[list[str], int]:
    """(client ids read over every page, pages it took)."""
    clients, pages = read_all_pages(port, "ListClients", list_all_clients, after, limit)
    return [c.client_id for c in clients], pages


def test_clients_come_in_pages_with_their_own_figures(
    tmp_path: Path, replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer, "CLIENTS_PAGE", 2)

    async def main() -> None:
        async with running_server(
            tmp_path, replica, rounds=1, local_steps=STEPS, min_clients=len(IDS), clients_per_round=len(IDS)
        ) as app:
            clients = [FakeClient(app.port, c, manifest=replica.manifest_sha256) for c in IDS]
            for i, client in enumerate(clients):
                await client.join(num_examples=10 + i)

            async def play(client: FakeClient) -> None:
                reply = await client.get_task(0, 10.0)
                assert reply.status == fpb.TASK_STATUS_ASSIGNED
                round_id = reply.task.round_id
                await client.submit(round_id, grads_for(client.client_id, round_id, STEPS), [2.0] * STEPS)
                await client.wait_delta(round_id)

            await asyncio.gather(*(play(c) for c in clients))
            kw, stub = clients[0].kw(), clients[0].status
            whole = await asyncio.to_thread(_read, app.port)
            assert whole == (list(IDS), 3)
            first = await stub.ListClients(status_pb2.ListClientsRequest(), **kw)
            assert [c.client_id for c in first.clients] == ["a", "b"] and first.next_after_client_id == "b"
            last = await stub.ListClients(status_pb2.ListClientsRequest(after_client_id="d"), **kw)
            assert [c.client_id for c in last.clients] == ["e"] and last.next_after_client_id == ""
            exact = await stub.ListClients(status_pb2.ListClientsRequest(limit=2), **kw)
            assert len(exact.clients) == 2 and exact.next_after_client_id == ""  # the limit is met
            assert await asyncio.to_thread(_read, app.port, "a", 3) == (["b", "c", "d"], 2)
            # A page carries each client's own figures, the same as one reply with every client.
            monkeypatch.setattr(servicer, "CLIENTS_PAGE", 1000)
            single = await stub.ListClients(status_pb2.ListClientsRequest(), **kw)
            monkeypatch.setattr(servicer, "CLIENTS_PAGE", 2)
            paged = [c for page in ("", "b", "d") for c in (await stub.ListClients(
                status_pb2.ListClientsRequest(after_client_id=page), **kw)).clients]  # fmt: skip
            assert [c.SerializeToString() for c in paged] == [c.SerializeToString() for c in single.clients]
            for i, info in enumerate(single.clients):
                assert info.num_examples == 10 + i and info.rounds_participated == 1
                assert info.bytes_up > 0 and info.bytes_down > 0
            for client in clients:
                await client.close()

    asyncio.run(main())


def test_a_server_that_does_not_advance_is_an_error_not_a_loop() -> None:
    stuck = status_pb2.ListClientsResponse(
        clients=[status_pb2.ClientInfo(client_id="b")], next_after_client_id="a"
    )
    with pytest.raises(RuntimeError, match="did not advance"):
        list_all_clients(lambda request: stuck, after="a")


def test_a_server_without_paging_is_read_in_one_reply() -> None:
    whole = status_pb2.ListClientsResponse(clients=[status_pb2.ClientInfo(client_id=c) for c in IDS])
    assert [c.client_id for c in list_all_clients(lambda request: whole)] == list(IDS)
