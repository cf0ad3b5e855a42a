"""A real fedmezo server (grpc.aio, SQLite, the tiny-random replica) in-process on a loopback port, its
event loop in a daemon thread, so synchronous tests (hypothesis, plain gRPC channels) can call it and
still read its state: the SQLite file through a separate read-only connection, the replica's weights
on the server's own loop. Starts in ~2 s (no subprocess imports)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedmezo.fl.replica import Replica
from fedmezo.server.app import STATE_DB, ServerApp, build_app
from fedmezo.server.config import ServerConfig
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc
from fedmezo.zo import RNG_SPEC
from helpers.run_settings import PROTOCOL_RUN

__all__ = [
    "RPC_TIMEOUT_S",
    "STATE_TABLES",
    "ThreadedServer",
    "bearer",
    "join_request",
    "play_round",
    "server_config",
    "serving",
    "threaded_server",
]

T = TypeVar("T")
RPC_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0
# Tables a refused request must leave untouched (traffic and events included: a refusal is not counted).
STATE_TABLES = (
    "clients",
    "rounds",
    "tasks",
    "updates",
    "outcomes",
    "round_deltas",
    "fingerprints",
    "traffic",
    "checkpoints",
    "events",
    "metrics",
)


def server_config(state_dir: Path, **overrides: Any) -> ServerConfig:
    base: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        insecure=True,
        state_dir=str(state_dir),
        rounds=5,
        local_steps=4,
        min_clients=2,
        clients_per_round=2,
        lr=1e-3,
        lr_spread=5e-4,
        deadline_s=3600.0,
        heartbeat_timeout_s=3600.0,
        # no background publication for read replicas: what a test compares between two requests
        # (the traffic table) changes only by the requests themselves
        status_publish_s=0.0,
        **PROTOCOL_RUN,
    )
    base.update(overrides)
    return ServerConfig(**base).validate()


@dataclass
class ThreadedServer:
    """A started ServerApp whose event loop runs in a daemon thread."""

    app: ServerApp
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    state_dir: Path

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def manifest(self) -> bytes:
        return self.app.coordinator.replica.manifest_sha256

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop (the only thread that may touch its state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def replica_fingerprint(self) -> bytes:
        """SHA-256 of the server replica's trainable fp32 bytes, recomputed now on the server's loop."""

        async def fingerprint() -> bytes:
            return self.app.coordinator.replica.fingerprint()

        return self.call(fingerprint())

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every state table, read through a separate read-only SQLite connection (what is on disk)."""
        uri = f"file:{self.state_dir / STATE_DB}?mode=ro"
        with sqlite3.connect(uri, uri=True) as db:
            return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in STATE_TABLES}

    def stop(self) -> None:
        self.call(self.app.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def threaded_server(config: ServerConfig, replica: Replica | None = None) -> Iterator[ThreadedServer]:
    """Start `config` (tiny-random unless `replica` is given) in a loop thread; stop it afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fedmezo-server", daemon=True)
    thread.start()

    async def start() -> ServerApp:
        rep = replica or await asyncio.to_thread(Replica.load, config.model)
        app = build_app(config, replica=rep)
        await app.start()
        return app

    try:
        app = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=START_TIMEOUT_S)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        raise
    server = ThreadedServer(app, loop, thread, Path(config.state_dir))
    try:
        yield server
    finally:
        server.stop()


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token is not None else None


def serving(channel: grpc.Channel) -> bool:
    """The server answers its health check with SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def join_request(client_id: str, manifest: bytes, **fields: Any) -> fpb.JoinRequest:
    """A valid JoinRequest (tiny-random's manifest, our rng spec); `fields` override any field."""
    values: dict[str, Any] = dict(
        client_id=client_id, manifest_sha256=manifest, rng_spec=RNG_SPEC, num_examples=10, device="cpu"
    )
    return fpb.JoinRequest(**{**values, **fields})


def play_round(
    channel: grpc.Channel, tokens: Mapping[str, str | None], round_id: int, steps: int
) -> dict[str, fpb.StreamRoundDeltasResponse]:
    """Every client in `tokens` (client_id -> token, None without a tokens file) gets its task,
    submits, and receives the delta."""
    fed = federation_pb2_grpc.FederationServiceStub(channel)
    for client_id, token in tokens.items():
        task = fed.GetTask(
            fpb.GetTaskRequest(client_id=client_id, known_version=round_id - 1, wait_s=5.0),
            metadata=bearer(token),
            timeout=RPC_TIMEOUT_S,
        )
        assert task.status == fpb.TASK_STATUS_ASSIGNED and task.task.round_id == round_id, task
        update = fpb.SubmitUpdateRequest(
            client_id=client_id,
            round_id=round_id,
            projected_grads=[0.25 * (i + 1) for i in range(steps)],
            losses=[2.0] * steps,
            step_time_s=0.01,
            device="cpu",
        )
        fed.SubmitUpdate(update, metadata=bearer(token), timeout=RPC_TIMEOUT_S)
    deltas = {}
    for client_id, token in tokens.items():
        request = fpb.StreamRoundDeltasRequest(client_id=client_id, from_round=round_id, follow=True)
        stream = fed.StreamRoundDeltas(request, metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        for message in stream:
            if message.round_id == round_id:
                deltas[client_id] = message
                stream.cancel()
                break
    return deltas
