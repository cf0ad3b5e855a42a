"""RoundInfo.clients lists the clients the round selected, and only them: a client whose traffic is
booked to a round (a delta stream, a fingerprint report, a heartbeat while it is open) must not appear
in that round, or any client could add itself to past rounds. Real gRPC, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers.server_rpc import FakeClient, grads_for, running_server

from fedmezo.fl.replica import Replica
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import status_pb2

STEPS = 4


def test_only_selected_clients_are_listed_in_a_round(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(
            tmp_path, replica, rounds=3, local_steps=STEPS, min_clients=2, clients_per_round=2
        ) as app:
            manifest = replica.manifest_sha256
            alice, bob, carol = (
                FakeClient(app.port, c, manifest=manifest) for c in ("alice", "bob", "carol")
            )
            for c in (alice, bob):
                await c.join()
            tasks = await asyncio.gather(alice.get_task(0, 5.0), bob.get_task(0, 5.0))
            assert all(t.status == fpb.TASK_STATUS_ASSIGNED and t.task.round_id == 1 for t in tasks)
            await carol.join()  # after round 1 opened: not selected in it
            for c in (alice, bob):
                await c.submit(1, grads_for(c.client_id, 1, STEPS))
            delta = await alice.wait_delta(1)
            # carol's traffic lands on round 1: its delta stream and its fingerprint report
            assert [m.round_id for m in await carol.deltas(1)] == [1]
            assert (await carol.report(1, delta.fingerprint)).in_sync
            await carol.report(1, b"\x00" * 32)  # a wrong one, too
            await app.coordinator.idle()
            app.coordinator.traffic.flush()
            rounds = await alice.status.ListRounds(status_pb2.ListRoundsRequest(from_round=1), timeout=10)
            round_1 = next(r for r in rounds.rounds if r.round_id == 1)
            assert [c.client_id for c in round_1.clients] == ["alice", "bob"]
            assert round_1.bytes_up > 0  # carol's bytes are still counted in the round's totals
            for c in (alice, bob, carol):
                await c.close()

    asyncio.run(main())
