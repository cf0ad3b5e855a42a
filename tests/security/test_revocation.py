"""Revocation applies to calls already open (README, "Revoking a token"): once the tokens file drops a
line, the server notices within about a second, without any new call arriving, and that token's waiting
GetTask long-poll and following StreamRoundDeltas end at once with UNAUTHENTICATED, not when the next
round closes. Other clients' streams stay open. Real loopback gRPC, real SQLite."""

from __future__ import annotations

import threading
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
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import federation_pb2_grpc

STEPS = 4
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "carol": "tok-carol"}
CALL_TIMEOUT_S = 20.0  # what the calls would run into without revocation (the round never closes)
ENDED_WITHIN_S = 6.0  # the file check (1 s) plus a loaded CI machine's slack


def _write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.write_text("".join(f"{cid}:{tok}\n" for cid, tok in tokens.items()))


class Outcome:
    """A blocking call run in a thread: its status code, reason and when it ended."""

    def __init__(self, fn: Any) -> None:
        self.code: grpc.StatusCode | None = None
        self.reason = ""
        self.ended_at = 0.0
        self.messages: list[Any] = []
        self.call: Any = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Any) -> None:
        try:
            result = self.call = fn()
            if hasattr(result, "__iter__"):
                for message in result:
                    self.messages.append(message)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code = exc.code()  # type: ignore[attr-defined]
            self.reason = dict(exc.trailing_metadata() or ()).get(REASON_METADATA_KEY, "")  # type: ignore[attr-defined]
        self.ended_at = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ThreadedServer, grpc.Channel, Path]]:
    """alice and bob closed round 1; round 2 is open with them; carol joined after and waits."""
    tokens = tmp_path / "tokens.txt"
    _write_tokens(tokens, TOKENS)
    config = server_config(
        tmp_path / "state", tokens=str(tokens), local_steps=STEPS, max_wait_s=CALL_TIMEOUT_S
    )
    with threaded_server(config) as srv, grpc.insecure_channel(srv.address) as channel:
        fed = federation_pb2_grpc.FederationServiceStub(channel)
        for cid in ("alice", "bob"):
            fed.Join(join_request(cid, srv.manifest), metadata=bearer(TOKENS[cid]), timeout=RPC_TIMEOUT_S)
        play_round(channel, {c: TOKENS[c] for c in ("alice", "bob")}, 1, STEPS)
        fed.Join(join_request("carol", srv.manifest), metadata=bearer(TOKENS["carol"]), timeout=RPC_TIMEOUT_S)
        yield srv, channel, tokens


def test_revocation_ends_open_long_polls_and_streams_at_once(server: Any) -> None:
    srv, channel, tokens = server
    fed = federation_pb2_grpc.FederationServiceStub(channel)
    carol, alice = bearer(TOKENS["carol"]), bearer(TOKENS["alice"])
    poll = Outcome(
        lambda: fed.GetTask(
            fpb.GetTaskRequest(client_id="carol", known_version=1, wait_s=CALL_TIMEOUT_S),
            metadata=carol,
            timeout=CALL_TIMEOUT_S + 5,
        )
    )
    follow = Outcome(
        lambda: fed.StreamRoundDeltas(
            fpb.StreamRoundDeltasRequest(client_id="carol", from_round=2, follow=True),
            metadata=carol,
            timeout=CALL_TIMEOUT_S,
        )
    )
    others = Outcome(
        lambda: fed.StreamRoundDeltas(
            fpb.StreamRoundDeltasRequest(client_id="alice", from_round=2, follow=True),
            metadata=alice,
            timeout=CALL_TIMEOUT_S,
        )
    )
    time.sleep(1.5)  # all three are waiting: no task for carol, round 2 never closes
    assert poll.running and follow.running and others.running
    _write_tokens(tokens, {c: t for c, t in TOKENS.items() if c != "carol"})
    revoked_at = time.monotonic()
    for call in (poll, follow):
        call.join(ENDED_WITHIN_S + 2)
        assert (call.code, call.reason) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        assert call.ended_at - revoked_at < ENDED_WITHIN_S
    assert others.running, "alice's token was not revoked: her stream stays open"
    srv.call(_revoke_nothing_more(srv))
    time.sleep(0.5)
    assert others.running
    others.call.cancel()
    others.join(5.0)
    assert others.code == grpc.StatusCode.CANCELLED  # we hung up: it was still open


async def _revoke_nothing_more(srv: ThreadedServer) -> None:
    """A reload that revokes nobody (SIGHUP's path) wakes the waiters, and they carry on."""
    assert srv.app.auth is not None and srv.app.auth.reload()
