"""The page in a real headless Chromium (Debian's, driven by Playwright) against a live server: charts
drawn with data, client table filled, live update over SSE without reload, banner when unreachable.
Saves artifacts/dashboard.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedmezo.dashboard.app import create_app
from fedmezo.dashboard.source import GrpcStatusSource

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CLIENTS = ("client-0", "client-1", "client-2")  # = conftest.LIVE_CLIENTS
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} missing: run `bash scripts/install_browser.sh` (Debian chromium)",
)

# Points each chart really holds, per dataset (null gaps excluded), and painted pixels per canvas.
CHART_POINTS_JS = """() => Object.fromEntries(Object.entries(window.fedmezoDashboard.charts).map(([id, c]) =>
  [id, c.data.datasets.map(d => d.data.filter(v => v !== null && v !== undefined).length)]))"""
PAINTED_PIXELS_JS = """() => Object.fromEntries([...document.querySelectorAll('canvas')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return [c.id, n]; }))"""


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.goto(url)
    return page, errors


def test_dashboard_shows_a_live_run(browser: Any, live_run: Any, live_source: Any, http_server: Any) -> None:
    app = create_app(live_source, event_poll_s=0.2)
    with http_server(app) as base:
        page, errors = open_page(browser, f"{base}/")
        page.wait_for_function("() => (window.fedmezoDashboard || {}).refreshes > 0", timeout=TIMEOUT_MS)
        page.wait_for_selector("#live.on", timeout=TIMEOUT_MS)  # the event stream is open and "ready"

        # Header
        assert page.inner_text("#round-label") == "Round 4 of 5"
        assert page.inner_text("#run-state") == "round open"
        assert page.inner_text("#model") == "tiny-random" and page.inner_text("#mode") == "full-parameter"
        assert page.inner_text("#lr").startswith("round-wise")
        assert page.inner_text("#estimator") == "mezo · P = 1 · per-client seeds"  # from the real server
        assert page.inner_text("#deadline").startswith("deadline in")
        assert page.get_attribute(".progress", "aria-valuenow") == "60"
        assert page.is_hidden("#banner")

        # Charts: data points per dataset, and pixels actually painted
        points = page.evaluate(CHART_POINTS_JS)
        assert points["chart-loss"] == [3, 3, 3, 3]  # mean + one line per client, 3 closed rounds
        assert points["chart-eval"] == [4, 4]  # eval loss, exact match: θ_0 and rounds 1-3
        assert points["chart-memory"] == [3, 3, 3]  # training peak, inference peak, weights line
        assert points["chart-bytes"] == [4, 4]  # ours and FedAvg, rounds 1-4
        painted = page.evaluate(PAINTED_PIXELS_JS)
        assert set(painted) == {"chart-loss", "chart-eval", "chart-memory", "chart-bytes"}
        for canvas, pixels in painted.items():
            assert pixels > 2000, (canvas, pixels)
        for empty in ("#loss-empty", "#eval-empty", "#memory-empty", "#bytes-empty"):
            assert page.is_hidden(empty), empty
        assert "fewer bytes than FedAvg" in page.inner_text("#bytes-note")
        assert "measured peak of one plain forward" in page.inner_text("#memory-note")

        # Client table
        rows = page.locator("#clients-body tr[data-client]")
        ids = [rows.nth(i).get_attribute("data-client") for i in range(rows.count())]
        assert set(CLIENTS) <= set(ids)
        row = page.inner_text('#clients-body tr[data-client="client-1"]')
        assert "cuda:0 NVIDIA H100" in row and "in sync @ v3" in row and "MiB" in row

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # Live update over SSE: a client joins, its row appears without a reload
        page.evaluate("() => { window.__notReloaded = true; }")
        live_run.join_client("client-browser")
        page.wait_for_selector('#clients-body tr[data-client="client-browser"]', timeout=TIMEOUT_MS)
        assert page.evaluate("() => window.__notReloaded === true")
        assert not errors, errors
        page.close()


def test_banner_when_the_server_is_unreachable(browser: Any, unused_port: int, http_server: Any) -> None:
    address = f"127.0.0.1:{unused_port}"
    source = GrpcStatusSource(grpc.insecure_channel(address), address, deadline_s=2.0)
    try:
        with http_server(create_app(source, event_poll_s=0.2)) as base:
            page, errors = open_page(browser, f"{base}/")
            page.wait_for_selector("#banner:not([hidden])", timeout=TIMEOUT_MS)
            banner = page.inner_text("#banner")
            assert "Cannot reach the fedmezo server" in banner and address in banner
            assert page.evaluate("() => document.querySelectorAll('#clients-body tr').length") == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-unreachable.png"))
            # the failed API calls are expected console noise (503); no script error must occur
            assert not [e for e in errors if e.startswith("page error")], errors
            page.close()
    finally:
        source.close()


def test_the_client_table_pages_through_a_large_run(browser: Any, http_server: Any, fake_source: Any) -> None:
    """250 clients: the table shows 100 at a time and pages with its buttons; the rounds come as
    summaries (no per-client rows), and the charts still draw the mean loss."""
    template = fake_source.clients_list[0]
    fake_source.clients_list = [template.model_copy(update={"client_id": f"n{i:03d}"}) for i in range(250)]
    with http_server(create_app(fake_source, event_poll_s=0.2)) as base:
        page, errors = open_page(browser, f"{base}/")

        def shown() -> tuple[str, str, int]:
            rows = page.locator("#clients-body tr[data-client]")
            first = rows.nth(0).get_attribute("data-client") or ""
            return first, page.inner_text("#clients-range"), rows.count()

        page.wait_for_selector('#clients-body tr[data-client="n000"]', timeout=TIMEOUT_MS)
        assert shown() == ("n000", "clients 1–100 of 250", 100)
        assert page.is_disabled("#clients-prev") and page.is_enabled("#clients-next")
        page.click("#clients-next")
        page.wait_for_selector('#clients-body tr[data-client="n100"]', timeout=TIMEOUT_MS)
        assert shown() == ("n100", "clients 101–200 of 250", 100)
        page.click("#clients-next")
        page.wait_for_selector('#clients-body tr[data-client="n200"]', timeout=TIMEOUT_MS)
        assert shown() == ("n200", "clients 201–250 of 250", 50) and page.is_disabled("#clients-next")
        page.click("#clients-prev")
        page.wait_for_selector('#clients-body tr[data-client="n100"]', timeout=TIMEOUT_MS)
        assert shown()[1] == "clients 101–200 of 250"
        rounds = page.evaluate("() => window.fedmezoDashboard.rounds.rounds")
        assert rounds and not any(r["clients"] for r in rounds)  # summaries: 250 > 64 clients
        assert page.evaluate("() => window.fedmezoDashboard.charts['chart-loss'].data.datasets.length") == 1
        assert not errors, errors
        page.close()
