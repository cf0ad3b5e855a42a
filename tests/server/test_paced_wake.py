"""A round change wakes the waiting long-polls a chunk at a time (`wake_chunk`), each chunk once the
calls it woke have ended: over real gRPC every waiting client gets its task and the closed round's
delta, and the chunks follow the calls' ends, not the pacer's safety cap. Real SQLite."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from helpers.server_rpc import FakeClient, grads_for, running_server

from fedmezo.fl.replica import Replica
from fedmezo.server.signals import SETTLE_CAP_S
from fedmezo.v1 import federation_pb2 as fpb

STEPS = 4
CLIENTS = 12
CHUNK = 3


def test_waiting_polls_are_woken_in_chunks_and_all_get_the_next_task(
    tmp_path: Path, replica: Replica
) -> None:
    async def main() -> None:
        async with running_server(
            tmp_path, replica, rounds=2, local_steps=STEPS, min_clients=CLIENTS,
            clients_per_round=CLIENTS, wake_chunk=CHUNK, rate_limit_rps=0,
        ) as app:  # fmt: skip
            manifest = replica.manifest_sha256
            clients = [FakeClient(app.port, f"c{i:02d}", manifest=manifest) for i in range(CLIENTS)]
            for c in clients:
                await c.join()
            first = await asyncio.gather(*(c.get_task(0, 10.0) for c in clients))
            assert all(t.status == fpb.TASK_STATUS_ASSIGNED and t.task.round_id == 1 for t in first)
            *early, last = clients
            for c in early:
                await c.submit(1, grads_for(c.client_id, 1, STEPS))
            answered: dict[str, tuple[float, fpb.GetTaskResponse]] = {}

            async def poll(c: FakeClient) -> None:
                response = await c.get_task(0, 20.0, max_deltas=1)
                answered[c.client_id] = (time.perf_counter(), response)

            polls = [asyncio.create_task(poll(c)) for c in early]
            gate = app.coordinator.signals.round_changed()
            for _ in range(500):  # every early client's poll is waiting for the round to change
                if gate.waiting == len(early):
                    break
                await asyncio.sleep(0.01)
            assert gate.waiting == len(early)
            await last.submit(1, grads_for(last.client_id, 1, STEPS))  # round 1 closes, round 2 opens
            await asyncio.wait_for(asyncio.gather(*polls), 30.0)
            assert gate.is_set() and gate.waiting == 0
            for _, response in answered.values():
                assert response.status == fpb.TASK_STATUS_ASSIGNED and response.task.round_id == 2
                assert [d.round_id for d in response.deltas] == [1]
            # 11 polls in chunks of 3: 4 chunks. Had a chunk waited for the cap instead of its calls'
            # ends, the last chunk would come >= 3 x (cap + rest) after the first.
            times = sorted(t for t, _ in answered.values())
            assert times[-1] - times[0] < 4 * SETTLE_CAP_S
            for c in clients:
                await c.close()

    asyncio.run(main())
