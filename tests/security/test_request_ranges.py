"""Smaller gaps an outside client found, over real loopback gRPC and SQLite: values the proto rules out
are refused and change nothing (a negative step time, an activity outside ClientActivity, an empty
client_id under a token, from_round 0), a client cannot flood the event log with wrong fingerprint
reports, and a client's last activity is not shown once it is offline or the run finished."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    threaded_server,
)

from fedmezo.fl.vocabulary import REASON_METADATA_KEY
from fedmezo.v1 import common_pb2, federation_pb2_grpc, status_pb2, status_pb2_grpc
from fedmezo.v1 import federation_pb2 as fpb

STEPS = 4
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "reader": "tok-reader"}
ALICE, BOB, READER = (bearer(TOKENS[c]) for c in ("alice", "bob", "reader"))
Code = grpc.StatusCode


def _tokens_file(tmp: Path) -> Path:
    path = tmp / "tokens.txt"
    path.write_text("".join(f"{cid}:{tok}\n" for cid, tok in TOKENS.items()))
    return path


class Run:
    """alice and bob joined and closed round 1; round 2 is open with both selected."""

    def __init__(self, server: ThreadedServer, channel: grpc.Channel, fingerprint_1: bytes) -> None:
        self.server, self.channel, self.fingerprint_1 = server, channel, fingerprint_1
        self.fed = federation_pb2_grpc.FederationServiceStub(channel)
        self.status = status_pb2_grpc.StatusServiceStub(channel)

    def clients(self) -> dict[str, status_pb2.ClientInfo]:
        reply = self.status.ListClients(status_pb2.ListClientsRequest(), metadata=READER, timeout=10)
        return {c.client_id: c for c in reply.clients}

    def state(self) -> Any:
        clients = self.clients()
        for client in clients.values():
            client.ClearField("last_heartbeat_unix_ms")
        run = self.status.GetStatus(status_pb2.GetStatusRequest(), metadata=READER, timeout=10)
        views = [m.SerializeToString(deterministic=True) for m in (run, *clients.values())]
        return self.server.tables(), views

    def refused(self, method: str, request: Any, metadata: Any, code: Code, reason: str) -> str:
        before = self.state()
        with pytest.raises(grpc.RpcError) as info:
            reply = getattr(self.fed, method)(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
            if method.startswith(("Stream", "Download")):
                list(reply)
        err: Any = info.value
        assert (err.code(), dict(err.trailing_metadata() or ()).get(REASON_METADATA_KEY)) == (code, reason), (
            err.details()
        )
        assert self.state() == before, f"{method} was refused but changed state"
        return str(err.details())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("ranges")
    config = server_config(
        tmp / "state",
        tokens=str(_tokens_file(tmp)),
        status_readers="reader",
        local_steps=STEPS,
        max_wait_s=0.2,
    )
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        for cid in ("alice", "bob"):
            fed.Join(join_request(cid, server.manifest), metadata=bearer(TOKENS[cid]), timeout=RPC_TIMEOUT_S)
        deltas = play_round(channel, {c: TOKENS[c] for c in ("alice", "bob")}, 1, STEPS)
        yield Run(server, channel, deltas["alice"].fingerprint)


@pytest.mark.parametrize("step_time_s", [-1e30, -0.5, float("-inf")])
def test_step_time_must_be_a_finite_duration(run: Run, step_time_s: float) -> None:
    update = fpb.SubmitUpdateRequest(
        client_id="alice", round_id=2, projected_grads=[0.5] * STEPS, step_time_s=step_time_s
    )
    run.refused("SubmitUpdate", update, ALICE, Code.INVALID_ARGUMENT, "invalid_update")


@pytest.mark.parametrize("activity", [4, 999, -1, 2**31 - 1])
def test_an_activity_outside_client_activity_is_refused(run: Run, activity: int) -> None:
    request = fpb.HeartbeatRequest(client_id="alice", model_version=1, activity=activity)
    run.refused("Heartbeat", request, ALICE, Code.INVALID_ARGUMENT, "invalid_request")


def test_an_unspecified_activity_reads_as_idle(run: Run) -> None:
    request = fpb.HeartbeatRequest(client_id="alice", model_version=1, activity=fpb.CLIENT_ACTIVITY_TRAINING)
    run.fed.Heartbeat(request, metadata=ALICE, timeout=RPC_TIMEOUT_S)
    assert run.clients()["alice"].activity == "training"
    run.fed.Heartbeat(fpb.HeartbeatRequest(client_id="alice", model_version=1), metadata=ALICE, timeout=10)
    assert run.clients()["alice"].activity == "idle"


FEDERATION_REQUESTS = {
    "Join": lambda run: join_request("", run.server.manifest),
    "Heartbeat": lambda run: fpb.HeartbeatRequest(model_version=1),
    "GetTask": lambda run: fpb.GetTaskRequest(known_version=1),
    "SubmitUpdate": lambda run: fpb.SubmitUpdateRequest(round_id=2, projected_grads=[0.5] * STEPS),
    "ReportFingerprint": lambda run: fpb.ReportFingerprintRequest(
        model_version=1, fingerprint=run.fingerprint_1
    ),
    "StreamRoundDeltas": lambda run: fpb.StreamRoundDeltasRequest(from_round=1),
    "DownloadCheckpoint": lambda run: fpb.DownloadCheckpointRequest(),
}


@pytest.mark.parametrize("method", sorted(FEDERATION_REQUESTS))
def test_an_empty_client_id_is_not_the_tokens_identity(run: Run, method: str) -> None:
    """federation.proto: client_id must equal the token's identity; an empty one does not."""
    request = FEDERATION_REQUESTS[method](run)
    run.refused(method, request, ALICE, Code.PERMISSION_DENIED, "permission_denied")


