"""Client-supplied text reaches the status views, the events, the logs and the dashboard, so the server
takes only printable text (ProtocolLimits.max_text_chars at most): a control or format character (an
ANSI escape, a newline that forges a log or event line, a bidi override) is INVALID_ARGUMENT
("invalid_request") at the wire boundary, and the refused request changes nothing.

Over real loopback gRPC and SQLite: a tokens-file server where alice and bob joined and round 1 is open."""

from __future__ import annotations

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
    server_config,
    threaded_server,
)

from fedmezo.fl.errors import ConfigError
from fedmezo.fl.vocabulary import REASON_METADATA_KEY
from fedmezo.server.auth import load_tokens
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2, status_pb2_grpc

STEPS = 4
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "reader": "tok-reader"}
ALICE = bearer(TOKENS["alice"])
READER = bearer(TOKENS["reader"])
HOSTILE = [
    "cpu\x1b[31m\nFAKE round_closed",  # the attacker's: a colour escape and a forged line
    "cpu\r",
    "cpu\x00",
    "cpu\tgpu",
    "cpu\u202egpu",  # right-to-left override: shows as another name
    "cpu\u200b",  # zero-width space
    "cpu\x7f",
    "cpu\u2028x",  # line separator
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, grpc.Channel]]:
    tmp = tmp_path_factory.mktemp("text")
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{cid}:{tok}\n" for cid, tok in TOKENS.items()))
    config = server_config(tmp / "state", tokens=str(tokens), status_readers="reader", local_steps=STEPS)
    with threaded_server(config) as srv, grpc.insecure_channel(srv.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        for cid in ("alice", "bob"):
            fed.Join(join_request(cid, srv.manifest), metadata=bearer(TOKENS[cid]), timeout=RPC_TIMEOUT_S)
        task = fed.GetTask(fpb.GetTaskRequest(client_id="alice", wait_s=5.0), metadata=ALICE, timeout=10)
        assert task.status == fpb.TASK_STATUS_ASSIGNED and task.task.round_id == 1
        yield srv, channel


def _state(srv: ThreadedServer, channel: grpc.Channel) -> Any:
    status = status_pb2_grpc.StatusServiceStub(channel)
    clients = status.ListClients(status_pb2.ListClientsRequest(), metadata=READER, timeout=RPC_TIMEOUT_S)
    for client in clients.clients:
        client.ClearField("last_heartbeat_unix_ms")
    return srv.tables(), clients.SerializeToString(deterministic=True)


def _refused(srv: ThreadedServer, channel: grpc.Channel, method: str, request: Any) -> str:
    before = _state(srv, channel)
    fed = federation_pb2_grpc.FederationServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        getattr(fed, method)(request, metadata=ALICE, timeout=RPC_TIMEOUT_S)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert dict(err.trailing_metadata() or ())[REASON_METADATA_KEY] == "invalid_request"
    assert _state(srv, channel) == before, f"{method} was refused but changed state"
    return str(err.details())


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
@pytest.mark.parametrize("field", ["device", "client_version", "rng_spec"])
def test_join_text_with_control_characters_is_refused(server: Any, field: str, text: str) -> None:
    srv, channel = server
    details = _refused(srv, channel, "Join", join_request("alice", srv.manifest, **{field: text}))
    assert field in details and text not in details


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
def test_update_device_with_control_characters_is_refused(server: Any, text: str) -> None:
    srv, channel = server
    update = fpb.SubmitUpdateRequest(
        client_id="alice", round_id=1, projected_grads=[0.5] * STEPS, step_time_s=0.01, device=text
    )
    _refused(srv, channel, "SubmitUpdate", update)


def test_printable_unicode_is_taken(server: Any) -> None:
    """Printable text beyond ASCII (a GPU's marketing name, an accented host) still joins."""
    srv, channel = server
    fed = federation_pb2_grpc.FederationServiceStub(channel)
    request = join_request(
        "alice", srv.manifest, device="cuda:0 (NVIDIA GeForce RTX 4090) é 日本", client_version="0.1.0"
    )
    fed.Join(request, metadata=ALICE, timeout=RPC_TIMEOUT_S)
    status = status_pb2_grpc.StatusServiceStub(channel)
    clients = status.ListClients(status_pb2.ListClientsRequest(), metadata=READER, timeout=RPC_TIMEOUT_S)
    assert {c.client_id: c.device for c in clients.clients}["alice"] == request.device


def test_a_payload_client_id_without_tokens_must_be_printable(tmp_path: Path) -> None:
    """Without a tokens file the payload's client_id is the identity: it is checked like any text."""
    config = server_config(tmp_path / "state", local_steps=STEPS)
    with threaded_server(config) as srv, grpc.insecure_channel(srv.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        before = srv.tables()
        for text in HOSTILE:
            with pytest.raises(grpc.RpcError) as info:
                fed.Join(join_request(text, srv.manifest), timeout=RPC_TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(text)  # type: ignore[attr-defined]
        assert srv.tables() == before


@pytest.mark.parametrize("text", ["ali\x1bce", "alice\u202e", "al ice\x00"], ids=repr)
def test_a_tokens_file_id_must_be_printable(tmp_path: Path, text: str) -> None:
    """The operator's ids reach the same views and logs: a control character is a config error."""
    path = tmp_path / "tokens.txt"
    path.write_text(f"{text}:tok-a\n")
    with pytest.raises(ConfigError, match="printable"):
        load_tokens(path)
