"""Token roles, over real loopback gRPC and SQLite: a tokens-file line `client_id:token` is a client,
`client_id:token:reader` a status reader, `client_id:token:admin` an operator, and an identity that
--status-readers lists (with no role on its line) a reader. Only clients take part in training: a
reader's or admin's token (the dashboard's) is PERMISSION_DENIED on every federation RPC, even under
its own id, and the refusal changes nothing; readers and admins read every status view, clients only
the run's config and totals once a reader exists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    threaded_server,
)

from fedmezo.fl.errors import ConfigError, PermissionDenied
from fedmezo.server.auth import Authenticator, Role, load_tokens, read_tokens
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2, status_pb2_grpc

Code = grpc.StatusCode
STEPS = 4
TOKENS_FILE = """\
# client_id:token[:role]
alice:tok-alice
bob:tok-bob:client
dash:tok-dash:reader
ops:tok-ops:admin
legacy-dash:tok-legacy
"""
TOKENS = {"alice": "tok-alice", "dash": "tok-dash", "ops": "tok-ops", "legacy-dash": "tok-legacy"}
NOT_CLIENTS = ["dash", "ops", "legacy-dash"]  # legacy-dash: listed in --status-readers, no role


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, grpc.Channel, bytes]]:
    """alice and bob closed round 1; round 2 is open."""
    tmp = tmp_path_factory.mktemp("roles")
    (tmp / "tokens.txt").write_text(TOKENS_FILE)
    config = server_config(
        tmp / "state",
        tokens=str(tmp / "tokens.txt"),
        status_readers="legacy-dash",
        local_steps=STEPS,
        max_wait_s=0.2,
    )
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        players = {"alice": "tok-alice", "bob": "tok-bob"}
        for cid, token in players.items():
            fed.Join(join_request(cid, server.manifest), metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        deltas = play_round(channel, players, 1, STEPS)
        yield server, channel, deltas["alice"].fingerprint


def _federation_request(name: str, client_id: str, manifest: bytes, fingerprint: bytes) -> Message:
    return {
        "Join": lambda: join_request(client_id, manifest),
        "Heartbeat": lambda: fpb.HeartbeatRequest(client_id=client_id, model_version=1),
        "GetTask": lambda: fpb.GetTaskRequest(client_id=client_id, known_version=1),
        "SubmitUpdate": lambda: fpb.SubmitUpdateRequest(
            client_id=client_id, round_id=2, projected_grads=[0.5] * STEPS, step_time_s=0.01
        ),
        "ReportFingerprint": lambda: fpb.ReportFingerprintRequest(
            client_id=client_id, model_version=1, fingerprint=fingerprint
        ),
        "StreamRoundDeltas": lambda: fpb.StreamRoundDeltasRequest(client_id=client_id, from_round=1),
        "DownloadCheckpoint": lambda: fpb.DownloadCheckpointRequest(client_id=client_id),
    }[name]()


def _code(channel: grpc.Channel, service: str, name: str, request: Message, token: str) -> Code:
    stub: Any = (
        federation_pb2_grpc.FederationServiceStub(channel)
        if service == "federation"
        else status_pb2_grpc.StatusServiceStub(channel)
    )
    try:
        result = getattr(stub, name)(request, metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        if name.startswith(("Stream", "Download")):
            for _ in result:
                if name == "StreamEvents":
                    result.cancel()
                    break
    except grpc.RpcError as exc:
        if exc.code() == Code.CANCELLED and name == "StreamEvents":  # type: ignore[attr-defined]
            return Code.OK
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return Code.OK


FEDERATION_RPCS = [m.name for m in fpb.DESCRIPTOR.services_by_name["FederationService"].methods]
STATUS_RPCS = [m.name for m in status_pb2.DESCRIPTOR.services_by_name["StatusService"].methods]
PER_CLIENT_VIEWS = {"ListRounds", "ListClients", "ListEvents", "StreamEvents"}


@pytest.mark.parametrize("name", FEDERATION_RPCS)
@pytest.mark.parametrize("holder", NOT_CLIENTS)
def test_only_client_tokens_take_part_in_training(run: Any, holder: str, name: str) -> None:
    server, channel, fingerprint = run
    before = server.tables()
    request = _federation_request(name, holder, server.manifest, fingerprint)
    assert _code(channel, "federation", name, request, TOKENS[holder]) == Code.PERMISSION_DENIED
    assert server.tables() == before, f"{holder}: {name} was refused but changed state"


@pytest.mark.parametrize("name", FEDERATION_RPCS)
def test_a_client_token_is_served(run: Any, name: str) -> None:
    server, channel, fingerprint = run
    request = _federation_request(name, "alice", server.manifest, fingerprint)
    assert _code(channel, "federation", name, request, TOKENS["alice"]) == Code.OK


@pytest.mark.parametrize("holder", ["alice", *NOT_CLIENTS])
def test_status_views_by_role(run: Any, holder: str) -> None:
    _, channel, _ = run
    for name in STATUS_RPCS:
        request = getattr(status_pb2, f"{name}Request")()
        expected = Code.PERMISSION_DENIED if holder == "alice" and name in PER_CLIENT_VIEWS else Code.OK
        assert _code(channel, "status", name, request, TOKENS[holder]) == expected, (holder, name)


def test_tokens_file_format(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(TOKENS_FILE)
    tokens, roles = read_tokens(path)
    assert tokens == {
        "tok-alice": "alice",
        "tok-bob": "bob",
        "tok-dash": "dash",
        "tok-ops": "ops",
        "tok-legacy": "legacy-dash",
    }
    assert roles == {"bob": Role.CLIENT, "dash": Role.READER, "ops": Role.ADMIN}
    assert load_tokens(path) == tokens  # the plain token -> id view stays
    for bad in ("alice:tok:superuser", "alice:tok:reader:x", "alice:tok:"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError):
            read_tokens(path)


def test_without_any_reader_every_token_reads_per_client_views() -> None:
    """The development default is kept: no reader role and no --status-readers, every token reads."""
    auth = Authenticator({"t-a": "alice", "t-b": "bob"})
    assert auth.check_reader(bearer("t-a"), per_client=True) == "alice"
    with_reader = Authenticator({"t-a": "alice", "t-d": "dash"}, roles={"dash": Role.READER})
    assert with_reader.check_reader(bearer("t-d"), per_client=True) == "dash"
    with pytest.raises(PermissionDenied):
        with_reader.check_reader(bearer("t-a"), per_client=True)
    with pytest.raises(PermissionDenied):
        with_reader.identify(bearer("t-d"), "dash")
