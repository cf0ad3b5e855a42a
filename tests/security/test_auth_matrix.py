"""The authentication matrix over real loopback gRPC, row by row: who calls (no token, a wrong token,
another client's token, a revoked one; TLS with an unknown CA, mTLS with a foreign certificate) and
what every RPC must answer. A refused call changes nothing on the server.

Identity comes from the token alone. A valid token that claims another client's id is
PERMISSION_DENIED, not UNAUTHENTICATED: the caller did authenticate, and the server knows exactly
who it is refusing (the client treats both as final; the reason tells an operator which one it was).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from helpers.pki import has_openssl, make_pki
from helpers.processes import free_port, spawn, stop_processes, wait_for, wait_until_serving
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    serving,
    threaded_server,
)

from fedmezo.fl.errors import PermissionDenied
from fedmezo.fl.replica import Replica
from fedmezo.server.auth import Authenticator
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2, status_pb2_grpc

Code = grpc.StatusCode
STEPS = 4
# carol (a client) and ops (a reader) exist to be revoked at the end; the rows never use them.
TOKENS = {
    "alice": "tok-alice-0123456789",
    "bob": "tok-bob-0123456789ab",
    "reader": "tok-reader-012345678",
    "carol": "tok-carol-0123456789",
    "ops": "tok-ops-0123456789ab",
}
ALICE, BOB, READER = (bearer(TOKENS[c]) for c in ("alice", "bob", "reader"))


def _write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.write_text("".join(f"{cid}:{tok}\n" for cid, tok in tokens.items()))


@dataclass
class Run:
    """A server with a tokens file: alice and bob joined and closed round 1; round 2 is open."""

    server: ThreadedServer
    channel: grpc.Channel
    tokens_file: Path
    fingerprint_1: bytes

    def state(self) -> Any:
        status = status_pb2_grpc.StatusServiceStub(self.channel)
        run = status.GetStatus(status_pb2.GetStatusRequest(), metadata=READER, timeout=RPC_TIMEOUT_S)
        return self.server.tables(), run.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("auth")
    tokens_file = tmp / "tokens.txt"
    _write_tokens(tokens_file, TOKENS)
    config = server_config(
        tmp / "state", tokens=str(tokens_file), status_readers="reader,ops", local_steps=STEPS, max_wait_s=0.2
    )
    with threaded_server(config) as server, grpc.insecure_channel(server.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        players = {cid: TOKENS[cid] for cid in ("alice", "bob")}
        for cid, token in players.items():
            fed.Join(join_request(cid, server.manifest), metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        deltas = play_round(channel, players, 1, STEPS)
        yield Run(server, channel, tokens_file, deltas["alice"].fingerprint)


# --- the requests: each valid for `client_id`, so a refusal can only come from who is calling -------
def _federation_request(name: str, client_id: str, run: Run) -> Message:
    builders: dict[str, Callable[[], Message]] = {
        "Join": lambda: join_request(client_id, run.server.manifest),
        "Heartbeat": lambda: fpb.HeartbeatRequest(client_id=client_id, model_version=1),
        "GetTask": lambda: fpb.GetTaskRequest(client_id=client_id, known_version=1, wait_s=0.0),
        "SubmitUpdate": lambda: fpb.SubmitUpdateRequest(
            client_id=client_id, round_id=2, projected_grads=[0.5] * STEPS, step_time_s=0.01
        ),
        "ReportFingerprint": lambda: fpb.ReportFingerprintRequest(
            client_id=client_id, model_version=1, fingerprint=run.fingerprint_1
        ),
        "StreamRoundDeltas": lambda: fpb.StreamRoundDeltasRequest(client_id=client_id, from_round=1),
        "DownloadCheckpoint": lambda: fpb.DownloadCheckpointRequest(client_id=client_id),
    }
    return builders[name]()


FEDERATION_RPCS = [m.name for m in fpb.DESCRIPTOR.services_by_name["FederationService"].methods]
STATUS_RPCS = [m.name for m in status_pb2.DESCRIPTOR.services_by_name["StatusService"].methods]
PER_CLIENT_VIEWS = {"ListRounds", "ListClients", "ListEvents", "StreamEvents"}


def _call(channel: grpc.Channel, service: str, name: str, request: Message, metadata: Any) -> Code:
    """The code of one call; a stream is read to its end (StreamEvents: until its first event)."""
    stub: Any = (
        federation_pb2_grpc.FederationServiceStub(channel)
        if service == "federation"
        else status_pb2_grpc.StatusServiceStub(channel)
    )
    try:
        result = getattr(stub, name)(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
        if name.startswith(("Stream", "Download")):
            for _ in result:
                if name == "StreamEvents":
                    result.cancel()
                    break
    except grpc.RpcError as exc:
        if exc.code() == Code.CANCELLED and name == "StreamEvents":  # type: ignore[attr-defined]
            return Code.OK  # we hung up after the first event
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return Code.OK


# (row name, metadata, the client_id the request claims, expected code)
FEDERATION_ROWS = [
    ("no token", None, "alice", Code.UNAUTHENTICATED),
    ("wrong token", bearer("tok-alice-0123456788"), "alice", Code.UNAUTHENTICATED),
    ("token without 'Bearer'", (("authorization", TOKENS["alice"]),), "alice", Code.UNAUTHENTICATED),
    ("another client's token, my id", BOB, "alice", Code.PERMISSION_DENIED),
    ("my token, another client's id", ALICE, "bob", Code.PERMISSION_DENIED),
    ("my token, no client_id", ALICE, "", Code.PERMISSION_DENIED),  # must equal the token's identity
    ("a status reader's token, a client's id", READER, "alice", Code.PERMISSION_DENIED),
]


@pytest.mark.parametrize("name", FEDERATION_RPCS)
@pytest.mark.parametrize(
    ("row", "metadata", "claimed", "expected"), FEDERATION_ROWS, ids=[r[0] for r in FEDERATION_ROWS]
)
def test_federation_refusals(
    run: Run, name: str, row: str, metadata: Any, claimed: str, expected: Code
) -> None:
    before = run.state()
    request = _federation_request(name, claimed, run)
    assert _call(run.channel, "federation", name, request, metadata) == expected
    assert run.state() == before, f"{row}: {name} was refused but changed state"


@pytest.mark.parametrize("name", FEDERATION_RPCS)
def test_federation_with_my_own_token_is_served(run: Run, name: str) -> None:
    """The control row: the same requests pass with the caller's own token (SubmitUpdate is idempotent)."""
    assert _call(run.channel, "federation", name, _federation_request(name, "alice", run), ALICE) == Code.OK


