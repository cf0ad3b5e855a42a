"""Every dashboard endpoint over a fake StatusSource: content, OpenAPI, /metrics syntax, SSE, 503s."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from dashboard_helpers import EXPECTED_METRICS, parse_metrics, sse_messages
from fastapi.testclient import TestClient

from fedmezo.dashboard import app
from fedmezo.dashboard.app import STATIC_DIR, create_app
from fedmezo.dashboard.schemas import Event
from fedmezo.dashboard.source import SourceRefused, SourceUnavailable

FAKE_PARAMS = 1_000_000  # = conftest.FAKE_PARAMS


@pytest.fixture
def client(fake_source: Any) -> TestClient:
    app = create_app(fake_source, event_poll_s=0.01)
    return TestClient(app)


def test_status_has_header_fields(client: TestClient) -> None:
    doc = client.get("/api/status").json()
    assert doc["server"] == "fake:50051"
    assert doc["status"]["rounds_completed"] == 2 and doc["status"]["current_round"] == 3
    assert doc["progress"] == pytest.approx(2 / 5)
    assert doc["config"]["model"] == "tiny-random" and doc["config"]["lr_strategy"] == "round-wise"
    assert doc["config"]["lr_schedule"] == "constant"  # the default, over GetRunConfig
    assert (doc["config"]["estimator"], doc["config"]["perturbations"]) == ("mezo", 1)
    assert doc["deadline_at_unix_ms"] == 1_700_000_000_000 + 30_000 + 60_000  # round 3's, as reported
    assert doc["waiting_for_clients"] == 0
    assert doc["model_size"]["trainable_params"] == FAKE_PARAMS
    assert doc["model_size"]["weight_bytes"] == 4 * FAKE_PARAMS
    assert doc["model_size"]["source"] == "reported by the server"


def test_status_counts_clients_still_needed(client: TestClient, fake_source: Any) -> None:
    fake_source.run_state = "waiting_for_clients"
    fake_source.rounds_list = fake_source.rounds_list[:3]
    doc = client.get("/api/status").json()
    assert doc["waiting_for_clients"] == 3 - 2  # min_clients 3, two online
    assert doc["deadline_at_unix_ms"] is None


def test_rounds_have_losses_and_cumulative_bytes(client: TestClient) -> None:
    doc = client.get("/api/rounds").json()
    initial, *rounds = doc["rounds"]
    assert (
        initial["round_id"] == 0 and initial["clients"] == [] and initial["eval_loss"] == pytest.approx(3.1)
    )
    assert [r["round_id"] for r in rounds] == [1, 2, 3]
    assert [r["mean_loss"] for r in rounds] == [pytest.approx(2.6), pytest.approx(2.4), None]
    assert rounds[0]["eval_loss"] == pytest.approx(2.9)
    assert rounds[0]["eval_exact_match"] == pytest.approx(0.1)
    assert rounds[1]["eval_loss"] is None and rounds[1]["eval_exact_match"] is None
    assert [c["client_id"] for c in rounds[1]["clients"]] == ["c-a", "c-rejected", "c-b"]
    assert [r["cumulative_bytes"] for r in doc["rounds"]] == [0, 1000, 2500, 2600]
    # FedAvg: 2 directions x 4 B x params x clients that submitted (0, 2, 3, then 0 in the open round)
    per = 2 * 4 * FAKE_PARAMS
    assert [r["fedavg_cumulative_bytes"] for r in doc["rounds"]] == [0, 2 * per, 5 * per, 5 * per]
    assert doc["trainable_params"] == FAKE_PARAMS and "FedAvg" in doc["fedavg_note"]


def test_older_server_without_model_size(client: TestClient, fake_source: Any) -> None:
    fake_source.config = fake_source.config.model_copy(
        update={"trainable_params": None, "model_weight_bytes": None}
    )
    doc = client.get("/api/rounds").json()
    assert all(r["fedavg_cumulative_bytes"] is None for r in doc["rounds"])
    assert (
        doc["fedavg_note"]
        == "FedAvg comparison unavailable: trainable parameter count not reported by this server"
    )
    size = client.get("/api/status").json()["model_size"]
    assert size == {"trainable_params": None, "weight_bytes": None, "source": "not reported by this server"}


def test_clients(client: TestClient) -> None:
    clients = client.get("/api/clients").json()["clients"]
    assert [c["client_id"] for c in clients] == ["c-a", "c-b", "c-rejected"]
    a, b, rejected = clients
    assert a["online"] and a["device"] == "cuda:0" and a["last_loss"] == pytest.approx(2.3)
    assert a["in_sync"] and not b["in_sync"] and rejected["last_loss"] is None and not rejected["online"]
    assert a["peak_memory_bytes"] == 9_000_000 and a["fingerprint"] == "ab" * 32
    assert a["inference_peak_memory_bytes"] == 5_000_000 and b["inference_peak_memory_bytes"] == 0


def test_clients_come_in_pages(client: TestClient) -> None:
    first = client.get("/api/clients", params={"limit": 2}).json()
    assert [c["client_id"] for c in first["clients"]] == ["c-a", "c-b"]
    assert first["next_after"] == "c-b" and first["total"] == 3
    rest = client.get("/api/clients", params={"after": first["next_after"], "limit": 2}).json()
    assert [c["client_id"] for c in rest["clients"]] == ["c-rejected"] and rest["next_after"] == ""
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": "x" * 10_000}):
        assert client.get("/api/clients", params=bad).status_code == 422, bad


def test_a_large_run_gets_round_summaries(client: TestClient, fake_source: Any) -> None:
    full = client.get("/api/rounds").json()["rounds"]  # 3 clients: per-client rows (auto)
    summary = client.get("/api/rounds", params={"clients": "false"}).json()["rounds"]
    assert full[2]["clients"] and not any(r["clients"] for r in summary)
    for a, b in zip(full, summary, strict=True):  # what the charts read is the same either way
        for key in (
            "num_selected",
            "num_submitted",
            "cumulative_bytes",
            "fedavg_cumulative_bytes",
            "mean_loss",
        ):
            assert a[key] == b[key], key
    assert [r["num_selected"] for r in summary] == [0, 2, 3, 2] and summary[2]["num_submitted"] == 3
    template = fake_source.clients_list[0]
    fake_source.clients_list += [
        template.model_copy(update={"client_id": f"z{i:03d}"}) for i in range(app.PER_CLIENT_ROWS_MAX)
    ]
    assert not any(r["clients"] for r in client.get("/api/rounds").json()["rounds"])  # auto: too many
    assert client.get("/api/rounds", params={"clients": "true"}).json()["rounds"][2]["clients"]
    assert client.get("/api/rounds", params={"clients": "some"}).status_code == 422


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_lists_json_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/api/status", "/api/rounds", "/api/clients", "/api/events", "/metrics", "/healthz"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for name, path in (
        ("StatusResponse", "/api/status"),
        ("RoundsResponse", "/api/rounds"),
        ("ClientsResponse", "/api/clients"),
    ):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}
        assert spec["paths"][path]["get"]["responses"]["503"]
    assert {"RoundInfo", "ClientInfo", "ClientRoundInfo", "ApiError"} <= schemas.keys()
    assert "text/event-stream" in spec["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    assert "/" not in spec["paths"]


def test_metrics_parse_and_count(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(response.text)
    for name in EXPECTED_METRICS:
        assert name in samples, name
    assert all(name.startswith("fedmezo_") for name in samples)
    value = lambda name: samples[name][0][1]  # noqa: E731
    assert value("fedmezo_rounds_completed_total") == 2
    assert value("fedmezo_updates_accepted_total") == 4  # c-a, c-b twice; c-rejected is not accepted
    assert samples["fedmezo_updates_rejected_total"] == [('reason="outlier"', 1.0)]
    assert value("fedmezo_round_duration_seconds_count") == 2
    assert value("fedmezo_round_duration_seconds_sum") == pytest.approx(8.0)
    assert value("fedmezo_clients_online") == 2
    assert value("fedmezo_bytes_up_total") == 2 * 300 + 3 * 300  # rounds 1 and 2; 3 is open
    assert value("fedmezo_eval_loss") == pytest.approx(2.9)
    assert value("fedmezo_eval_exact_match") == pytest.approx(0.1)
    assert ('client_id="c-b"', 9_000_001.0) in samples["fedmezo_client_peak_memory_bytes"]


def test_metrics_escape_label_values(fake_source: Any) -> None:
    fake_source.clients_list[0] = fake_source.clients_list[0].model_copy(update={"client_id": 'a"b\\c\nd'})
    text = TestClient(create_app(fake_source)).get("/metrics").text
    assert 'client_id="a\\"b\\\\c\\nd"' in text
    parse_metrics(text)


def test_events_replay_then_close(client: TestClient) -> None:
    response = client.get("/api/events", params={"after": 0, "limit": 4})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(response.text)
    assert messages[0]["retry"] == "3000" and messages[0]["event"] == "ready"
    assert json.loads(messages[0]["data"]) == {"cursor": 0}
    events = [m for m in messages if "data" in m and "event" not in m]
    assert [int(m["id"]) for m in events] == [1, 2, 3, 4]
    kinds = [json.loads(m["data"])["kind"] for m in events]
    assert kinds == ["client_joined", "round_opened", "update_accepted", "update_accepted"]


def test_events_replay_only_closes_when_caught_up(client: TestClient) -> None:
    response = client.get("/api/events", params={"after": 2, "follow": "false"})
    events = [json.loads(m["data"]) for m in sse_messages(response.text) if "data" in m and "event" not in m]
    assert [e["cursor"] for e in events] == [3, 4, 5, 6]


def test_events_resume_from_last_event_id(client: TestClient) -> None:
    response = client.get("/api/events", params={"limit": 2}, headers={"Last-Event-ID": "4"})
    events = [json.loads(m["data"]) for m in sse_messages(response.text) if "data" in m and "event" not in m]
    assert [(e["cursor"], e["kind"]) for e in events] == [(5, "round_closed"), (6, "update_rejected")]


def test_events_follow_new_ones_with_heartbeats(fake_source: Any) -> None:
    new = Event(cursor=7, time_unix_ms=1, kind="round_opened", round_id=3, client_id="", message="")
    fake_source.event_script = [[], [], [new]]  # two empty polls, then a new event
    app = create_app(fake_source, event_poll_s=0.01, heartbeat_s=0.0)
    messages = sse_messages(TestClient(app).get("/api/events", params={"limit": 1}).text)
    assert any(m.get(":") == "heartbeat" for m in messages)
    assert json.loads(messages[0]["data"]) == {"cursor": 6}  # "now" is pinned before the stream starts
    data = [json.loads(m["data"]) for m in messages if "data" in m and "event" not in m]
    assert data == [new.model_dump()]  # only what happened after connecting


def test_events_end_when_the_app_stops(fake_source: Any) -> None:
    app = create_app(fake_source, event_poll_s=0.01)
    app.state.stopping.set()
    messages = sse_messages(TestClient(app).get("/api/events").text)  # would follow forever otherwise
    assert [m.get("event") for m in messages] == ["ready"]


def test_events_when_the_server_is_down_from_the_start(fake_source: Any) -> None:
    fake_source.down = True
    body = TestClient(create_app(fake_source)).get("/api/events", params={"follow": "false"}).text
    messages = sse_messages(body)
    assert messages[0] == {"retry": "3000"}  # no cursor to pin yet
    assert [m.get("event") for m in messages[1:]] == ["unavailable"]


def test_events_report_outage_and_recovery(fake_source: Any) -> None:
    outage = SourceUnavailable("UNAVAILABLE: connection refused")
    new = Event(cursor=7, time_unix_ms=1, kind="round_closed", round_id=3, client_id="", message="")
    fake_source.event_script = [outage, outage, [new]]
    app = create_app(fake_source, event_poll_s=0.01)
    messages = sse_messages(TestClient(app).get("/api/events", params={"after": 6, "limit": 1}).text)
    kinds = [m.get("event", "message") for m in messages if "data" in m]
    assert kinds == ["ready", "unavailable", "available", "message"]  # one banner per outage, not per poll
    unavailable = json.loads(messages[1]["data"])
    assert "connection refused" in unavailable["detail"] and unavailable["server"] == "fake:50051"


@pytest.mark.parametrize("path", ["/api/status", "/api/rounds", "/api/clients", "/metrics"])
def test_unreachable_server_gives_503_json(fake_source: Any, path: str) -> None:
    fake_source.down = True
    client = TestClient(create_app(fake_source))
    response = client.get(path)
    assert response.status_code == 503
    assert response.json() == {
        "error": "status_service_unavailable",
        "detail": "UNAVAILABLE: connection refused",
        "server": "fake:50051",
    }
    assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200


def test_refusal_gives_502(fake_source: Any) -> None:
    def refuse(*args: Any) -> None:
        raise SourceRefused("UNAUTHENTICATED: missing bearer token")

    fake_source.clients_page = refuse
    response = TestClient(create_app(fake_source)).get("/api/clients")
    assert response.status_code == 502 and response.json()["error"] == "status_service_error"
    assert "UNAUTHENTICATED" in response.json()["detail"]


def test_page_and_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css", "/static/vendor/chart.umd.min.js"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "Chart.js v4" in client.get("/static/vendor/chart.umd.min.js").text[:200]
    assert (STATIC_DIR / "vendor" / "chart.js.LICENSE.md").is_file()
    for name in ("index.html", "app.js", "style.css"):  # nothing fetched from the internet
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), name
        assert 'fetch("http' not in text and "url(http" not in text, name
