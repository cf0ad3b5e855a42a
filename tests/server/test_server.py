"""The server over real loopback gRPC: rounds, deltas, fingerprints, refusals (code + no state change)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.server_rpc import FakeClient, FakeClock, apply_wire_delta, grads_for, rpc_code, running_server

from fedmezo.fl.replica import Replica
from fedmezo.server.app import ServerApp
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import status_pb2

STEPS = 4


async def _clients(app: ServerApp, n: int = 3, tokens: dict[str, str] | None = None) -> list[FakeClient]:
    manifest = app.coordinator.replica.manifest_sha256
    clients = [
        FakeClient(app.port, f"c{i}", (tokens or {}).get(f"c{i}"), manifest=manifest) for i in range(n)
    ]
    for c in clients:
        await c.join(num_examples=10 + 10 * int(c.client_id[1:]))
    return clients


async def _play_round(app: ServerApp, clients: list[FakeClient], version: int) -> list[fpb.GetTaskResponse]:
    tasks = await asyncio.gather(*(c.get_task(version, 5.0) for c in clients))
    for c, t in zip(clients, tasks):
        if t.status == fpb.TASK_STATUS_ASSIGNED:
            await c.submit(t.task.round_id, grads_for(c.client_id, t.task.round_id, STEPS), [2.0] * STEPS)
    return list(tasks)


def _state(app: ServerApp) -> str:
    """Everything a refused request must leave untouched."""
    s = app.coordinator.store
    rounds = s.list_rounds()
    return repr(
        (
            rounds,
            [s.list_updates(r.round_id) for r in rounds],
            s.list_clients(),
            s.latest_fingerprints(),
            app.coordinator.replica.fingerprint(),
            [e.kind for e in s.list_events()],
        )
    )


def test_three_rounds_every_replica_in_sync(tmp_path: Path, replica: Replica, _tiny: Any) -> None:
    client_replica = Replica.load("tiny-random")  # a separate replica, as a real client would have

    async def main() -> None:
        async with running_server(tmp_path, replica, rounds=3) as app:
            clients = await _clients(app)
            for r in range(1, 4):
                tasks = await _play_round(app, clients, r - 1)
                assert all(t.status == fpb.TASK_STATUS_ASSIGNED and t.task.round_id == r for t in tasks)
                assert tasks[0].task.run_seed == 0 and tasks[0].task.local_steps == STEPS
                msg = await clients[0].wait_delta(r)
                apply_wire_delta(client_replica, msg, run_seed=0)
                assert (
                    client_replica.fingerprint() == msg.fingerprint == app.coordinator.replica.fingerprint()
                )
                for c in clients:
                    assert (await c.report(r, client_replica.fingerprint())).in_sync
            final = await clients[0].get_task(3, 1.0)
            assert final.status == fpb.TASK_STATUS_RUN_FINISHED and final.rounds_completed == 3
            rounds = (await clients[0].status.ListRounds(status_pb2.ListRoundsRequest())).rounds
            assert [r.round_id for r in rounds] == [1, 2, 3]
            assert all(r.state == status_pb2.ROUND_STATE_CLOSED and r.mean_loss == 2.0 for r in rounds)
            assert all(r.num_seeds == 3 * STEPS for r in rounds)
            # weights by example count: 10, 20, 30
            weights = [c.weight for c in rounds[0].clients]
            assert weights == pytest.approx([1 / 6, 2 / 6, 3 / 6])
            listed = (await clients[0].status.ListClients(status_pb2.ListClientsRequest())).clients
            assert all(c.in_sync and c.fingerprint_version == 3 for c in listed)
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_wait_for_min_clients_and_deterministic_sampling(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica, min_clients=3, clients_per_round=2) as app:
            clients = await _clients(app, 2)
            assert (await clients[0].get_task(0, 0.3)).status == fpb.TASK_STATUS_NO_TASK
            assert app.coordinator.store.open_round_record() is None
            clients += await _clients_extra(app, ["c2"])
            tasks = await asyncio.gather(*(c.get_task(0, 0.5) for c in clients))
            assigned = sorted(
                c.client_id for c, t in zip(clients, tasks) if t.status == fpb.TASK_STATUS_ASSIGNED
            )
            from fedmezo.fl.selection import sample_clients

            assert assigned == list(sample_clients(["c0", "c1", "c2"], 2, 0, 1))
            for c in clients:
                await c.close()

    asyncio.run(main())


async def _clients_extra(app: ServerApp, ids: list[str]) -> list[FakeClient]:
    out = []
    for cid in ids:
        c = FakeClient(app.port, cid, manifest=app.coordinator.replica.manifest_sha256)
        await c.join()
        out.append(c)
    return out


BAD_SUBMITS: list[tuple[str, dict[str, Any], grpc.StatusCode]] = [
    ("nan", {"grads": [float("nan")] + [0.0] * (STEPS - 1)}, grpc.StatusCode.INVALID_ARGUMENT),
    ("inf", {"grads": [float("inf")] * STEPS}, grpc.StatusCode.INVALID_ARGUMENT),
    ("inf loss", {"losses": [float("-inf")] * STEPS}, grpc.StatusCode.INVALID_ARGUMENT),
    ("too few scalars", {"grads": [0.5] * (STEPS - 1)}, grpc.StatusCode.INVALID_ARGUMENT),
    ("too many scalars", {"grads": [0.5] * (STEPS + 1)}, grpc.StatusCode.INVALID_ARGUMENT),
    ("future round", {"round_id": 2}, grpc.StatusCode.OUT_OF_RANGE),
    ("unknown round", {"round_id": 99}, grpc.StatusCode.OUT_OF_RANGE),
    ("other client's id", {"client_id": "c1"}, grpc.StatusCode.PERMISSION_DENIED),
    ("missing token", {"token": None}, grpc.StatusCode.UNAUTHENTICATED),
    ("invalid token", {"token": "nope"}, grpc.StatusCode.UNAUTHENTICATED),
    ("oversized", {"grads": [0.5] * (1_200_000)}, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def test_bad_submissions_refused_without_state_change(tmp_path: Path, replica: Replica) -> None:
    tokens = {"c0": "t0", "c1": "t1", "c2": "t2"}
    (tmp_path / "tokens").write_text("".join(f"{c}:{t}\n" for c, t in tokens.items()))

    async def main() -> None:
        async with running_server(tmp_path, replica, tokens=str(tmp_path / "tokens")) as app:
            clients = await _clients(app, tokens=tokens)
            tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
            assert all(t.status == fpb.TASK_STATUS_ASSIGNED for t in tasks)
            c0 = clients[0]
            before = _state(app)
            for name, case, code in BAD_SUBMITS:
                case = dict(case)
                sender = FakeClient(app.port, "c0", case.pop("token")) if "token" in case else c0
                grads = case.pop("grads", [0.5] * STEPS)
                losses = case.pop("losses", [])
                round_id = case.pop("round_id", 1)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await sender.submit(round_id, grads, losses, **case)
                assert rpc_code(info.value) == code, name
                assert _state(app) == before, name
                if sender is not c0:
                    await sender.close()
            # the honest update still goes through, and a retransmission is idempotent
            first = await c0.submit(1, [0.5] * STEPS)
            again = await c0.submit(1, [0.5] * STEPS)
            assert first == again and first.status == fpb.UPDATE_STATUS_ACCEPTED
            after_ok = _state(app)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c0.submit(1, [0.25] * STEPS)  # a different answer for the same round
            assert rpc_code(info.value) == grpc.StatusCode.ALREADY_EXISTS
            assert _state(app) == after_ok
            # close round 1, then a late update from nobody-selected / late client
            for c in clients[1:]:
                await c.submit(1, [0.5] * STEPS)
            await asyncio.sleep(0.1)
            await app.coordinator.idle()
            assert app.coordinator.rounds_completed == 1
            assert (await c0.submit(1, [0.5] * STEPS)).round_id == 1  # still idempotent after close
            late = FakeClient(app.port, "c2", "t2")
            closed_state = _state(app)
            # wrong fingerprint length, fingerprint for a version that does not exist
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await late.report(1, b"short")
            assert rpc_code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await late.report(7, b"x" * 32)
            assert rpc_code(info.value) == grpc.StatusCode.OUT_OF_RANGE
            assert _state(app) == closed_state
            await late.close()
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_late_update_and_not_selected(tmp_path: Path, replica: Replica) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with running_server(
            tmp_path, replica, clock=clock, min_clients=3, clients_per_round=3, quorum=0.5, deadline_s=30.0
        ) as app:
            clients = await _clients(app)
            await asyncio.gather(*(c.get_task(0, 1.0) for c in clients))
            await clients[0].submit(1, [0.5] * STEPS)
            await clients[1].submit(1, [0.5] * STEPS)
            clock.advance(31.0)  # deadline passes with 2/3 >= quorum: the round closes
            await app.coordinator.tick()
            await app.coordinator.idle()
            assert app.coordinator.rounds_completed == 1
            before = _state(app)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await clients[2].submit(1, [0.5] * STEPS)
            assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
            assert _state(app) == before
            rounds = (await clients[0].status.ListRounds(status_pb2.ListRoundsRequest())).rounds
            assert [c.submitted for c in rounds[0].clients] == [True, True, False]
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_deadline_without_quorum_extends_then_aborts(tmp_path: Path, replica: Replica) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with running_server(
            tmp_path, replica, clock=clock, min_clients=2, clients_per_round=2, quorum=1.0,
            deadline_s=10.0, max_extensions=1, heartbeat_timeout_s=1e9,
        ) as app:  # fmt: skip
            clients = await _clients(app, 2)
            await asyncio.gather(*(c.get_task(0, 1.0) for c in clients))
            await clients[0].submit(1, [0.5] * STEPS)
            fp0 = app.coordinator.replica.fingerprint()
            clock.advance(11.0)
            await app.coordinator.tick()
            rec = app.coordinator.store.get_round(1)
            assert rec is not None and rec.extensions == 1 and rec.state.value == "open"
            clock.advance(11.0)
            await app.coordinator.tick()
            await app.coordinator.idle()
            rec = app.coordinator.store.get_round(1)
            assert rec is not None and rec.state.value == "aborted"
            assert app.coordinator.replica.fingerprint() == fp0  # an aborted round moves nothing
            kinds = [e.kind for e in app.coordinator.store.list_events()]
            assert "round_extended" in kinds and "round_aborted" in kinds
            (msg,) = await clients[0].deltas(1)
            assert list(msg.coefficients) == [] and msg.fingerprint == fp0
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_join_refusals_and_resync(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica, min_clients=1, clients_per_round=1, rounds=1) as app:
            bad = FakeClient(app.port, "x", manifest=b"\x00" * 32)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await bad.join()
            assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await bad.join(manifest_sha256=replica.manifest_sha256, rng_spec="other-rng")
            assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await bad.get_task(0, 0.1)
            assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION  # not joined
            assert app.coordinator.store.list_clients() == []
            await bad.close()
            (c,) = await _clients(app, 1)
            joined = await c.join()
            assert joined.config.model == "tiny-random" and joined.config.local_steps == STEPS
            assert joined.fingerprint == replica.fingerprint() and joined.checkpoint_round == 0
            resp = await c.report(0, b"\x01" * 32)
            assert not resp.in_sync and resp.action == fpb.SYNC_ACTION_RESYNC
            kinds = [e.kind for e in app.coordinator.store.list_events()]
            assert "fingerprint_mismatch" in kinds
            # resync: the checkpoint download reassembles to the advertised sha256
            chunks = [
                m async for m in c.fed.DownloadCheckpoint(fpb.DownloadCheckpointRequest(client_id="c0"))
            ]
            data = b"".join(m.data for m in chunks)
            assert len(data) == chunks[0].total_size and hashlib.sha256(data).digest() == chunks[0].sha256
            assert chunks[0].fingerprint == replica.fingerprint()
            assert (await c.report(0, replica.fingerprint())).in_sync
            await c.close()

    asyncio.run(main())


def test_health_and_status_auth(tmp_path: Path, replica: Replica) -> None:
    (tmp_path / "tokens").write_text("c0:t0\n")

    async def main() -> None:
        async with running_server(tmp_path, replica, tokens=str(tmp_path / "tokens")) as app:
            c = FakeClient(app.port, "c0")
            health = health_pb2_grpc.HealthStub(c.channel)
            resp = await health.Check(health_pb2.HealthCheckRequest(service="fedmezo.v1.FederationService"))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.status.GetStatus(status_pb2.GetStatusRequest())
            assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
            authed = FakeClient(app.port, "c0", "t0")
            status = await authed.status.GetStatus(status_pb2.GetStatusRequest(), **authed.kw())
            assert status.total_rounds == 3 and status.fingerprint == replica.fingerprint()
            await c.close()
            await authed.close()

    asyncio.run(main())


def test_poll_brings_deltas_and_judges_fingerprints(tmp_path: Path, replica: Replica) -> None:
    """The two-call round: GetTask(max_deltas, fingerprint) waits for the next task and brings the rounds
    closed meanwhile; SubmitUpdate's base fingerprint is judged, and a wrong one refuses the update."""

    async def main() -> None:
        async with running_server(tmp_path, replica, rounds=3) as app:
            clients = await _clients(app)
            fp0 = replica.fingerprint()
            lean = {"max_deltas": 16}
            polls = await asyncio.gather(*(c.get_task(0, 5.0, fingerprint=fp0, **lean) for c in clients))
            assert all(p.status == fpb.TASK_STATUS_ASSIGNED and p.task.round_id == 1 for p in polls)
            assert all(p.sync_action == fpb.SYNC_ACTION_NONE and not p.deltas for p in polls)
            c0, c1, c2 = clients
            before = _state(app)
            with pytest.raises(grpc.aio.AioRpcError) as info:  # trained from a θ that is not θ_0
                await c0.submit(1, grads_for("c0", 1, STEPS), base_fingerprint=b"\x01" * 32)
            assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
            assert dict(info.value.trailing_metadata() or ())["fedmezo-reason"] == "diverged"
            assert _state(app) == before  # a refusal: neither the update nor the report is stored
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c0.submit(1, grads_for("c0", 1, STEPS), base_fingerprint=b"short")
            assert rpc_code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
            assert _state(app) == before
            # the honest round: each poll waits past round 1's close for round 2's task, delta included
            for c in clients:
                await c.submit(1, grads_for(c.client_id, 1, STEPS), base_fingerprint=fp0)
            polls = await asyncio.gather(*(c.get_task(0, 5.0, **lean) for c in clients))
            assert all(p.status == fpb.TASK_STATUS_ASSIGNED and p.task.round_id == 2 for p in polls)
            assert all([d.round_id for d in p.deltas] == [1] for p in polls)
            fp1 = app.coordinator.replica.fingerprint()
            assert polls[0].deltas[0].fingerprint == fp1
            assert polls[0].sync_action == fpb.SYNC_ACTION_UNSPECIFIED  # no fingerprint was sent
            wrong = await c2.get_task(1, 1.0, fingerprint=b"\x02" * 32, **lean)
            assert wrong.sync_action == fpb.SYNC_ACTION_RESYNC and wrong.task.round_id == 2
            for c in (c0, c1):
                await c.submit(2, grads_for(c.client_id, 2, STEPS), base_fingerprint=fp1)
            await c2.submit(2, grads_for("c2", 2, STEPS))
            await c2.wait_delta(2)
            # a client two rounds behind with max_deltas = 1 is answered at once, without deltas
            behind = await c0.get_task(0, 5.0, max_deltas=1)
            assert behind.rounds_completed == 2 and not behind.deltas  # (round 3 may not be open yet)
            # the classic poll (max_deltas = 0) still answers as soon as the version moved, no deltas
            classic = await c1.get_task(1, 5.0)
            assert classic.rounds_completed == 2 and not classic.deltas
            for c in clients:
                await c.submit(3, grads_for(c.client_id, 3, STEPS))
            final = await c0.get_task(2, 5.0, **lean)
            assert final.status == fpb.TASK_STATUS_RUN_FINISHED and [d.round_id for d in final.deltas] == [3]
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_a_large_rounds_event_names_a_few_clients_and_the_count(tmp_path: Path, replica: Replica) -> None:
    """The event (and log line) of a round opening stays short at any number of clients; who was
    selected is in the round's record."""

    async def main() -> None:
        async with running_server(tmp_path, replica, min_clients=12, clients_per_round=12) as app:
            clients = await _clients(app, 12)
            await asyncio.gather(*(c.get_task(0, 1.0) for c in clients))
            (opened,) = [e for e in app.coordinator.store.list_events() if e.kind == "round_opened"]
            assert opened.message.startswith("selected c") and opened.message.endswith("... (12 clients)")
            assert opened.message.count(", ") == 8  # eight named, then the count
            rec = app.coordinator.store.get_round(1)
            assert rec is not None and len(rec.selected) == 12
            for c in clients:
                await c.close()

    asyncio.run(main())