STATUS_ROWS = [
    ("no token", None, {n: Code.UNAUTHENTICATED for n in STATUS_RPCS}),
    ("wrong token", bearer("nope"), {n: Code.UNAUTHENTICATED for n in STATUS_RPCS}),
    # A client may read the run's config and totals, never other clients' losses, devices or events.
    (
        "a client's token",
        ALICE,
        {n: Code.PERMISSION_DENIED if n in PER_CLIENT_VIEWS else Code.OK for n in STATUS_RPCS},
    ),
    ("a listed reader's token", READER, {n: Code.OK for n in STATUS_RPCS}),
]


@pytest.mark.parametrize(("row", "metadata", "expected"), STATUS_ROWS, ids=[r[0] for r in STATUS_ROWS])
def test_status_matrix(run: Run, row: str, metadata: Any, expected: dict[str, Code]) -> None:
    for name in STATUS_RPCS:
        request = getattr(status_pb2, f"{name}Request")()
        before = run.state()
        assert _call(run.channel, "status", name, request, metadata) == expected[name], f"{row}: {name}"
        assert run.state() == before


def test_status_readers_unset_lets_every_token_read() -> None:
    """Without status_readers (the default) any token holder reads the per-client views."""
    tokens = {"t-a": "alice", "t-r": "reader"}
    assert Authenticator(tokens).check_reader(bearer("t-a"), per_client=True) == "alice"
    listed = Authenticator(tokens, readers=frozenset({"reader"}))
    assert listed.check_reader(bearer("t-r"), per_client=True) == "reader"
    assert listed.check_reader(bearer("t-a")) == "alice"  # config and totals: any token
    with pytest.raises(PermissionDenied):
        listed.check_reader(bearer("t-a"), per_client=True)


