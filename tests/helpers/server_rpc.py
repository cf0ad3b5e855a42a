"""Server test harness: a real grpc.aio server on a loopback port, real SQLite, the tiny-random model,
and a thin fake client that speaks the generated stubs (no fedmezo.client code).

A module (not conftest.py) so test folders import it by a unique name: `from conftest import ...`
resolves to whichever conftest was imported first once several folders run together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedmezo.fl.replica import Replica
from fedmezo.server.app import ServerApp, build_app
from fedmezo.server.config import ServerConfig
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2_grpc
from fedmezo.zo import RNG_SPEC, RoundDelta, apply_round_delta
from helpers.run_settings import PROTOCOL_RUN

RPC_TIMEOUT_S = 10.0


class FakeClock:
    """Injectable time: tests move it; the server never sleeps on it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    base: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        insecure=True,
        state_dir=str(tmp_path / "state"),
        rounds=3,
        local_steps=4,
        min_clients=3,
        clients_per_round=3,
        lr=1e-3,
        lr_spread=5e-4,
        deadline_s=60.0,
        **PROTOCOL_RUN,
    )
    base.update(overrides)
    return ServerConfig(**base).validate()


@asynccontextmanager
async def running_server(
    tmp_path: Path, replica: Replica, *, clock: Any = time.time, **overrides: Any
) -> AsyncIterator[ServerApp]:
    app = build_app(make_config(tmp_path, **overrides), replica=replica, clock=clock)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0)


class FakeClient:
    """One client over a real channel; only generated stubs, raw protobuf in and out."""

    def __init__(self, port: int, client_id: str, token: str | None = None, *, manifest: bytes = b"") -> None:
        self.client_id = client_id
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.fed = federation_pb2_grpc.FederationServiceStub(self.channel)
        self.status = status_pb2_grpc.StatusServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.manifest = manifest

    async def close(self) -> None:
        await self.channel.close()

    def kw(self) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": RPC_TIMEOUT_S}

    async def join(self, num_examples: int = 10, **fields: Any) -> fpb.JoinResponse:
        req = fpb.JoinRequest(
            client_id=self.client_id,
            manifest_sha256=self.manifest,
            rng_spec=RNG_SPEC,
            num_examples=num_examples,
            device="cpu",
        )
        for k, v in fields.items():
            setattr(req, k, v)
        return await self.fed.Join(req, **self.kw())

    async def get_task(
        self, known_version: int = 0, wait_s: float = 5.0, **fields: Any
    ) -> fpb.GetTaskResponse:
        req = fpb.GetTaskRequest(
            client_id=self.client_id, known_version=known_version, wait_s=wait_s, **fields
        )
        return await self.fed.GetTask(req, **self.kw())

    async def submit(
        self, round_id: int, grads: Sequence[float], losses: Sequence[float] = (), **fields: Any
    ) -> fpb.SubmitUpdateResponse:
        req = fpb.SubmitUpdateRequest(
            client_id=fields.pop("client_id", self.client_id),
            round_id=round_id,
            projected_grads=grads,
            losses=losses,
            step_time_s=0.01,
            peak_memory_bytes=1 << 20,
            device="cpu",
        )
        for k, v in fields.items():
            setattr(req, k, v)
        return await self.fed.SubmitUpdate(req, **self.kw())

    async def deltas(self, from_round: int, follow: bool = False) -> list[fpb.StreamRoundDeltasResponse]:
        req = fpb.StreamRoundDeltasRequest(client_id=self.client_id, from_round=from_round, follow=follow)
        return [m async for m in self.fed.StreamRoundDeltas(req, **self.kw())]

    async def wait_delta(self, round_id: int) -> fpb.StreamRoundDeltasResponse:
        """Follow the delta stream until round_id's delta arrives (the round may still be closing)."""
        req = fpb.StreamRoundDeltasRequest(client_id=self.client_id, from_round=round_id, follow=True)
        call = self.fed.StreamRoundDeltas(req, metadata=self.metadata, timeout=RPC_TIMEOUT_S)
        async for msg in call:
            if msg.round_id == round_id:
                call.cancel()
                return msg
        raise AssertionError(f"stream ended before round {round_id}")

    async def report(self, version: int, fingerprint: bytes) -> fpb.ReportFingerprintResponse:
        req = fpb.ReportFingerprintRequest(
            client_id=self.client_id, model_version=version, fingerprint=fingerprint
        )
        return await self.fed.ReportFingerprint(req, **self.kw())


def grads_for(client_id: str, round_id: int, steps: int) -> list[float]:
    """Deterministic fp32 projected gradients for a fake client."""
    rng = np.random.default_rng(abs(hash((client_id, round_id))) % (2**32))
    return [float(x) for x in rng.standard_normal(steps).astype(np.float32)]


def apply_wire_delta(replica: Replica, msg: fpb.StreamRoundDeltasResponse, run_seed: int) -> None:
    """What a client does with a delta message: derive seeds from participants, apply in order."""
    from fedmezo.zo import derive_round_seeds

    participants = [(p.client_id, p.local_steps) for p in msg.participants]
    seeds = derive_round_seeds(run_seed, msg.round_id, participants)
    apply_round_delta(replica.params, RoundDelta(seeds, tuple(msg.coefficients)))
    replica.version += 1


def rpc_code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.aio.AioRpcError), exc
    return exc.code()


def read_all_pages(
    port: int, rpc: str, reader: Callable[..., list[Any]], *args: Any
) -> tuple[list[Any], int]:
    """Every item of a paged StatusService list (`reader`: fedmezo.status_pages.list_all_rounds or
    list_all_clients) over a blocking channel, as the CLI reads it, and how many pages that took."""
    pages = 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = getattr(status_pb2_grpc.StatusServiceStub(channel), rpc)

        def call(request: Any) -> Any:
            nonlocal pages
            pages += 1
            return method(request, timeout=10.0)

        items = reader(call, *args)
    return items, pages
