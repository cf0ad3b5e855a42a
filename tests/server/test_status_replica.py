"""`fedmezo status-server`: the status service read from the server's state database by another gRPC
server, over real sockets and the real SQLite file. It shows what the server shows (`fedmezo status
--json` documents equal, presence and byte counts once published), follows new events by itself, and
serves no federation calls."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.server_rpc import FakeClient, grads_for, make_config, running_server

from fedmezo.cli.main import main as cli_main
from fedmezo.fl.replica import Replica
from fedmezo.server.status_replica import build_status_app
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.v1 import status_pb2

STEPS = 4


async def _status(port: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    argv = ["status", "--server", f"127.0.0.1:{port}", "--json", "--insecure"]
    assert await asyncio.to_thread(cli_main, argv) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the replica did not catch up"
        await asyncio.sleep(0.2)


def test_replica_serves_what_the_server_serves(
    tmp_path: Path, replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with running_server(tmp_path, replica, rounds=3, local_steps=STEPS) as app:
            clients = [
                FakeClient(app.port, f"client-{i}", manifest=replica.manifest_sha256) for i in range(3)
            ]
            for c in clients:
                await c.join()
            tasks = await asyncio.gather(*(c.get_task(0, 5.0) for c in clients))
            for c, t in zip(clients, tasks, strict=True):
                await c.submit(t.task.round_id, grads_for(c.client_id, 1, STEPS), [2.0] * STEPS)
            for c in clients:
                await c.report(1, (await c.wait_delta(1)).fingerprint)
            await app.coordinator.idle()
            app.coordinator.publish_status()  # what the server does every 2 s

            status_app = build_status_app(make_config(tmp_path))  # the same state dir, another port
            await status_app.start()
            try:
                primary, copy = await _status(app.port, capsys), await _status(status_app.port, capsys)
                for doc in (primary, copy):  # an open round's duration is "until now": read apart
                    for r in doc["rounds"]:
                        if r["state"] == "open":
                            assert r.pop("duration_s") >= 0
                assert copy == primary  # rounds, clients (online, in sync, bytes), config, fingerprint
                assert copy["rounds_completed"] == 1 and len(copy["clients"]) == 3
                assert all(c["online"] and c["in_sync"] for c in copy["clients"])
                assert copy["rounds"][0]["bytes_up"] > 0 and copy["config"]["local_steps"] == STEPS

                # it follows the server by itself: a fourth client's join (an event, a client row and,
                # once published, its presence) shows up without anyone touching the replica
                late = FakeClient(app.port, "client-late", manifest=replica.manifest_sha256)
                await late.join()
                reader = FakeClient(status_app.port, "operator")

                async def joined() -> bool:
                    listed = await reader.status.ListClients(status_pb2.ListClientsRequest(), **reader.kw())
                    late_row = [c for c in listed.clients if c.client_id == "client-late"]
                    return bool(late_row) and late_row[0].online

                await _until(joined)
                events = await reader.status.ListEvents(status_pb2.ListEventsRequest(), **reader.kw())
                assert any(e.client_id == "client-late" for e in events.events)

                # read-only: no federation service here
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await reader.fed.Heartbeat(fpb.HeartbeatRequest(client_id="operator"), **reader.kw())
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
                for c in (*clients, late, reader):
                    await c.close()
            finally:
                await status_app.stop()

    asyncio.run(main())


def test_a_dir_without_a_server_is_refused_clearly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["status-server", "--state-dir", str(tmp_path / "nothing"), "--insecure", "--port", "0"]
    assert cli_main(argv) == 2
    assert "no state database" in caplog.text
    assert cli_main(["status-server", "--state-dir", str(tmp_path)]) == 2  # neither TLS nor --insecure
    assert "insecure" in caplog.text
