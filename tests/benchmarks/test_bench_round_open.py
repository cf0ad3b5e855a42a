"""The round-opening probe on a real `fedmezo server` at a small scale: every held long-poll gets its
task, in chunks, and heartbeats are timed before and during the burst (benchmarks/bench_round_open.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_round_open.py"


def test_every_poll_gets_its_task_and_heartbeats_are_timed_during_the_burst() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--waiters=150", "--wake-chunk=16", "--local-steps=4"],
        capture_output=True, text=True, timeout=230, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["waiters"], report["wake_chunk"], report["local_steps"]) == (150, 16, 4)
    # hold() fails the run unless every poll was answered with a task
    assert 0 < report["first_task_s"] <= report["burst_s"] < 60
    assert report["pings_before"] > 0 and report["pings_during"] > 0
    assert 0 < report["ping_p50_during_ms"] <= report["ping_p99_during_ms"] <= report["ping_max_during_ms"]
