"""The network between a client and the server misbehaving: a client that stops answering (SIGSTOP,
as a machine that hangs or swaps), and a client whose TCP connections a proxy cuts at random.

Real `fedmezo server` and `fedmezo client` processes on loopback; seeds are printed
(FEDMEZO_FAULT_SEED=<seed> replays a run).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.federation import RUN_TIMEOUT_S, Federation
from helpers.processes import START_TIMEOUT_S, wait_for
from helpers.scripted_client import ScriptedClient
from helpers.tcp_proxy import CuttingProxy

from fedmezo.fl.replica import Replica

pytestmark = pytest.mark.timeout(300)

DEADLINE_S = 8.0
DEADLINE_SLACK_S = 0.5  # the close decision runs on a 0.2 s tick
STRAGGLER_LONG_POLL_S = 30.0  # the stopped client's GetTask is still open when the round opens
CUT_PROBABILITY = 0.05  # per forwarded chunk: a few RPCs in ten are cut mid-way


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with Federation(tmp_path) as fed:
        yield fed


def _seed() -> int:
    seed = int(os.environ.get("FEDMEZO_FAULT_SEED", random.randrange(2**32)))
    print(f"fault seed {seed} (FEDMEZO_FAULT_SEED={seed} replays this run)")
    return seed


def test_straggler_stopped_mid_round_is_told_late_and_recovers_in_sync(federation: Federation) -> None:
    """c3 is stopped while its long-poll is open; a fourth, test-owned client then joins, which opens
    round 1 (min-clients 4) and c3's task is answered into the stopped process. The round closes at
    its deadline with the three others (quorum: 2 of 4); continued, c3 trains, is told its update is
    late (round_closed), applies round 1, and trains again in sync."""
    fed = federation
    gate_params = Replica.load("tiny-random").params  # loaded now: the gate joins at once when started
    fed.start_server(
        "--rounds=3", "--local-steps=10", "--min-clients=4", "--quorum=0.5", f"--deadline-s={DEADLINE_S}"
    )
    fed.start_client("c3", f"--long-poll-s={STRAGGLER_LONG_POLL_S}")
    for client_id in ("c1", "c2"):
        fed.start_client(client_id)
    for client_id in ("c1", "c2", "c3"):
        wait_for(_joined(fed, client_id), START_TIMEOUT_S, f"{client_id} to join", fed.logs)
    time.sleep(1.0)  # c3: from "joined" straight into its first GetTask long-poll
    gate = ScriptedClient("s1", f"127.0.0.1:{fed.port}", gate_params)
    fed.clients["c3"].send_signal(signal.SIGSTOP)
    try:
        gate.start()
        wait_for(_closed(fed, 1), RUN_TIMEOUT_S, "round 1 to close", fed.logs)
        round_1 = fed.grpc_round(1)
    finally:
        fed.clients["c3"].send_signal(signal.SIGCONT)
    try:
        assert sorted(c.client_id for c in round_1.clients if c.accepted) == ["c1", "c2", "s1"]
        assert round_1.duration_s >= DEADLINE_S - DEADLINE_SLACK_S, round_1.duration_s
        kinds = [e.kind for e in fed.events() if e.round_id == 1]
        assert "round_closed" in kinds and "round_extended" not in kinds

        fed.wait_clients()
        gate.join(RUN_TIMEOUT_S)
    finally:
        gate.stop()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 3
    log = fed.client_log("c3")
    assert "round 1 update not counted: round_closed" in log, log  # a clear answer, not a hang
    assert "c3" in doc["rounds"][-1]["participants"], doc["rounds"]  # it trains again after catching up
    fed.assert_in_sync_every_version(doc, ["c1", "c2", "c3"])
    assert set(fed.client_fingerprints("c3")) == {1, 2, 3}
    assert not gate.errors and gate.finished and gate.fingerprint() == doc["fingerprint"], gate.errors


def _joined(fed: Federation, client_id: str) -> Callable[[], bool]:
    return lambda: "joined run" in fed.client_log(client_id)


def _closed(fed: Federation, round_id: int) -> Callable[[], bool]:
    def closed() -> bool:
        status = fed.grpc_status()
        return status is not None and status.rounds_completed >= round_id

    return closed


def test_client_behind_a_proxy_that_cuts_connections_finishes_in_sync(federation: Federation) -> None:
    """c1 reaches the server only through a proxy that resets each connection after 0.3-2 s, or in the
    middle of a transfer (5 % of the chunks); every one of c1's updates still counts (each round waits
    for it), and it ends on the server's model."""
    fed = federation
    rounds = 4
    fed.start_server(f"--rounds={rounds}", "--local-steps=20", "--min-clients=2", "--heartbeat-interval-s=1")
    with CuttingProxy(
        fed.port, seed=_seed(), min_life_s=0.3, max_life_s=2.0, cut_probability=CUT_PROBABILITY
    ) as proxy:
        fed.start_client("c1", server=f"127.0.0.1:{proxy.port}")
        fed.start_client("c2")
        fed.wait_clients()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == rounds
    for round_ in doc["rounds"]:
        assert sorted(round_["participants"]) == ["c1", "c2"], round_
    fed.assert_in_sync_every_version(doc, ["c1", "c2"])
    assert fed.client_fingerprints("c1")[rounds] == doc["fingerprint"]
    print(f"proxy: {proxy.connections} connections, {proxy.cuts} cut, {proxy.cuts_mid_transfer} mid-transfer")
    assert proxy.cuts >= 3 and proxy.cuts_mid_transfer >= 1, (proxy.connections, proxy.cuts)
    # Not asserted: that c1's log shows a failed call. A cut between calls is healed by gRPC's own
    # reconnect without any RPC failing, so a run whose cuts all fell there logs nothing (CI saw it).
