"""Group commit: a client's write is acknowledged only after `Store.sync` put it on disk, concurrent
writes share one sync, and a write whose sync failed is never acknowledged (its resend is, later)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
from helpers.server_rpc import FakeClient, grads_for, make_config, rpc_code

from fedmezo.fl.errors import StoreError
from fedmezo.fl.replica import Replica
from fedmezo.server.app import ServerApp, build_app
from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.v1 import federation_pb2 as fpb

CLIENTS = 3
STEPS = 4
SETTLE_S = 0.5  # long enough for an acknowledgement that does not wait for the sync to arrive


class GatedStore(SqliteStore):
    """A real SqliteStore whose `sync` waits for the test to open the gate, and can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.syncs = 0

    def sync(self) -> None:  # runs in a worker thread
        if not self.gate.wait(timeout=30):
            raise AssertionError("gate never opened")
        self.syncs += 1
        if self.fail:
            raise StoreError("disk I/O error (injected)")
        super().sync()


async def _setup(
    tmp_path: Path, replica: Replica
) -> tuple[GatedStore, list[FakeClient], list[int], ServerApp]:
    store = GatedStore(tmp_path / "state.sqlite")
    config = make_config(tmp_path, min_clients=CLIENTS, clients_per_round=CLIENTS, local_steps=STEPS)
    app = build_app(config, store=store, replica=replica)
    await app.start()
    clients = [FakeClient(app.port, f"c{i}", manifest=replica.manifest_sha256) for i in range(CLIENTS)]
    for c in clients:
        await c.join()
    tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
    assert all(t.status == fpb.TASK_STATUS_ASSIGNED for t in tasks)
    return store, clients, [t.task.round_id for t in tasks], app


def test_updates_are_acknowledged_only_after_one_shared_sync(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        store, clients, rounds, app = await _setup(tmp_path, replica)
        try:
            store.gate.clear()
            syncs_before = store.syncs
            submits = [
                asyncio.ensure_future(c.submit(r, grads_for(c.client_id, r, STEPS), [2.0] * STEPS))
                for c, r in zip(clients, rounds)
            ]
            for _ in range(200):  # until the server stored all three (a loaded machine may take a while)
                if store.count_updates(rounds[0]) == CLIENTS:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(SETTLE_S)
            # Stored (the round may even have closed: every selected client answered), yet unanswered.
            assert store.count_updates(rounds[0]) == CLIENTS
            assert not any(s.done() for s in submits)
            store.gate.set()
            answers = await asyncio.gather(*submits)
            assert [a.status for a in answers] == [fpb.UPDATE_STATUS_ACCEPTED] * CLIENTS
            assert store.syncs - syncs_before < CLIENTS  # writes that waited together share a sync
        finally:
            store.gate.set()
            for c in clients:
                await c.close()
            await app.stop(0)

    asyncio.run(main())


def test_an_update_whose_sync_failed_is_refused_and_its_resend_accepted(
    tmp_path: Path, replica: Replica
) -> None:
    async def main() -> None:
        store, clients, rounds, app = await _setup(tmp_path, replica)
        try:
            first, round_id = clients[0], rounds[0]
            grads = grads_for(first.client_id, round_id, STEPS)
            store.fail = True
            try:
                await first.submit(round_id, grads, [2.0] * STEPS)
                raise AssertionError("an update that did not reach the disk was acknowledged")
            except grpc.aio.AioRpcError as exc:
                # a store failure: UNAVAILABLE (the client retries), never an acknowledgement
                assert rpc_code(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
            store.fail = False
            again = await first.submit(round_id, grads, [2.0] * STEPS)  # the client's retry
            assert again.status == fpb.UPDATE_STATUS_ACCEPTED and again.round_id == round_id
            assert store.count_updates(round_id) == 1
        finally:
            for c in clients:
                await c.close()
            await app.stop(0)

    asyncio.run(main())