def test_a_client_can_never_submit_or_report_for_another(run: Run) -> None:
    """Under alice's token every write lands on alice, whatever the payload says."""
    fed = federation_pb2_grpc.FederationServiceStub(run.channel)
    store = run.server.app.coordinator.store
    for request in (
        _federation_request("SubmitUpdate", "bob", run),
        _federation_request("ReportFingerprint", "bob", run),
    ):
        with pytest.raises(grpc.RpcError) as info:
            getattr(fed, type(request).__name__.removesuffix("Request"))(
                request, metadata=ALICE, timeout=RPC_TIMEOUT_S
            )
        assert info.value.code() == Code.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert run.server.call(_get_update(store, 2, "bob")) is None
    # The task alice's token gets is alice's: the seeds derive from her id, not bob's.
    request = fpb.GetTaskRequest(client_id="alice", known_version=1, wait_s=0.0)
    task = fed.GetTask(request, metadata=ALICE, timeout=RPC_TIMEOUT_S)
    assert task.status in (fpb.TASK_STATUS_ASSIGNED, fpb.TASK_STATUS_NO_TASK)
    if task.status == fpb.TASK_STATUS_ASSIGNED:
        assert run.server.call(_get_task(store, 2, "alice")) is not None


async def _get_update(store: Any, round_id: int, client_id: str) -> Any:
    return store.get_update(round_id, client_id)


async def _get_task(store: Any, round_id: int, client_id: str) -> Any:
    return store.get_task(round_id, client_id)


