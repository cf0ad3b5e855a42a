"""Transport limits, over a real loopback server spoken to in raw HTTP/2 (tests/helpers/raw_h2.py: what an
attacker's own client sends). Every call gets a status in bounded time, every connection ends in bounded
time, one connection holds a bounded number of calls and cannot flood pings, and requests that fail
authentication are throttled per peer address.

Seen before: HEADERS with END_STREAM and no message, or a 100-byte length prefix followed by 5 bytes
and END_STREAM, got no status within 45 s; 1,000 such calls without a token on 10 connections were held
40 s, none reset; no per-connection stream limit, no connection idle or age limit. The bounds are shrunk
here (monkeypatch) so each test takes a few seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.errors
import h2.settings
import pytest
from helpers.raw_h2 import H2Call, RawConnection, grpc_frame
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    server_config,
    threaded_server,
)

import fedmezo.server.app as app_module
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
REQUEST_TIMEOUT_S = 1.0  # shrunk from 10 s
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
PATHS = (
    "/fedmezo.v1.StatusService/GetStatus",
    "/fedmezo.v1.FederationService/Join",
    "/fedmezo.v1.FederationService/StreamRoundDeltas",  # a response stream: the same rule
    "/grpc.health.v1.Health/Check",
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedServer]:
    monkeypatch.setattr(app_module, "REQUEST_TIMEOUT_S", REQUEST_TIMEOUT_S, raising=False)
    yield from _server(tmp_path)


def _server(tmp_path: Path, **overrides: Any) -> Iterator[ThreadedServer]:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{cid}:{tok}\n" for cid, tok in TOKENS.items()))
    config = server_config(tmp_path / "state", tokens=str(tokens), **overrides)
    with threaded_server(config) as srv:
        yield srv


# (name, DATA frame body or None for no DATA frame, END_STREAM)
HALF_OPEN = [
    ("headers with END_STREAM, no message", None, True),
    ("100-byte prefix, 5 bytes, END_STREAM", b"\x00\x00\x00\x00\x64abcde", True),
    ("headers, nothing more", None, False),
    ("100-byte prefix, 5 bytes, nothing more", b"\x00\x00\x00\x00\x64abcde", False),
    ("an empty DATA frame, nothing more", b"", False),
]


def test_half_open_calls_are_answered_in_bounded_time(server: ThreadedServer) -> None:
    """Every variant, on every kind of call, without a token, 3 connections x 40 calls: each gets
    INVALID_ARGUMENT (malformed_request) by the request timeout, not silence."""
    conns = [RawConnection(server.port) for _ in range(3)]
    try:
        started = time.monotonic()
        calls: list[tuple[str, H2Call]] = []
        for conn in conns:
            for path in PATHS:
                for name, body, end in HALF_OPEN:
                    calls.append((f"{name} on {path}", conn.start(path, body=body, end_stream=end)))
            for _ in range(20):
                calls.append(("headers, nothing more", conn.start(PATHS[0], body=None, end_stream=False)))
        bound = REQUEST_TIMEOUT_S + 4.0  # + a loaded machine's slack
        for conn in conns:
            conn.wait(list(conn.calls.values()), bound - (time.monotonic() - started))
        unanswered = [name for name, call in calls if call.status is None]
        assert not unanswered, f"{len(unanswered)} of {len(calls)} calls got no status: {unanswered[:3]}"
        assert {call.status for _, call in calls} == {INVALID_ARGUMENT}
        assert {call.headers.get(b"fedmezo-reason") for _, call in calls} == {b"malformed_request"}
        assert max(call.ended_at for _, call in calls) - started < bound
    finally:
        for conn in conns:
            conn.close()


def test_a_complete_request_is_still_served(server: ThreadedServer) -> None:
    """The control row: the same raw client, a whole message, is answered as usual."""
    conn = RawConnection(server.port)
    try:
        body = grpc_frame(status_pb2.GetStatusRequest().SerializeToString())
        auth = [(b"authorization", f"Bearer {TOKENS['alice']}".encode())]
        call = conn.start(PATHS[0], body=body, extra_headers=auth)
        assert conn.wait([call], RPC_TIMEOUT_S) and call.status == 0
    finally:
        conn.close()


def test_requests_failing_authentication_are_throttled_per_peer(tmp_path: Path) -> None:
    """A peer's wrong tokens are UNAUTHENTICATED until its bucket is empty, then RESOURCE_EXHAUSTED
    (rate_limited) before any lookup; a valid token from the same address is still served."""
    for srv in _server(tmp_path, unauthenticated_rps=0.5, unauthenticated_burst=5):
        with grpc.insecure_channel(srv.address) as channel:
            fed = federation_pb2_grpc.FederationServiceStub(channel)
            codes = []
            for i in range(8):
                request = fpb.HeartbeatRequest(client_id="alice")
                try:
                    fed.Heartbeat(request, metadata=bearer(f"guess-{i}"), timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as exc:
                    codes.append(exc.code())  # type: ignore[attr-defined]
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
            srv_manifest = srv.manifest
            fed.Join(join_request("alice", srv_manifest), metadata=bearer(TOKENS["alice"]), timeout=10)
            time.sleep(2.2)  # one more guess refilled (0.5/s)
            with pytest.raises(grpc.RpcError) as info:
                fed.Heartbeat(fpb.HeartbeatRequest(client_id="alice"), metadata=bearer("guess"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_one_connection_holds_a_bounded_number_of_calls(tmp_path: Path) -> None:
    for srv in _server(tmp_path, max_streams_per_connection=4):
        conn = RawConnection(srv.port)
        try:
            conn.pump(time.monotonic() + 0.5)
            assert conn.remote_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == 4
        finally:
            conn.close()


def test_an_idle_connection_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "CONNECTION_IDLE_MS", 500, raising=False)
    for srv in _server(tmp_path):
        conn = RawConnection(srv.port)
        try:
            assert conn.wait_goaway(5.0), "an idle connection stayed open"
            assert conn.wait_closed(5.0)
        finally:
            conn.close()


def test_an_old_connection_is_drained_and_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At its age limit a connection gets GOAWAY; a call still open then gets the grace, and then the
    connection is closed: a following stream cannot keep it forever."""
    monkeypatch.setattr(app_module, "CONNECTION_AGE_MS", 1000, raising=False)
    monkeypatch.setattr(app_module, "CONNECTION_AGE_GRACE_MS", 1000, raising=False)
    for srv in _server(tmp_path, max_wait_s=60.0):
        with grpc.insecure_channel(srv.address) as channel:
            fed = federation_pb2_grpc.FederationServiceStub(channel)
            fed.Join(join_request("alice", srv.manifest), metadata=bearer(TOKENS["alice"]), timeout=10)
        conn = RawConnection(srv.port)
        try:
            body = grpc_frame(fpb.GetTaskRequest(client_id="alice", wait_s=60.0).SerializeToString())
            auth = [(b"authorization", f"Bearer {TOKENS['alice']}".encode())]
            started = time.monotonic()
            poll = conn.start("/fedmezo.v1.FederationService/GetTask", body=body, extra_headers=auth)
            assert conn.wait_goaway(5.0), "no GOAWAY at the age limit"
            assert not poll.answered  # the long-poll is still open: it gets the grace
            assert conn.wait_closed(6.0), "the long-poll outlived the age limit and its grace"
            assert time.monotonic() - started < 8.0
        finally:
            conn.close()


def test_a_ping_flood_ends_the_connection(server: ThreadedServer) -> None:
    """Pings without calls more often than every 10 s: the third early one is GOAWAY too_many_pings."""
    conn = RawConnection(server.port)
    try:
        conn.pump(time.monotonic() + 0.2)
        for i in range(10):
            conn.conn.ping(i.to_bytes(8, "big"))
            conn._flush()
            if conn.wait_goaway(0.2):
                break
        assert conn.goaway is not None, "the server answered every ping"
        assert conn.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        conn.close()
