"""The server load benchmark end to end at a small scale: a real `fedmezo server` process, simulated
clients over real sockets, and the JSON report the issue asks for (benchmarks/bench_server.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server.py"
CLIENTS = 20
ROUNDS = 2
LOCAL_STEPS = 2
# two dashboards' worth of polling, read from `fedmezo status-server` over the server's state dir
POLL_FROM_A_REPLICA = ["--status-poll-s=0.3", "--status-pollers=2", "--status-replica"]
USABLE_CPUS = sorted(os.sched_getaffinity(0))
# the shared run pins the server and the generators apart where the machine has two CPUs to split
PINNED = (
    [f"--server-cpus={USABLE_CPUS[0]}", f"--loadgen-cpus={','.join(map(str, USABLE_CPUS[1:]))}"]
    if len(USABLE_CPUS) >= 2
    else []
)


@pytest.mark.parametrize(
    ("scheme", "flow", "loadgen"),
    [("per-client", "classic", "python"), ("shared", "lean", "python"), ("shared", "lean", "native")],
    ids=["per-client", "shared", "shared-native"],
)
def test_bench_server_json_report_is_complete_and_sane(scheme: str, flow: str, loadgen: str) -> None:
    """Both load generators (asyncio clients, and the same lean loop in C++: benchmarks/loadgen, built by
    `make loadgen`) must drive the protocol to the same complete, in-sync result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable, str(BENCH), f"--clients={CLIENTS}", f"--rounds={ROUNDS}",
            f"--local-steps={LOCAL_STEPS}", "--train-s=0.5", "--procs=2", "--json", "--quiet",
            f"--seed-scheme={scheme}", f"--flow={flow}", f"--loadgen={loadgen}",
            *(POLL_FROM_A_REPLICA + PINNED if scheme == "shared" else []),
            # every simulated client holds its own connection, as a daemon does: with a shared one, the
            # 20 clients' long-polls would overrun this per-connection stream limit and be refused
            "--server-arg=--max-streams-per-connection=4",
        ],
        capture_output=True, text=True, timeout=100, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # exactly one JSON object, nothing else on stdout
    report = json.loads(lines[0])

    # The headline figures exist, are finite and ordered.
    for key in ("p50_submit_ms", "p99_submit_ms", "round_close_s"):
        assert math.isfinite(report[key]), (key, report[key])
    assert 0 < report["p50_submit_ms"] <= report["p99_submit_ms"] < 10_000
    # from the last update's acknowledgement: that ack follows the update's fsync, and on a loaded machine
    # the round's delta (published when the update was stored) can reach a client a few ms before it
    assert -1 < report["round_close_s"] < 30
    # Every client's every update was acknowledged, counted by the server, and every client ended
    # in sync with the server's fingerprint; nothing failed or was retried.
    assert report["submits_expected"] == CLIENTS * ROUNDS
    assert report["submits_accepted"] == CLIENTS * ROUNDS
    assert report["accepted_per_round"] == [CLIENTS] * ROUNDS
    assert report["rounds_closed"] == ROUNDS
    assert report["fingerprints_in_sync"] == CLIENTS * ROUNDS
    assert report["failed_clients"] == 0
    assert report["errors"] == {}
    # Per-RPC latencies for every RPC of the protocol, one sample per call made.
    rpc = report["rpc"]
    assert rpc["Join"]["n"] == CLIENTS
    assert rpc["SubmitUpdate"]["n"] == CLIENTS * ROUNDS
    assert rpc["GetTask"]["n"] >= CLIENTS * (ROUNDS + 1)  # a task per round, then RUN_FINISHED
    if flow == "classic":  # each round followed on a delta stream and its fingerprint reported
        assert rpc["ReportFingerprint"]["n"] == CLIENTS * ROUNDS
        assert rpc["StreamRoundDeltas (wait)"]["n"] == CLIENTS * ROUNDS
    else:  # the polls brought every delta; versions were reported by the updates, the last one at the end
        assert rpc["ReportFingerprint"]["n"] == CLIENTS
        assert not any(name.startswith("StreamRoundDeltas") for name in rpc)
        assert rpc["GetTask"]["n"] <= CLIENTS * (ROUNDS + 2)  # no extra poll per round close
    for row in rpc.values():
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert [r["round"] for r in report["per_round"]] == list(range(1, ROUNDS + 1))
    for r in report["per_round"]:  # submits split by whether the round's tasks were still going out
        during, total = r["submits_during_task_spread"], r["submits"]
        assert 0 <= during <= total
        assert math.isnan(r["p99_submit_during_task_spread_ms"]) == (during == 0)
        assert math.isnan(r["p99_submit_after_task_spread_ms"]) == (during == total)
        lag_then = r["max_loadgen_lag_during_task_spread_ms"]  # nan when no probe fell in the spread
        assert math.isnan(lag_then) or 0 <= lag_then <= report["loadgen_loop_lag_ms"]["max_ms"]
    # The server's resources were read from /proc and it shut down cleanly.
    assert report["server_cpu_s"] > 0
    assert report["server_rss_before_mib"] > 0
    assert report["server_peak_rss_mib"] >= report["server_rss_before_mib"]
    assert report["loadgen_cpu_s"] > 0
    before, after = report["speed_probe_ms"]  # the machine's speed around the load, for reading noise
    assert 0 < before < 60_000 and 0 < after < 60_000
    lag = report["loadgen_loop_lag_ms"]  # the generators' own event-loop delay, sampled all run long
    assert lag["n"] > 10 and 0 <= lag["p50_ms"] <= lag["p99_ms"] <= lag["max_ms"] < 10_000
    if scheme == "shared" and PINNED:  # pinned, and the kernel confirms it for the running server
        assert report["server_cpus"] == USABLE_CPUS[:1] and report["loadgen_cpus"] == USABLE_CPUS[1:]
        assert report["server_cpus_allowed"] == str(USABLE_CPUS[0])
    else:
        assert report["server_cpus"] is None and report["loadgen_cpus"] is None
    assert report["server_exit_code"] == 0
    collected = report["server_gc"]  # the server's shutdown log line, parsed
    assert collected is not None and collected["collections"] > 0
    assert 0 < collected["longest_pause_ms"] <= collected["total_s"] * 1e3
    served = report["server_rpc"]  # the server's own latency per method, from its shutdown log line
    assert served["SubmitUpdate"]["n"] == CLIENTS * ROUNDS == rpc["SubmitUpdate"]["n"]
    assert 0 < served["SubmitUpdate"]["p50_ms"] <= served["SubmitUpdate"]["p99_ms"]
    assert served["Join"]["n"] == CLIENTS
    assert report["seed_scheme"] == scheme and report["flow"] == flow and report["loadgen"] == loadgen
    down = report["downlink_per_client_per_round_bytes"]
    assert len(down) == ROUNDS and all(b > 0 for b in down)
    # A per-client delta lists every participant's τ seeds (8 bytes each at least): it grows with the
    # clients. A shared one carries τ coefficients, whatever the clients: here under 10 bytes per client.
    if scheme == "per-client":
        assert min(down) > CLIENTS * LOCAL_STEPS * 8
        assert report["operator_reply_bytes"] == {} and not any(k.startswith("operator") for k in rpc)
    else:
        assert max(down) < 10 * CLIENTS
        # an operator polled like a dashboard the whole run: every call answered, its replies counted
        for name in ("GetStatus", "ListRounds page", "ListRounds (all pages)", "ListClients"):
            assert rpc[f"operator {name}"]["n"] >= 2, name
        assert report["operator_reply_bytes"]["ListClients"] > CLIENTS * 20  # one entry per client
        assert report["status_target"] == "replica" and report["status_pollers"] == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([f"--server-cpus={USABLE_CPUS[0]}", f"--loadgen-cpus={USABLE_CPUS[0]}"], "overlap"),
        (["--server-cpus=100000"], "not all among the usable"),
        (["--loadgen-cpus=a-b"], "expected a CPU list"),
        (["--loadgen=native", "--flow=classic"], "lean flow only"),
    ],
)
def test_bench_server_refuses_bad_cpu_lists(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