def test_revoked_tokens_stop_working_within_a_second(run: Run) -> None:
    """Removing a line from the tokens file revokes it: calls, and an open event stream, end with
    UNAUTHENTICATED once the server notices the change (mtime check, at most every second)."""
    status = status_pb2_grpc.StatusServiceStub(run.channel)
    fed = federation_pb2_grpc.FederationServiceStub(run.channel)
    carol = bearer(TOKENS["carol"])
    fed.Join(join_request("carol", run.server.manifest), metadata=carol, timeout=RPC_TIMEOUT_S)
    stream = status.StreamEvents(status_pb2.StreamEventsRequest(), metadata=bearer(TOKENS["ops"]), timeout=30)
    next(stream)  # open and authorized
    _write_tokens(run.tokens_file, {k: v for k, v in TOKENS.items() if k not in ("carol", "ops")})

    def carol_refused() -> bool:
        try:
            fed.Heartbeat(fpb.HeartbeatRequest(client_id="carol"), metadata=carol, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code() == Code.UNAUTHENTICATED  # type: ignore[attr-defined,no-any-return]
        return False

    wait_for(carol_refused, 5.0, "carol's revoked token to be refused")
    fed.Join(join_request("alice", run.server.manifest), metadata=ALICE, timeout=RPC_TIMEOUT_S)  # an event
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    assert info.value.code() == Code.UNAUTHENTICATED  # type: ignore[attr-defined]
    alive = fed.Heartbeat(fpb.HeartbeatRequest(client_id="alice"), metadata=ALICE, timeout=RPC_TIMEOUT_S)
    assert alive.rounds_completed == 1


def test_a_tokens_file_that_no_longer_parses_keeps_the_previous_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    _write_tokens(path, {"alice": "t-a", "bob": "t-b"})
    auth = Authenticator.from_file(path)
    path.write_text("alice t-a\n")  # no colon: a half-written edit
    assert not auth.reload()
    assert auth.identify(bearer("t-b"), "bob") == "bob"
    _write_tokens(path, {"alice": "t-a"})
    assert auth.reload() and auth.generation == 1


def test_sighup_reloads_the_tokens_file(tmp_path: Path) -> None:
    """`kill -HUP` re-reads the file at once, even when its mtime and size did not change (and the
    server keeps running: SIGHUP's default action would end it)."""
    tokens_file = tmp_path / "tokens.txt"
    _write_tokens(tokens_file, {"alice": "tok-a-1", "reader": "tok-r-1"})
    port = free_port()
    log = tmp_path / "server.log"
    args = ["server", "--model", "tiny-random", "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--state-dir", str(tmp_path / "state"), "--tokens", str(tokens_file)]  # fmt: skip
    proc = spawn(args, log)
    try:
        wait_until_serving(proc, port, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = status_pb2_grpc.StatusServiceStub(channel)

            def code(token: str) -> Code:
                try:
                    status.GetStatus(
                        status_pb2.GetStatusRequest(), metadata=bearer(token), timeout=RPC_TIMEOUT_S
                    )
                except grpc.RpcError as exc:
                    return exc.code()  # type: ignore[attr-defined,no-any-return]
                return Code.OK

            assert code("tok-a-1") == Code.OK
            stamp = tokens_file.stat()
            _write_tokens(tokens_file, {"alice": "tok-a-2", "reader": "tok-r-1"})  # same size
            os.utime(tokens_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and the same mtime
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: code("tok-a-1") == Code.UNAUTHENTICATED, 10.0, "the old token to be revoked")
            assert code("tok-a-2") == Code.OK and code("tok-r-1") == Code.OK
            assert proc.poll() is None and serving(channel)
    finally:
        stop_processes([proc])
    assert "tokens file reloaded: 2 tokens (1 revoked, 1 new)" in log.read_text()


# --- TLS and mTLS: the handshake itself refuses, before any token is looked at ----------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not has_openssl():
        pytest.skip("needs openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_replica() -> Replica:
    return Replica.load("tiny-random")  # shared: no round ever runs on the TLS servers


def _tls_server(tmp: Path, pki: Path, replica: Replica, **extra: str) -> Any:
    tokens = tmp / "tokens.txt"
    _write_tokens(tokens, {"reader": TOKENS["reader"]})
    config = server_config(
        tmp / "state",
        insecure=False,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tokens=str(tokens),
        **extra,
    )
    return threaded_server(config, replica)


def _tls_channel(address: str, pki: Path, ca: str | None, cert: str | None = None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address)
    key_pem = (pki / f"{cert}.key").read_bytes() if cert else None
    cert_pem = (pki / f"{cert}.pem").read_bytes() if cert else None
    credentials = grpc.ssl_channel_credentials((pki / f"{ca}.pem").read_bytes(), key_pem, cert_pem)
    return grpc.secure_channel(address, credentials)


def _reader_code(channel: grpc.Channel) -> Code:
    status = status_pb2_grpc.StatusServiceStub(channel)
    try:
        status.GetRunConfig(status_pb2.GetRunConfigRequest(), metadata=READER, timeout=5.0)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return Code.OK


# (row name, CA the client trusts (None = plaintext), client certificate, expected code)
TLS_ROWS = [
    ("the server's CA", "ca", None, Code.OK),
    ("an unknown CA", "other-ca", None, Code.UNAVAILABLE),
    ("plaintext to a TLS port", None, None, Code.UNAVAILABLE),
]
MTLS_ROWS = [
    ("a client certificate from the CA", "ca", "client", Code.OK),
    ("no client certificate", "ca", None, Code.UNAVAILABLE),
    ("a client certificate from another CA", "ca", "rogue", Code.UNAVAILABLE),
    ("an unknown server CA", "other-ca", "client", Code.UNAVAILABLE),
]


def test_tls_matrix(tmp_path: Path, pki: Path, tls_replica: Replica) -> None:
    with _tls_server(tmp_path, pki, tls_replica) as server:
        for row, ca, cert, expected in TLS_ROWS:
            with _tls_channel(server.address, pki, ca, cert) as channel:
                assert _reader_code(channel) == expected, row


def test_mtls_matrix(tmp_path: Path, pki: Path, tls_replica: Replica) -> None:
    with _tls_server(tmp_path, pki, tls_replica, tls_client_ca=str(pki / "ca.pem")) as server:
        for row, ca, cert, expected in MTLS_ROWS:
            with _tls_channel(server.address, pki, ca, cert) as channel:
                assert _reader_code(channel) == expected, row
