"""Limits that keep one hostile client from exhausting the server, over real loopback gRPC: a token
bucket per client, a cap on the long-polls/streams it holds, on distinct client ids and on field sizes;
every refusal is RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a `fedmezo-reason`, and changes nothing."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.server_rpc import FakeClient, rpc_code, running_server

from fedmezo.fl.errors import ConfigError, RateLimited, TooManyStreams
from fedmezo.fl.replica import Replica
from fedmezo.server.config import ServerConfig
from fedmezo.server.limits import PRUNE_MIN_KEYS, RateLimiter, StreamSlots
from fedmezo.server.servicer import REASON_METADATA_KEY
from fedmezo.v1 import federation_pb2 as fpb

STEPS = 4  # tests/server/conftest.py make_config: local_steps=4


async def _refusal(call: Any) -> tuple[grpc.StatusCode, str, str]:
    """(code, fedmezo-reason, details) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    trailing = dict(info.value.trailing_metadata() or ())
    return rpc_code(info.value), str(trailing.get(REASON_METADATA_KEY, "")), info.value.details() or ""


async def _joined(app: Any, *ids: str) -> list[FakeClient]:
    clients = [FakeClient(app.port, cid, manifest=app.coordinator.replica.manifest_sha256) for cid in ids]
    for c in clients:
        await c.join()
    return clients


def _heartbeat(c: FakeClient) -> Any:
    return c.fed.Heartbeat(fpb.HeartbeatRequest(client_id=c.client_id), **c.kw())


# --- rate limit ----------------------------------------------------------------------------------------
def test_rate_limit_is_per_client_and_refills(tmp_path: Path, replica: Replica) -> None:
    rate, burst = 2.0, 10

    async def main() -> None:
        async with running_server(tmp_path, replica, rate_limit_rps=rate, rate_limit_burst=burst) as app:
            started = time.monotonic()
            greedy, calm = await _joined(app, "greedy", "calm")  # a Join costs one token too
            served = 1
            while True:
                try:
                    await _heartbeat(greedy)
                except grpc.aio.AioRpcError as exc:
                    assert rpc_code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert dict(exc.trailing_metadata() or ())[REASON_METADATA_KEY] == "rate_limited"
                    assert "retry in" in (exc.details() or "")
                    break
                served += 1
                assert served <= burst + rate * (time.monotonic() - started) + 1, "the bucket never ran dry"
            assert served >= burst
            await _heartbeat(calm)  # its own bucket: untouched by the greedy client
            await asyncio.sleep(1.1 / rate)  # one token back
            await _heartbeat(greedy)
            for c in (greedy, calm):
                await c.close()

    asyncio.run(main())


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(RateLimited):
        limiter.admit("a")
    limiter.admit("b")  # another key, another bucket
    now[0] += 0.5  # 2/s: one token back
    limiter.admit("a")
    with pytest.raises(RateLimited):
        limiter.admit("a")
    off = RateLimiter(rate=0.0, burst=1)
    for _ in range(1000):
        off.admit("a")
    assert len(off) == 0


def test_rate_limiter_memory_stays_bounded_under_a_flood_of_ids() -> None:
    """Invented ids cannot grow the bucket table without bound: refilled buckets are dropped."""
    now = [0.0]
    limiter = RateLimiter(rate=100.0, burst=10, clock=lambda: now[0])  # full again after 0.1 s
    for i in range(100_000):
        now[0] += 0.001
        limiter.admit(f"id-{i}")
    assert len(limiter) <= PRUNE_MIN_KEYS


