"""A server killed with SIGKILL mid-round resumes from its state dir: accepted updates of the open
round are kept, closed rounds are intact, and the run completes. Real processes, real sockets."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from helpers.processes import free_port, spawn, wait_until_serving
from helpers.run_settings import PROTOCOL_RUN_FLAGS
from helpers.server_rpc import FakeClient, apply_wire_delta, grads_for

from fedmezo.fl.replica import Replica
from fedmezo.server.sqlite_store import SqliteStore
from fedmezo.v1 import federation_pb2 as fpb

STEPS = 4


def _start(state_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [
        "server", "--model", "tiny-random", "--rounds", "3", "--clients-per-round", "3", "--min-clients", "3",
        "--local-steps", str(STEPS), "--port", str(port), "--host", "127.0.0.1",
        "--state-dir", str(state_dir), "--insecure", "--lr", "1e-3", *PROTOCOL_RUN_FLAGS,
    ]  # fmt: skip
    proc = spawn(args, log)
    wait_until_serving(proc, port, log)
    return proc


def test_sigkill_mid_round_resumes(tmp_path: Path) -> None:
    port, state, log = free_port(), tmp_path / "state", tmp_path / "server.log"
    replica = Replica.load("tiny-random")  # the test's own client-side replica
    manifest = replica.manifest_sha256
    ids = ["c0", "c1", "c2"]

    async def round_one_and_half() -> None:
        clients = [FakeClient(port, c, manifest=manifest) for c in ids]
        for c in clients:
            await c.join()
        tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
        for c, t in zip(clients, tasks):
            assert t.task.round_id == 1
            await c.submit(1, grads_for(c.client_id, 1, STEPS), [3.0] * STEPS)
        apply_wire_delta(replica, await clients[0].wait_delta(1), run_seed=0)
        tasks = await asyncio.gather(*(c.get_task(1, 5.0) for c in clients))
        assert all(t.task.round_id == 2 for t in tasks)
        await clients[0].submit(2, grads_for("c0", 2, STEPS), [2.0] * STEPS)  # acknowledged, then SIGKILL
        for c in clients:
            await c.close()

    async def finish() -> None:
        clients = [FakeClient(port, c, manifest=manifest) for c in ids]
        for c in clients:
            joined = await c.join(model_version=1)
            assert joined.rounds_completed == 1
        # c0 already answered round 2 before the kill: no task for it, and a resend is idempotent
        assert (await clients[0].get_task(1, 0.3)).status == fpb.TASK_STATUS_NO_TASK
        assert (await clients[0].submit(2, grads_for("c0", 2, STEPS), [2.0] * STEPS)).round_id == 2
        for r in (2, 3):
            pending = clients[1:] if r == 2 else clients
            tasks = await asyncio.gather(*(c.get_task(r - 1, 5.0) for c in pending))
            for c, t in zip(pending, tasks):
                assert t.status == fpb.TASK_STATUS_ASSIGNED and t.task.round_id == r
                await c.submit(r, grads_for(c.client_id, r, STEPS), [2.0] * STEPS)
            msg = await clients[0].wait_delta(r)
            apply_wire_delta(replica, msg, run_seed=0)
            assert msg.fingerprint == replica.fingerprint()
            for c in clients:
                assert (await c.report(r, replica.fingerprint())).in_sync
        assert (await clients[0].get_task(3, 1.0)).status == fpb.TASK_STATUS_RUN_FINISHED
        for c in clients:
            await c.close()

    proc = _start(state, port, log)
    try:
        asyncio.run(round_one_and_half())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        store = SqliteStore(state / "state.sqlite", read_only=True)
        round1 = store.list_updates(1)
        assert [u.client_id for u in store.list_updates(2)] == ["c0"]
        store.close()
        proc = _start(state, port, log)
        asyncio.run(finish())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    store = SqliteStore(state / "state.sqlite", read_only=True)
    assert store.list_updates(1) == round1  # round 1's accepted updates are intact
    assert [u.client_id for u in store.list_updates(2)] == ids
    assert store.rounds_completed() == 3
    assert store.get_round(3).fingerprint == replica.fingerprint()  # type: ignore[union-attr]
    kinds = [e.kind for e in store.list_events()]
    assert kinds.count("run_resumed") == 1
    store.close()