def test_from_round_zero_is_refused(run: Run) -> None:
    """Rounds are numbered from 1: from_round 0 is out of range, and its bytes are not counted."""
    for follow in (False, True):
        request = fpb.StreamRoundDeltasRequest(client_id="alice", from_round=0, follow=follow)
        run.refused("StreamRoundDeltas", request, ALICE, Code.INVALID_ARGUMENT, "invalid_request")


def _mismatch_events(run: Run, client_id: str) -> list[status_pb2.Event]:
    reply = run.status.ListEvents(status_pb2.ListEventsRequest(), metadata=READER, timeout=10)
    return [e for e in reply.events if e.kind == "fingerprint_mismatch" and e.client_id == client_id]


def test_wrong_fingerprint_reports_write_one_event_per_client_and_version(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """Each wrong report is stored (the client is shown out of sync), but a client repeating it, or
    reporting older versions, adds no event and no warning: the log cannot be flooded."""
    caplog.set_level(logging.WARNING, logger="fedmezo.server.coordinator")
    wrong = bytes(32)
    for version in (1, 1, 1, 1, 0, 0, 1):
        request = fpb.ReportFingerprintRequest(client_id="bob", model_version=version, fingerprint=wrong)
        assert not run.fed.ReportFingerprint(request, metadata=BOB, timeout=RPC_TIMEOUT_S).in_sync
    assert [e.round_id for e in _mismatch_events(run, "bob")] == [1]
    warnings = [r for r in caplog.records if "diverged" in r.getMessage() and "bob" in r.getMessage()]
    assert len(warnings) == 1
    bob = run.clients()["bob"]
    assert not bob.in_sync and bob.fingerprint_version == 1
    request = fpb.ReportFingerprintRequest(client_id="bob", model_version=1, fingerprint=run.fingerprint_1)
    assert run.fed.ReportFingerprint(request, metadata=BOB, timeout=RPC_TIMEOUT_S).in_sync
    assert run.clients()["bob"].in_sync


def test_activity_is_not_shown_after_the_run_finished_or_offline(tmp_path: Path) -> None:
    """Seen on the dashboard: a client still "training" under a finished run (its last heartbeat)."""
    config = server_config(
        tmp_path / "state",
        tokens=str(_tokens_file(tmp_path)),
        local_steps=STEPS,
        rounds=1,
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=3.0,
    )
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        run = Run(server, channel, b"")
        players = {c: TOKENS[c] for c in ("alice", "bob")}
        for cid, token in players.items():
            run.fed.Join(join_request(cid, server.manifest), metadata=bearer(token), timeout=RPC_TIMEOUT_S)
            training = fpb.HeartbeatRequest(client_id=cid, activity=fpb.CLIENT_ACTIVITY_TRAINING, round_id=1)
            run.fed.Heartbeat(training, metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        assert {c.activity for c in run.clients().values() if c.client_id in players} == {"training"}
        play_round(channel, players, 1, STEPS)
        reply = run.status.GetStatus(status_pb2.GetStatusRequest(), metadata=READER, timeout=10)
        assert reply.run_state == common_pb2.RUN_STATE_FINISHED
        shown = {c.client_id: (c.online, c.activity) for c in run.clients().values()}
        assert shown["alice"] == shown["bob"] == (True, "idle")
        time.sleep(config.heartbeat_timeout_s + 0.5)
        shown = {c.client_id: (c.online, c.activity) for c in run.clients().values()}
        assert shown["alice"] == shown["bob"] == (False, "offline")
