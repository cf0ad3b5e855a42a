"""Dashboard test harness: a fake StatusSource, a real fedmezo server on loopback that has finished a few
tiny-random rounds (fake clients speak the generated stubs, as in tests/server), and uvicorn in a thread.

Test directories have no __init__, so nothing here is imported by name: tests get it through fixtures.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import uvicorn
from dashboard_helpers import (
    LIVE_CLIENTS,
    LIVE_CLOSED_ROUNDS,
    LIVE_DEVICES,
    LIVE_EVAL_EXAMPLES,
    LIVE_INFERENCE_MEMORY,
    LIVE_PEAK_MEMORY,
    LIVE_STEPS,
    LIVE_TOTAL_ROUNDS,
    live_losses,
)
from fastapi import FastAPI

from fedmezo.dashboard.schemas import (
    ClientInfo,
    ClientRoundInfo,
    ClientsPage,
    Event,
    EventPage,
    RoundInfo,
    RunConfigInfo,
    ServerStatus,
)
from fedmezo.dashboard.source import SourceUnavailable

T = TypeVar("T")
RPC_TIMEOUT_S = 10.0
FAKE_PARAMS = 1_000_000  # trainable parameters of the fake run's model
NOW_MS = 1_700_000_000_000


# ---------------------------------------------------------------------------------------------------
# A fake StatusSource: three clients, two closed rounds and an open one, six events.
# ---------------------------------------------------------------------------------------------------
def _client_round(cid: str, loss: float | None, up: int = 300, down: int = 200) -> ClientRoundInfo:
    return ClientRoundInfo(
        client_id=cid,
        submitted=loss is not None,
        accepted=loss is not None and cid != "c-rejected",
        rejected_reason="outlier" if cid == "c-rejected" else "",
        lr=1e-3,
        weight=0.5 if loss is not None else 0.0,
        mean_loss=loss,
        losses=[loss] * 4 if loss is not None else [],
        step_time_s=0.1,
        peak_memory_bytes=9_000_000 if loss is not None else 0,
        device="cpu",
        bytes_up=up,
        bytes_down=down,
    )


def _round(rid: int, state: str, clients: list[ClientRoundInfo], mean: float | None, **kw: Any) -> RoundInfo:
    return RoundInfo(
        round_id=rid,
        state=state,
        opened_at_unix_ms=NOW_MS + rid * 10_000,
        closed_at_unix_ms=0 if state == "open" else NOW_MS + rid * 10_000 + 4_000,
        deadline_at_unix_ms=NOW_MS + rid * 10_000 + 60_000 if rid else 0,
        duration_s=4.0 if state != "open" else 1.0,
        mean_loss=mean,
        bytes_up=sum(c.bytes_up for c in clients),
        bytes_down=sum(c.bytes_down for c in clients),
        num_seeds=8,
        fingerprint="ab" * 32 if state != "open" else "",
        eval_metrics=kw.get("eval_metrics", {}),
        clients=clients,
        num_selected=len(clients),
        num_submitted=sum(c.submitted for c in clients),
    )


@dataclass
class FakeSource:
    """`StatusSource` with canned data; `down = True` makes every call raise SourceUnavailable.
    `event_script` (optional) is consumed one entry per `events()` call: an exception to raise or a
    list of events to return; after it runs out, `events()` returns nothing new."""

    address: str = "fake:50051"
    down: bool = False
    config: RunConfigInfo = field(
        default_factory=lambda: RunConfigInfo(
            run_id="run-fake",
            model="tiny-random",
            mode="full",
            lora_rank=0,
            total_rounds=5,
            local_steps=4,
            clients_per_round=3,
            client_fraction=0.0,
            min_clients=3,
            quorum_fraction=0.5,
            round_deadline_s=60.0,
            lr=1e-3,
            lr_spread=5e-4,
            lr_strategy="round-wise",
            eps=1e-3,
            batch_size=8,
            aggregation="examples",
            heartbeat_timeout_s=30.0,
            rng_spec="fedmezo-rng-v1",
            trainable_params=FAKE_PARAMS,
            model_weight_bytes=4 * FAKE_PARAMS,
        )
    )
    run_state: str = "round_open"
    rounds_list: list[RoundInfo] = field(
        default_factory=lambda: [
            _round(0, "closed", [], None, eval_metrics={"eval_loss": 3.1, "exact_match": 0.0}),
            _round(
                1,
                "closed",
                [_client_round("c-a", 2.5), _client_round("c-b", 2.7)],
                2.6,
                eval_metrics={"eval_loss": 2.9, "exact_match": 0.1},
            ),
            _round(
                2,
                "closed",
                [_client_round("c-a", 2.3), _client_round("c-rejected", 9.0), _client_round("c-b", 2.5)],
                2.4,
            ),
            _round(3, "open", [_client_round("c-a", None, 0, 50), _client_round("c-b", None, 0, 50)], None),
        ]
    )
    clients_list: list[ClientInfo] = field(
        default_factory=lambda: [
            ClientInfo(
                client_id=cid,
                online=cid != "c-rejected",
                activity="training",
                joined_at_unix_ms=NOW_MS,
                last_heartbeat_unix_ms=NOW_MS + 30_000,
                rounds_participated=2 if cid == "c-a" else 1,
                last_loss=loss,
                fingerprint="ab" * 32,
                fingerprint_version=2,
                in_sync=cid != "c-b",
                device="cuda:0" if cid == "c-a" else "cpu",
                peak_memory_bytes=9_000_000 + i,
                inference_peak_memory_bytes=5_000_000 if cid == "c-a" else 0,
                bytes_up=1000 + i,
                bytes_down=2000 + i,
                num_examples=10,
                model_version=2,
            )
            for i, (cid, loss) in enumerate((("c-a", 2.3), ("c-b", 2.5), ("c-rejected", None)))
        ]
    )
    events_list: list[Event] = field(
        default_factory=lambda: [
            Event(cursor=i + 1, time_unix_ms=NOW_MS + i, kind=kind, round_id=rid, client_id=cid, message="m")
            for i, (kind, rid, cid) in enumerate(
                [
                    ("client_joined", 0, "c-a"),
                    ("round_opened", 1, ""),
                    ("update_accepted", 1, "c-a"),
                    ("update_accepted", 1, "c-b"),
                    ("round_closed", 1, ""),
                    ("update_rejected", 2, "c-rejected"),
                ]
            )
        ]
    )
    event_script: list[BaseException | list[Event]] = field(default_factory=list)
    closed: bool = False

    def _check(self) -> None:
        if self.down:
            raise SourceUnavailable("UNAVAILABLE: connection refused")

    def run_config(self) -> RunConfigInfo:
        self._check()
        return self.config

    def status(self) -> ServerStatus:
        self._check()
        done = sum(r.state != "open" and r.round_id > 0 for r in self.rounds_list)
        open_ = [r.round_id for r in self.rounds_list if r.state == "open"]
        return ServerStatus(
            run_state=self.run_state,
            rounds_completed=done,
            current_round=open_[0] if open_ else 0,
            total_rounds=self.config.total_rounds,
            fingerprint="ab" * 32,
            clients_online=sum(c.online for c in self.clients_list),
            clients_total=len(self.clients_list),
            bytes_up=sum(r.bytes_up for r in self.rounds_list),
            bytes_down=sum(r.bytes_down for r in self.rounds_list),
            started_at_unix_ms=NOW_MS,
            last_event_cursor=self.events_list[-1].cursor if self.events_list else 0,
        )

    def rounds(self, from_round: int = 0, limit: int = 0, *, summary: bool = False) -> list[RoundInfo]:
        self._check()
        found = [r for r in self.rounds_list if r.round_id >= from_round]
        found = found[:limit] if limit else found
        return [r.model_copy(update={"clients": []}) for r in found] if summary else found

    def clients(self) -> list[ClientInfo]:
        self._check()
        return list(self.clients_list)

    def clients_page(self, after: str = "", limit: int = 0) -> ClientsPage:
        self._check()
        above = sorted((c for c in self.clients_list if c.client_id > after), key=lambda c: c.client_id)
        page = above[:limit] if limit else above
        more = limit and len(above) > limit
        return ClientsPage(clients=page, next_after=page[-1].client_id if more else "")

    def events(self, after_cursor: int, limit: int = 0) -> EventPage:
        self._check()
        if self.event_script:
            step = self.event_script.pop(0)
            if isinstance(step, BaseException):
                raise step
            self.events_list.extend(step)
        found = [e for e in self.events_list if e.cursor > after_cursor]
        found = found[:limit] if limit else found
        return EventPage(events=found, next_cursor=found[-1].cursor if found else after_cursor)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_source() -> FakeSource:
    return FakeSource()


# ---------------------------------------------------------------------------------------------------
# A real server on loopback that has closed three tiny-random rounds; round 4 of 5 is open.
# ---------------------------------------------------------------------------------------------------
class _Client:
    """Minimal fake client over a real channel (generated stubs only), copied from tests/server."""

    def __init__(self, port: int, client_id: str, manifest: bytes) -> None:
        from fedmezo.v1 import federation_pb2_grpc

        self.client_id = client_id
        self.manifest = manifest
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.fed = federation_pb2_grpc.FederationServiceStub(self.channel)

    async def join(self) -> None:
        from fedmezo.v1 import federation_pb2 as fpb
        from fedmezo.zo import RNG_SPEC

        req = fpb.JoinRequest(
            client_id=self.client_id,
            manifest_sha256=self.manifest,
            rng_spec=RNG_SPEC,
            num_examples=10,
            device=LIVE_DEVICES.get(self.client_id, "cpu"),
            inference_peak_memory_bytes=LIVE_INFERENCE_MEMORY.get(self.client_id, 0),
        )
        await self.fed.Join(req, timeout=RPC_TIMEOUT_S)

    async def train_round(self, round_id: int) -> None:
        from fedmezo.v1 import federation_pb2 as fpb

        task = await self.fed.GetTask(
            fpb.GetTaskRequest(client_id=self.client_id, known_version=round_id - 1, wait_s=5.0),
            timeout=RPC_TIMEOUT_S,
        )
        assert task.task.round_id == round_id, task
        hb = fpb.HeartbeatRequest(
            client_id=self.client_id,
            model_version=round_id - 1,
            activity=fpb.CLIENT_ACTIVITY_TRAINING,
            round_id=round_id,
            step=LIVE_STEPS,
        )
        await self.fed.Heartbeat(hb, timeout=RPC_TIMEOUT_S)
        rng = np.random.default_rng(LIVE_CLIENTS.index(self.client_id) * 1000 + round_id)
        req = fpb.SubmitUpdateRequest(
            client_id=self.client_id,
            round_id=round_id,
            projected_grads=[float(x) for x in rng.standard_normal(LIVE_STEPS).astype(np.float32)],
            losses=live_losses(self.client_id, round_id),
            step_time_s=0.05,
            peak_memory_bytes=LIVE_PEAK_MEMORY[self.client_id],
            device=LIVE_DEVICES[self.client_id],
        )
        await self.fed.SubmitUpdate(req, timeout=RPC_TIMEOUT_S)

    async def sync(self, round_id: int) -> None:
        from fedmezo.v1 import federation_pb2 as fpb

        req = fpb.StreamRoundDeltasRequest(client_id=self.client_id, from_round=round_id, follow=True)
        call = self.fed.StreamRoundDeltas(req, timeout=RPC_TIMEOUT_S)
        async for msg in call:
            if msg.round_id == round_id:
                call.cancel()
                report = fpb.ReportFingerprintRequest(
                    client_id=self.client_id, model_version=round_id, fingerprint=msg.fingerprint
                )
                await self.fed.ReportFingerprint(report, timeout=RPC_TIMEOUT_S)
                return
        raise AssertionError(f"stream ended before round {round_id}")


@dataclass
class LiveRun:
    """A running server (in its own thread and event loop) and what its fake clients reported."""

    port: int
    fingerprint: str
    loop: asyncio.AbstractEventLoop
    app: Any
    manifest: bytes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def join_client(self, client_id: str) -> None:
        """A new client joins (a `client_joined` event for live-update tests)."""

        async def join() -> None:
            client = _Client(self.port, client_id, self.manifest)
            await client.join()
            await client.channel.close()

        self.call(join())


async def _start_live_run(state_dir: Path) -> LiveRun:
    from helpers.run_settings import PROTOCOL_RUN

    from fedmezo.data import generate_demo_dataset, write_jsonl
    from fedmezo.fl.replica import Replica
    from fedmezo.server.app import build_app
    from fedmezo.server.config import ServerConfig

    eval_path = state_dir.parent / "eval.jsonl"
    write_jsonl(eval_path, generate_demo_dataset(seed=0)[1][:LIVE_EVAL_EXAMPLES])
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        insecure=True,
        state_dir=str(state_dir),
        rounds=LIVE_TOTAL_ROUNDS,
        local_steps=LIVE_STEPS,
        min_clients=3,
        clients_per_round=3,
        lr=1e-3,
        lr_spread=5e-4,
        lr_strategy="round-wise",
        deadline_s=600.0,
        heartbeat_timeout_s=3600.0,
        eval_data=str(eval_path),
        eval_limit=LIVE_EVAL_EXAMPLES,
        eval_max_new_tokens=4,
        **PROTOCOL_RUN,  # type: ignore[arg-type]
    ).validate()
    replica = await asyncio.to_thread(Replica.load, "tiny-random")
    app = build_app(config, replica=replica)
    await app.start()
    clients = [_Client(app.port, cid, replica.manifest_sha256) for cid in LIVE_CLIENTS]
    for c in clients:
        await c.join()
    for r in range(1, LIVE_CLOSED_ROUNDS + 1):
        await asyncio.gather(*(c.train_round(r) for c in clients))
        await asyncio.gather(*(c.sync(r) for c in clients))
    await app.coordinator.idle()
    for c in clients:
        await c.channel.close()
    loop = asyncio.get_running_loop()
    return LiveRun(app.port, replica.fingerprint().hex(), loop, app, replica.manifest_sha256)


@pytest.fixture(scope="session")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fedmezo-server", daemon=True)
    thread.start()
    state_dir = tmp_path_factory.mktemp("live") / "state"
    run = asyncio.run_coroutine_threadsafe(_start_live_run(state_dir), loop).result(timeout=120)
    try:
        yield run
    finally:
        run.call(run.app.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture
def live_source(live_run: LiveRun) -> Iterator[Any]:
    from fedmezo.dashboard.source import GrpcStatusSource

    source = GrpcStatusSource(grpc.insecure_channel(live_run.address), live_run.address)
    yield source
    source.close()


# ---------------------------------------------------------------------------------------------------
# uvicorn in a thread, on a free loopback port.
# ---------------------------------------------------------------------------------------------------
@contextmanager
def serve_http(app: FastAPI) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.stopping.set()  # open event streams end, as under `fedmezo dashboard`
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server() -> Callable[[FastAPI], Any]:
    return serve_http
