"""`fedmezo status --json` fields (full and --summary), and the bytes a round costs per client (measured at
the gRPC layer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers.server_rpc import FakeClient, grads_for, running_server

from fedmezo.cli.main import main as cli_main
from fedmezo.fl.replica import Replica
from fedmezo.v1 import federation_pb2 as fpb

LOCAL_STEPS = 20  # the acceptance setting
ROUND_BUDGET_BYTES = 1024


def test_status_json_and_bytes_per_client_per_round(
    tmp_path: Path, replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> tuple[dict, dict, str]:  # type: ignore[type-arg]
        async with running_server(tmp_path, replica, rounds=2, local_steps=LOCAL_STEPS) as app:
            ids = ["client-0", "client-1", "client-2"]
            clients = [FakeClient(app.port, c, manifest=replica.manifest_sha256) for c in ids]
            for c in clients:
                await c.join()
            for r in (1, 2):
                tasks = await asyncio.gather(*(c.get_task(r - 1, 5.0) for c in clients))
                for c, t in zip(clients, tasks):
                    activity = fpb.CLIENT_ACTIVITY_TRAINING
                    hb = fpb.HeartbeatRequest(
                        client_id=c.client_id, model_version=r - 1, activity=activity, round_id=r, step=10
                    )
                    await c.fed.Heartbeat(hb, **c.kw())
                    losses = [2.5 - 0.01 * i for i in range(LOCAL_STEPS)]
                    await c.submit(t.task.round_id, grads_for(c.client_id, r, LOCAL_STEPS), losses)
                for c in clients:
                    msg = await c.wait_delta(r)
                    await c.report(r, msg.fingerprint)
            await app.coordinator.idle()
            capsys.readouterr()
            status = ["status", "--server", f"127.0.0.1:{app.port}", "--insecure"]
            outs = []
            for extra in (["--json"], ["--json", "--summary"], ["--summary"]):
                assert await asyncio.to_thread(cli_main, [*status, *extra]) == 0
                outs.append(capsys.readouterr().out)
            for c in clients:
                await c.close()
            return json.loads(outs[0]), json.loads(outs[1]), outs[2]

    doc, summary, text = asyncio.run(main())
    assert doc["rounds_completed"] == 2 and doc["run_state"] == "finished"
    assert doc["fingerprint"] == replica.fingerprint().hex()
    assert {c["id"] for c in doc["clients"]} == {"client-0", "client-1", "client-2"}
    for c in doc["clients"]:
        assert c["fingerprint"] == doc["fingerprint"] and c["in_sync"] and isinstance(c["online"], bool)
        assert c["online"] and c["last_loss"] == pytest.approx(2.5 - 0.01 * 9.5, rel=1e-5)
    assert doc["config"]["model"] == "tiny-random" and doc["config"]["local_steps"] == LOCAL_STEPS
    for r in doc["rounds"]:
        assert {"round", "mean_loss", "bytes_up", "bytes_down"} <= r.keys()
        assert r["mean_loss"] == pytest.approx(2.5 - 0.01 * 9.5, rel=1e-5)
        per_client = (r["bytes_up"] + r["bytes_down"]) / len(r["participants"])
        print(
            f"round {r['round']}: {per_client:.0f} B per client (up {r['bytes_up']}, down {r['bytes_down']})"
        )
        assert len(r["participants"]) == 3 and per_client <= ROUND_BUDGET_BYTES
        assert r["num_selected"] == r["num_submitted"] == 3
    # --summary: the same run as counts; no client list, no per-client rows, every other field equal
    assert doc["clients_total"] == summary["clients_total"] == 3 and "clients" not in summary
    assert [r["round"] for r in summary["rounds"]] == [r["round"] for r in doc["rounds"]]
    for full, short in zip(doc["rounds"], summary["rounds"], strict=True):
        assert "clients" not in short and "participants" not in short
        assert {k: v for k, v in full.items() if k not in ("clients", "participants")} == short
    assert {k: v for k, v in doc.items() if k not in ("clients", "rounds")} == {
        k: v for k, v in summary.items() if k != "rounds"
    }
    assert "3 of 3 clients online" in text and "3/3 submitted" in text and "client-0" not in text
