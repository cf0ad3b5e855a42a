"""The round-opening burst benchmark at a small scale: real grpc.aio servers sharing a port, long-polls
held and released in paced chunks, a prober in its own process (benchmarks/bench_wake_burst.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_wake_burst.py"


def test_paced_release_answers_every_poll_and_probes_during_the_burst() -> None:
    # 200 polls, 50 every 0.1 s: the last chunk goes out >= 0.3 s after the release
    done = subprocess.run(
        [sys.executable, str(BENCH), "--waiters=200", "--listeners=2", "--chunk=50", "--pause-s=0.1"],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["waiters"], report["listeners"], report["chunk"]) == (200, 2, 50)
    assert 0.3 <= report["burst_s"] < 10  # every poll answered (drive gathers them all), paced
    assert report["pings_before"] > 0 and report["pings_during"] > 0
    assert 0 < report["ping_p50_during_ms"] <= report["ping_p99_during_ms"] <= report["ping_max_during_ms"]
