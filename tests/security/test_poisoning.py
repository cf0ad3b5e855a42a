"""The outside client's poisoning attack, over real loopback gRPC and SQLite: with the default settings
one selected client's huge scalars move no weight by more than the documented bound (docs/protocol.md
§11.2); with the bounds switched off the same update wrecks the model (what the defaults prevent)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    threaded_server,
)

from fedmezo.fl.bounds import scalar_rms
from fedmezo.fl.config import RunConfig
from fedmezo.fl.vocabulary import REASON_METADATA_KEY
from fedmezo.server.config import ServerConfig
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc

STEPS = 4
LR = 1e-3
TOKENS = {"alice": "tok-alice", "mallory": "tok-mallory"}
ATTACK = [3.4028235e38, -3.4028235e38, 3.4028235e38, 1e30]  # as the outside client sent it
HONEST = [0.25 * (i + 1) for i in range(STEPS)]  # what play_round submits


def _theta(server: ThreadedServer) -> torch.Tensor:
    async def read() -> torch.Tensor:
        return server.app.coordinator.replica.params.flat.detach().clone()

    return server.call(read())


def _submit(fed: Any, client: str, round_id: int, grads: list[float], losses: list[float]) -> None:
    task = fed.GetTask(
        fpb.GetTaskRequest(client_id=client, known_version=round_id - 1, wait_s=5.0),
        metadata=bearer(TOKENS[client]),
        timeout=RPC_TIMEOUT_S,
    )
    assert task.task.round_id == round_id, task
    update = fpb.SubmitUpdateRequest(
        client_id=client, round_id=round_id, projected_grads=grads, losses=losses, step_time_s=0.01
    )
    fed.SubmitUpdate(update, metadata=bearer(TOKENS[client]), timeout=RPC_TIMEOUT_S)


def _wait_closed(fed: Any, round_id: int) -> fpb.StreamRoundDeltasResponse:
    request = fpb.StreamRoundDeltasRequest(client_id="alice", from_round=round_id, follow=True)
    stream = fed.StreamRoundDeltas(request, metadata=bearer(TOKENS["alice"]), timeout=RPC_TIMEOUT_S)
    for message in stream:
        if message.round_id == round_id:
            stream.cancel()
            return message
    raise AssertionError(f"round {round_id} never closed")


def _scales_of(server: ThreadedServer) -> list[float]:
    async def read() -> list[float]:
        return list(server.app.coordinator._scales.window)

    return server.call(read())


def _attack_run(tmp: Any, **bounds: float) -> tuple[ServerConfig, list[float], float, list[str]]:
    """Two honest rounds, then mallory's attack in round 3: (config, the run's scales after it,
    max |Δθ| of round 3, its events)."""
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{c}:{t}\n" for c, t in TOKENS.items()))
    config = server_config(
        tmp / "state", tokens=str(tokens), local_steps=STEPS, lr=LR, lr_spread=0.0, aggregation="equal",
        max_wait_s=0.2, **bounds,
    )  # fmt: skip
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        for client in TOKENS:
            fed.Join(join_request(client, server.manifest), metadata=bearer(TOKENS[client]), timeout=10)
        for r in (1, 2):
            play_round(channel, TOKENS, r, STEPS)
        before = _theta(server)
        _submit(fed, "alice", 3, HONEST, [2.0] * STEPS)
        # The update exactly as sent: its losses are no cross-entropy, so it is refused outright.
        tables = server.tables()
        with pytest.raises(grpc.RpcError) as info:
            _submit(fed, "mallory", 3, ATTACK, [3.4028235e38] * STEPS)
        err: Any = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.trailing_metadata() or ()).get(REASON_METADATA_KEY) == "invalid_update"
        assert server.tables() == tables  # refused and nothing stored
        # The same scalars with plausible losses are accepted: the bounds must hold them.
        _submit(fed, "mallory", 3, ATTACK, [2.0] * STEPS)
        delta = _wait_closed(fed, 3)
        after = _theta(server)
        assert delta.fingerprint == server.replica_fingerprint()
        events = [row for row in server.tables()["events"] if "update_bounded" in row]
        moved = float((after.double() - before.double()).abs().max())
        return config, _scales_of(server), moved, [repr(e) for e in events]


def test_the_attack_moves_no_weight_beyond_the_documented_bound(tmp_path: Any) -> None:
    defaults = RunConfig()
    config, scales, moved, events = _attack_run(tmp_path)
    # docs/protocol.md §11.2: per round, |Δθ_j| ≤ τ·P·min(max_step, η·norm_k·R), R the lower median
    # of the earlier rounds' scales (both honest rounds: the RMS of HONEST).
    bound = STEPS * min(defaults.max_step, LR * defaults.norm_k * scalar_rms(HONEST))
    honest_move = STEPS * LR * max(HONEST)  # one honest client alone, at most
    assert honest_move < moved <= bound * (1 + 1e-5)
    assert len(events) == 1 and "mallory" in events[0] and "norm bound" in events[0]
    # A restarted server rebuilds the same scales from the store, so it bounds the next rounds alike.
    assert len(scales) == 3
    with threaded_server(config) as restarted:
        assert _scales_of(restarted) == scales


def test_without_the_bounds_the_same_update_wrecks_the_model(tmp_path: Any) -> None:
    _, _, moved, events = _attack_run(tmp_path, norm_k=0.0, max_step=0.0)
    assert not moved < 1e30  # ±1.7e32 per seed (or inf): what the defaults prevent
    assert events == []
