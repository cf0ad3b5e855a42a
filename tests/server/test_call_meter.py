"""Server-side call latency: a fixed-memory histogram per method whose percentiles are never below the
truth and at most ~9 % above it, fed by every unary call the server answers."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from helpers.server_rpc import FakeClient, running_server

from fedmezo.fl.replica import Replica
from fedmezo.server.call_meter import CallMeter

JOIN = "/fedmezo.v1.FederationService/Join"


def test_percentiles_bound_the_truth_within_a_bucket() -> None:
    meter = CallMeter()
    durations = [i * 1e-3 for i in range(1, 1001)]  # 1 ms .. 1 s
    for d in durations:
        meter.record("m", d)
    assert meter.count("m") == 1000
    for q in (50, 99, 100):
        truth = durations[math.ceil(1000 * q / 100) - 1]
        got = meter.percentile_s("m", q)
        assert truth <= got <= truth * 1.095, (q, truth, got)
    assert math.isnan(meter.percentile_s("other", 50))
    meter.record("m", math.nan)  # a clock oddity lands in the first bucket, not an exception
    meter.record("m", 0.0)
    assert meter.count("m") == 1002
    assert "m 1002 p50" in meter.summary()


def test_every_answered_call_is_counted_under_its_method(tmp_path: Path, replica: Replica) -> None:
    async def main() -> CallMeter:
        async with running_server(tmp_path, replica) as app:
            manifest = app.coordinator.replica.manifest_sha256
            clients = [FakeClient(app.port, f"c{i}", manifest=manifest) for i in range(3)]
            for c in clients:
                await c.join()
                await c.close()
            return app.calls

    calls = asyncio.run(main())
    assert calls.count(JOIN) == 3
    assert 0.0 < calls.percentile_s(JOIN, 99) < 10.0
    assert "Join 3 p50" in calls.summary()
