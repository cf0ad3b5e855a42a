"""No token material in any log line, and no traceback for a client's mistake or cancellation, over a
real loopback server spoken to in raw HTTP/2 (an attacker's own client sends what grpc's never would).

Seen before: a malformed (non-UTF-8) authorization value made the grpc library log two ERROR tracebacks
quoting the whole header, token included; a DownloadCheckpoint the client cancelled mid-stream logged an
ExecuteBatchError traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import pytest
from helpers.raw_h2 import RawConnection, grpc_frame
from helpers.threaded_server import (
    RPC_TIMEOUT_S,
    ThreadedServer,
    bearer,
    join_request,
    play_round,
    server_config,
    threaded_server,
)

from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc, status_pb2

SECRET = b"tok-alice-S3CRET"
STEPS = 4
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """Tokens for alice and bob; round 1 closed with a checkpoint (checkpoint_every=1)."""
    tmp = tmp_path_factory.mktemp("logs")
    (tmp / "tokens.txt").write_text(f"alice:{SECRET.decode()}\nbob:tok-bob\n")
    config = server_config(
        tmp / "state", tokens=str(tmp / "tokens.txt"), local_steps=STEPS, checkpoint_every=1
    )
    with threaded_server(config) as srv, grpc.insecure_channel(srv.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        players = {"alice": SECRET.decode(), "bob": "tok-bob"}
        for cid, token in players.items():
            fed.Join(join_request(cid, srv.manifest), metadata=bearer(token), timeout=RPC_TIMEOUT_S)
        play_round(channel, players, 1, STEPS)
        yield srv


def _leaks(caplog: pytest.LogCaptureFixture, captured: str) -> list[str]:
    """Log lines (records and the process's stderr/stdout: grpc core logs there) that quote the token
    or carry a traceback."""
    found = []
    for record in caplog.records:
        text = record.getMessage()
        if "S3CRET" in text or record.exc_info or record.levelno >= logging.ERROR:
            found.append(f"{record.name} {record.levelname}: {text[:200]}")
    found += [line for line in captured.splitlines() if "S3CRET" in line or "Traceback" in line]
    return found


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer " + SECRET + b"\xff\xfe",  # not UTF-8
        b"Bearer " + SECRET[:-1] + b"\xc3",  # a truncated UTF-8 sequence
        b"Bearer \xe9" + SECRET,  # latin-1
        b"\xff" + SECRET,
    ],
)
def test_a_malformed_authorization_value_is_refused_and_never_logged(
    server: ThreadedServer, value: bytes, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    capfd.readouterr()
    conn = RawConnection(server.port)
    try:
        body = grpc_frame(status_pb2.GetStatusRequest().SerializeToString())
        calls = [
            conn.start(
                "/fedmezo.v1.StatusService/GetStatus", body=body, extra_headers=[(b"authorization", value)]
            ),
            conn.start(
                "/fedmezo.v1.FederationService/Heartbeat",
                body=grpc_frame(fpb.HeartbeatRequest(client_id="alice").SerializeToString()),
                extra_headers=[(b"authorization", value)],
            ),
        ]
        assert conn.wait(calls, RPC_TIMEOUT_S)
        assert [c.status for c in calls] == [UNAUTHENTICATED, UNAUTHENTICATED]
    finally:
        conn.close()
    time.sleep(0.2)  # let the server's thread finish logging
    assert not _leaks(caplog, "".join(capfd.readouterr()))


def test_a_cancelled_checkpoint_download_logs_no_traceback(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The client resets the stream, or drops the connection, while chunks are being written."""
    caplog.set_level(logging.DEBUG)
    capfd.readouterr()
    body = grpc_frame(fpb.DownloadCheckpointRequest(client_id="alice").SerializeToString())
    auth = [(b"authorization", b"Bearer " + SECRET)]
    for how in ("reset", "reset", "drop", "drop"):
        conn = RawConnection(server.port)
        call = conn.start("/fedmezo.v1.FederationService/DownloadCheckpoint", body=body, extra_headers=auth)
        until = time.monotonic() + RPC_TIMEOUT_S
        while not call.data and time.monotonic() < until:
            conn.pump(time.monotonic() + 0.01)
        assert call.data, "the download never started"
        if how == "reset":
            conn.conn.reset_stream(call.stream_id)
            conn.pump(time.monotonic() + 0.3)
            conn.close()
        else:
            conn.sock.close()
    time.sleep(1.0)  # the server notices the broken writes
    assert not _leaks(caplog, "".join(capfd.readouterr()))