# --- long-polls and streams per client -----------------------------------------------------------------
def test_stream_slots_per_client(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        # min_clients=3 and two clients: no round opens, so every GetTask waits out its wait_s.
        async with running_server(tmp_path, replica, max_streams_per_client=2, max_wait_s=1.5) as app:
            hog, other = await _joined(app, "hog", "other")
            polls = [asyncio.ensure_future(hog.get_task(0, wait_s=1.5)) for _ in range(2)]
            await asyncio.sleep(0.3)  # both are waiting on the server now
            assert app.coordinator.live["hog"].polls == 2
            req = fpb.StreamRoundDeltasRequest(client_id="hog", from_round=1, follow=True)
            code, reason, details = await _refusal(_collect(hog.fed.StreamRoundDeltas(req, **hog.kw())))
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_streams"), details
            code, reason, _ = await _refusal(hog.get_task(0, wait_s=0.1))
            assert reason == "too_many_streams"
            assert (await other.get_task(0, wait_s=0.1)).status == fpb.TASK_STATUS_NO_TASK  # own slots
            for poll in polls:
                assert (await poll).status == fpb.TASK_STATUS_NO_TASK
            assert (await hog.get_task(0, wait_s=0.1)).status == fpb.TASK_STATUS_NO_TASK  # slots freed
            for c in (hog, other):
                await c.close()

    asyncio.run(main())


async def _collect(stream: Any) -> list[Any]:
    return [m async for m in stream]


def test_stream_slots_release_on_error() -> None:
    slots = StreamSlots(limit=1)
    with pytest.raises(RuntimeError), slots.hold("a"):
        raise RuntimeError("the stream failed")
    assert slots.held("a") == 0
    with slots.hold("a"):
        with pytest.raises(TooManyStreams), slots.hold("a"):
            pass
        with slots.hold("b"):
            assert slots.held("b") == 1


# --- distinct client ids -------------------------------------------------------------------------------
def test_max_clients_refuses_new_ids_also_after_a_restart(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica, max_clients=3) as app:
            clients = await _joined(app, "c0", "c1", "c2")
            late = FakeClient(app.port, "c3", manifest=replica.manifest_sha256)
            code, reason, _ = await _refusal(late.join())
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_clients")
            await clients[0].join()  # a known client may always re-join
            assert [c.client_id for c in app.coordinator.store.list_clients()] == ["c0", "c1", "c2"]
            for c in (*clients, late):
                await c.close()
        async with running_server(tmp_path, replica, max_clients=3) as app:
            late = FakeClient(app.port, "c3", manifest=replica.manifest_sha256)
            assert (await _refusal(late.join()))[1] == "too_many_clients"  # counted from the store
            await late.close()

    asyncio.run(main())


# --- field sizes -----------------------------------------------------------------------------------------
OVERSIZED_JOINS: list[tuple[str, dict[str, Any], str]] = [
    ("a 300-character device", {"device": "x" * 300}, "invalid_request"),
    ("a 300-character client version", {"client_version": "v" * 300}, "invalid_request"),
    ("num_examples above 2^63 - 1", {"num_examples": 2**63}, "invalid_request"),
    ("a 200-character client id", {"client_id": "c" * 200}, "invalid_request"),
    ("a client id with a newline", {"client_id": "c0\nforged log line"}, "invalid_request"),
]


@pytest.mark.parametrize(("case", "fields", "reason"), OVERSIZED_JOINS, ids=[c[0] for c in OVERSIZED_JOINS])
def test_oversized_join_fields(
    tmp_path: Path, replica: Replica, case: str, fields: dict[str, Any], reason: str
) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica) as app:
            c = FakeClient(app.port, fields.pop("client_id", "c0"), manifest=replica.manifest_sha256)
            code, got, _ = await _refusal(c.join(**fields))
            assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason), case
            assert app.coordinator.store.list_clients() == []
            await c.close()

    asyncio.run(main())


def test_oversized_updates_are_refused_before_they_are_copied(tmp_path: Path, replica: Replica) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica) as app:
            clients = await _joined(app, "c0", "c1", "c2")
            task = await clients[0].get_task(0, 5.0)
            assert task.status == fpb.TASK_STATUS_ASSIGNED
            r = task.task.round_id
            # 1,000,000 scalars: 4 MB, just under the 4 MiB receive limit, for a 4-step task.
            started = time.monotonic()
            code, reason, details = await _refusal(clients[0].submit(r, [0.5] * 1_000_000))
            assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_update")
            assert f"at most {STEPS} local steps" in details
            assert time.monotonic() - started < 5.0
            code, reason, _ = await _refusal(clients[0].submit(r, [0.5] * STEPS, [1.0] * (STEPS + 1)))
            assert reason == "invalid_update"
            code, reason, _ = await _refusal(clients[0].submit(r, [0.5] * STEPS, device="d" * 300))
            assert reason == "invalid_request"
            # Over 4 MiB: grpc refuses the message before our code sees it.
            code, _, _ = await _refusal(clients[0].submit(r, [0.5] * 1_100_000))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert app.coordinator.store.list_updates(r) == []
            await clients[0].submit(r, [0.5] * STEPS, [1.0] * STEPS)  # the well-formed one still goes in
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_health_watch_still_streams_through_the_decode_interceptor(tmp_path: Path, replica: Replica) -> None:
    """The interceptor wraps every unary-request handler, the health service's writer-style Watch too."""

    async def main() -> None:
        async with running_server(tmp_path, replica) as app:
            c = FakeClient(app.port, "c0")
            watch = health_pb2_grpc.HealthStub(c.channel).Watch(health_pb2.HealthCheckRequest(service=""))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            await c.close()

    asyncio.run(main())


# --- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"rate_limit_rps": -1.0},
        {"rate_limit_rps": math.nan},
        {"rate_limit_burst": 0},
        {"max_streams_per_client": 0},
        {"max_clients": 0},
        {"status_readers": "dashboard"},  # names token identities: needs a tokens file
    ],
)
def test_invalid_limits_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**{"insecure": True, **bad}).validate()  # type: ignore[arg-type]


def test_default_limits_leave_room_for_a_normal_client() -> None:
    """A client makes ~5 requests per round plus a heartbeat every 5 s, and holds at most 2 streams."""
    config = ServerConfig(insecure=True)
    assert config.rate_limit_rps >= 10 and config.rate_limit_burst >= 100
    assert config.max_streams_per_client >= 4
    assert ServerConfig(insecure=True, tokens="t", status_readers=" dash , ops,").status_reader_ids == {
        "dash",
        "ops",
    }
