"""The dashboard against a real fedmezo server on loopback that has closed three tiny-random rounds."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import grpc
import httpx
import pytest
from dashboard_helpers import (
    EXPECTED_METRICS,
    LIVE_CLIENTS,
    LIVE_INFERENCE_MEMORY,
    LIVE_PEAK_MEMORY,
    live_mean_loss,
    parse_metrics,
    sse_messages,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fedmezo.cli.main import build_parser
from fedmezo.dashboard.app import create_app
from fedmezo.dashboard.source import GrpcStatusSource

TINY_RANDOM_PARAMS = 1_673_664  # tiny-random's trainable parameters (full mode; tied weights once)


@pytest.fixture
def client(live_source: GrpcStatusSource) -> TestClient:
    return TestClient(create_app(live_source, event_poll_s=0.05))


def test_status_of_a_live_run(client: TestClient, live_run: Any) -> None:
    doc = client.get("/api/status").json()
    status = doc["status"]
    assert status["run_state"] == "round_open" and status["current_round"] == 4
    assert status["rounds_completed"] == 3 and status["total_rounds"] == 5
    assert status["fingerprint"] == live_run.fingerprint
    assert status["clients_online"] >= 3 and status["bytes_up"] > 0  # other tests may add clients
    assert doc["progress"] == pytest.approx(3 / 5)
    assert doc["config"]["model"] == "tiny-random" and doc["config"]["mode"] == "full"
    assert doc["config"]["lr_strategy"] == "round-wise" and doc["config"]["local_steps"] == 4
    assert doc["deadline_at_unix_ms"] > time.time() * 1000  # 600 s deadline, round 4 just opened
    assert doc["model_size"] == {
        "trainable_params": TINY_RANDOM_PARAMS,
        "weight_bytes": 4 * TINY_RANDOM_PARAMS,
        "source": "reported by the server",
    }


def test_rounds_of_a_live_run(client: TestClient) -> None:
    doc = client.get("/api/rounds").json()
    initial, *rounds = doc["rounds"]
    assert initial["round_id"] == 0 and initial["clients"] == [] and initial["cumulative_bytes"] == 0
    evals = [(r["eval_loss"], r["eval_exact_match"]) for r in doc["rounds"][:4]]  # θ_0 and rounds 1-3
    for loss, exact in evals:  # real server-side evaluation of the tiny-random replica
        assert loss is not None and 0 < loss < 20 and exact is not None and 0 <= exact <= 1
    assert len({loss for loss, _ in evals}) == 4  # the model changed every round
    assert [(r["round_id"], r["state"]) for r in rounds] == [
        (1, "closed"),
        (2, "closed"),
        (3, "closed"),
        (4, "open"),
    ]
    for r in rounds[:3]:
        by_client = {c["client_id"]: c for c in r["clients"]}
        assert sorted(by_client) == list(LIVE_CLIENTS)
        for cid, c in by_client.items():
            assert c["accepted"] and c["mean_loss"] == pytest.approx(
                live_mean_loss(cid, r["round_id"]), rel=1e-5
            )
            assert c["peak_memory_bytes"] == LIVE_PEAK_MEMORY[cid] and len(c["losses"]) == 4
        mean = sum(live_mean_loss(cid, r["round_id"]) for cid in LIVE_CLIENTS) / 3
        assert r["mean_loss"] == pytest.approx(mean, rel=1e-5)
        assert len(r["fingerprint"]) == 64 and r["num_seeds"] == 12
    assert rounds[3]["mean_loss"] is None and rounds[3]["eval_loss"] is None
    cumulative = [r["cumulative_bytes"] for r in rounds]
    assert cumulative == sorted(cumulative) and cumulative[2] < 3 * 3 * 1024  # < 1 KiB per client-round
    fedavg = rounds[2]["fedavg_cumulative_bytes"]
    assert fedavg == 3 * 3 * 2 * 4 * doc["trainable_params"]
    assert fedavg / cumulative[2] > 1e4  # seeds and scalars: orders of magnitude fewer bytes


def test_clients_of_a_live_run(client: TestClient, live_run: Any) -> None:
    clients = {c["client_id"]: c for c in client.get("/api/clients").json()["clients"]}
    assert set(LIVE_CLIENTS) <= clients.keys()
    for cid in LIVE_CLIENTS:
        c = clients[cid]
        assert c["online"] and c["in_sync"] and c["fingerprint"] == live_run.fingerprint
        assert c["rounds_participated"] == 3 and c["fingerprint_version"] == 3
        assert c["last_loss"] == pytest.approx(live_mean_loss(cid, 3), rel=1e-5)
        assert c["peak_memory_bytes"] == LIVE_PEAK_MEMORY[cid] and c["bytes_up"] > 0 and c["bytes_down"] > 0
        assert c["last_heartbeat_unix_ms"] > 0
        assert c["inference_peak_memory_bytes"] == LIVE_INFERENCE_MEMORY[cid]
    assert clients["client-1"]["device"] == "cuda:0 NVIDIA H100"


def test_round_summaries_and_client_pages_of_a_live_run(client: TestClient) -> None:
    """ListRounds summary=true and one ListClients page, against the real server."""
    full = client.get("/api/rounds", params={"clients": "true"}).json()["rounds"]
    summary = client.get("/api/rounds", params={"clients": "false"}).json()["rounds"]
    assert [r["round_id"] for r in summary] == [r["round_id"] for r in full]
    assert not any(r["clients"] for r in summary) and all(r["clients"] for r in full[1:])
    for a, b in zip(full, summary, strict=True):
        assert a["num_selected"] == len(a["clients"]) == b["num_selected"]
        assert a["num_submitted"] == sum(c["submitted"] for c in a["clients"]) == b["num_submitted"]
        for key in ("bytes_up", "bytes_down", "cumulative_bytes", "fedavg_cumulative_bytes", "mean_loss"):
            assert a[key] == b[key], key
    first = client.get("/api/clients", params={"limit": 2}).json()
    assert len(first["clients"]) == 2 and first["total"] >= len(LIVE_CLIENTS) and first["next_after"]
    rest = client.get("/api/clients", params={"after": first["next_after"], "limit": 1000}).json()
    ids = [c["client_id"] for c in first["clients"] + rest["clients"]]
    assert ids == sorted(ids) and len(ids) == first["total"] and rest["next_after"] == ""


def test_metrics_of_a_live_run(client: TestClient) -> None:
    rounds = client.get("/api/rounds").json()["rounds"]
    samples = parse_metrics(client.get("/metrics").text)
    for name in EXPECTED_METRICS:
        assert name in samples, name
    value = lambda name: samples[name][0][1]  # noqa: E731
    assert value("fedmezo_rounds_completed_total") == 3 and value("fedmezo_current_round") == 4
    assert value("fedmezo_updates_accepted_total") == 9
    assert samples["fedmezo_updates_rejected_total"] == [('reason="outlier"', 0.0)]
    assert value("fedmezo_round_duration_seconds_count") == 3
    assert value("fedmezo_eval_round") == 3
    assert value("fedmezo_eval_loss") == pytest.approx(rounds[3]["eval_loss"])
    peaks = dict(samples["fedmezo_client_peak_memory_bytes"])
    assert peaks['client_id="client-2"'] == 9_300_000
    assert math.isfinite(value("fedmezo_train_loss"))


def test_events_of_a_live_run(client: TestClient) -> None:
    response = client.get("/api/events", params={"after": 0, "follow": "false"})
    events = [json.loads(m["data"]) for m in sse_messages(response.text) if "data" in m and "event" not in m]
    kinds = [e["kind"] for e in events]
    for r in (0, 1, 2, 3):  # the server's evaluation of θ_0 and of every closed round
        assert any(e["kind"] == "eval" and e["round_id"] == r for e in events), r
    for r in (1, 2, 3, 4):
        assert any(e["kind"] == "round_opened" and e["round_id"] == r for e in events), r
    for r in (1, 2, 3):
        assert any(e["kind"] == "round_closed" and e["round_id"] == r for e in events), r
        reported = {e["client_id"] for e in events if e["kind"] == "update_accepted" and e["round_id"] == r}
        assert reported == set(LIVE_CLIENTS)  # one event per client report
    cursors = [e["cursor"] for e in events]
    assert cursors == sorted(set(cursors)) and "client_joined" in kinds


def test_live_event_reaches_an_open_stream(
    live_run: Any, live_source: GrpcStatusSource, http_server: Any
) -> None:
    """A client that joins while the stream is open shows up on it (uvicorn over real sockets)."""
    app = create_app(live_source, event_poll_s=0.05)
    with http_server(app) as base, httpx.stream("GET", f"{base}/api/events", timeout=20) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("retry:") and next(lines) == "event: ready"
        live_run.join_client("client-late")  # after "ready": the stream's start cursor is pinned
        for line in lines:
            if line.startswith("data:") and "cursor" in line and "kind" in line:
                event = json.loads(line.removeprefix("data:"))
                assert event["client_id"] == "client-late" and event["kind"] == "client_joined"
                break


def test_unreachable_server_gives_503(unused_port: int) -> None:
    address = f"127.0.0.1:{unused_port}"
    source = GrpcStatusSource(grpc.insecure_channel(address), address, deadline_s=2.0)
    try:
        client = TestClient(create_app(source))
        started = time.monotonic()
        response = client.get("/api/status")
        assert response.status_code == 503 and time.monotonic() - started < 5
        body = response.json()
        assert body["error"] == "status_service_unavailable" and body["server"] == address
        assert "UNAVAILABLE" in body["detail"] or "DEADLINE_EXCEEDED" in body["detail"]
    finally:
        source.close()


def test_cli_wires_the_status_channel(live_run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fedmezo dashboard` builds the channel like `fedmezo status` and hands uvicorn a working app."""
    import uvicorn

    served: dict[str, Any] = {}

    def fake_run(server: uvicorn.Server, sockets: Any = None) -> None:
        config, app = server.config, server.config.app
        assert isinstance(app, FastAPI)
        served.update(host=config.host, port=config.port)
        served["status"] = TestClient(app).get("/api/status").json()
        server.handle_exit(2, None)  # Ctrl-C
        served["stopping"] = app.state.stopping.is_set()

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    args = build_parser().parse_args(
        ["dashboard", "--server", live_run.address, "--insecure", "--port", "8099", "--token", "t0k"]
    )
    assert args.func(args) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8099
    assert served["status"]["status"]["rounds_completed"] == 3
    assert served["stopping"]  # Ctrl-C ends open event streams
