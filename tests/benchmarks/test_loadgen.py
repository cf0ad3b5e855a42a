"""bench_server's native load generator (benchmarks/loadgen) on its own: what it does when its input is
wrong or the server is not there. Its normal run is checked end to end by test_bench_server."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

BUILD = Path(__file__).resolve().parents[2] / "benchmarks" / "loadgen" / "build.sh"
MANIFEST = "ab" * 32


@pytest.fixture(scope="module")
def binary() -> str:
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "need --target"),
        (["--target", "127.0.0.1:1", "--manifest", "abc"], "odd number of hex digits"),
        (["--target", "127.0.0.1:1", "--manifest", MANIFEST, "--train", "5", "1"], "0 <= LO <= HI"),
        (["--bogus"], "unknown or incomplete argument --bogus"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(binary: str, args: list[str], message: str) -> None:
    done = subprocess.run([binary, *args], input="", capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_malformed_client_line_is_refused(binary: str) -> None:
    done = subprocess.run(
        [binary, "--target", "127.0.0.1:1", "--manifest", MANIFEST],
        input="no-delay-here\nend\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "bad client line" in done.stderr, done.stderr


def test_an_unreachable_server_fails_each_client_after_its_retries(binary: str) -> None:
    """UNAVAILABLE is retried (5 times, with backoff) as the Python generator and the daemon do, every
    attempt counted; then the client is reported failed and the generator still reports its samples."""
    proc = subprocess.Popen(
        [binary, "--target", f"127.0.0.1:{closed_port()}", "--manifest", MANIFEST, "--rng-spec", "x"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("sim-a 0\nsim-b 0.1\nend\ngo\n")  # stdin stays open: its end means "stop"
    proc.stdin.flush()
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("result "):
            break
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert lines[0] == "ready"
    progress = [line.split()[1:] for line in lines if line.startswith("progress ")]
    assert progress and progress[-1] == ["0", "0", "0", "2"]  # joined, submitted, synced, failed
    result = json.loads(next(line for line in lines if line.startswith("result "))[len("result ") :])
    assert sorted(result["failed_clients"]) == ["sim-a", "sim-b"]
    assert result["errors"] == {"Join:UNAVAILABLE": 2 * 6}
    assert result["accepted"] == 0 and result["latency_ms"] == {}
    assert result["cpu_s"] > 0 and result["loop_lag"]


def test_stop_ends_the_run_and_reports_without_counting_failures(binary: str) -> None:
    """The parent's "stop" (here: stdin closing) cancels the clients still waiting to start and what is in
    flight; the samples come back within the grace period and nobody is blamed for the stop."""
    proc = subprocess.Popen(
        [binary, "--target", f"127.0.0.1:{closed_port()}", "--manifest", MANIFEST],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate("sim-late 100\nend\ngo\n", timeout=30)  # starts in 100 s; EOF = stop
    assert proc.returncode == 0, err
    result = json.loads(next(line for line in out.splitlines() if line.startswith("result "))[7:])
    assert result["failed_clients"] == [] and result["errors"] == {}
