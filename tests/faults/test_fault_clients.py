"""Clients SIGKILLed in the middle of a round: the round closes at its deadline with the quorum of the
clients still alive, and the killed clients, restarted, catch up and end bit-identical to the server.

Four `fedmezo client` daemons; two of them, drawn at random (the seed is printed;
FEDMEZO_FAULT_SEED=<seed> replays), are SIGKILLed within 0.3 s of round 2 opening, while they
train. A short heartbeat timeout lets the server see them go offline, so round 3 waits for them
to come back (min-clients = 4) and they have to catch up before they can train again.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.federation import RUN_TIMEOUT_S, Federation
from helpers.processes import wait_for

pytestmark = pytest.mark.timeout(300)

CLIENTS = ("c1", "c2", "c3", "c4")
ROUNDS = 3
DEADLINE_S = 10.0  # round 2 waits this long for its killed clients; healthy rounds close far sooner
DEADLINE_SLACK_S = 0.5  # the close decision runs on a 0.2 s tick
LOCAL_STEPS = 30  # about a second of training: a kill within MAX_KILL_DELAY_S lands mid-training
MAX_KILL_DELAY_S = 0.3


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with Federation(tmp_path) as fed:
        yield fed


def _round_open(fed: Federation, round_id: int) -> bool:
    status = fed.grpc_status()
    return status is not None and status.current_round == round_id and status.rounds_completed == round_id - 1


def _round_closed(fed: Federation, round_id: int) -> bool:
    status = fed.grpc_status()
    return status is not None and status.rounds_completed >= round_id


def test_clients_killed_mid_round_quorum_closes_at_deadline_and_restarts_catch_up(
    federation: Federation,
) -> None:
    fed = federation
    seed = int(os.environ.get("FEDMEZO_FAULT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    victims = sorted(rng.sample(CLIENTS, 2))
    survivors = sorted(set(CLIENTS) - set(victims))
    print(f"fault seed {seed}: killing {victims} in round 2")
    fed.start_server(
        f"--rounds={ROUNDS}",
        f"--local-steps={LOCAL_STEPS}",
        f"--min-clients={len(CLIENTS)}",
        "--quorum=0.5",
        f"--deadline-s={DEADLINE_S}",
        "--heartbeat-interval-s=1",
        "--heartbeat-timeout-s=3",
    )
    for client_id in CLIENTS:
        fed.start_client(client_id)
    wait_for(lambda: _round_open(fed, 2), RUN_TIMEOUT_S, "round 2 to open", fed.logs)
    time.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S))
    for client_id in victims:
        fed.kill_client(client_id)
    for client_id in victims:  # killed mid-round: nothing of round 2 reached the server from them
        assert 2 not in fed.client_submitted_rounds(client_id), fed.client_log(client_id)

    wait_for(lambda: _round_closed(fed, 2), DEADLINE_S * 3, "round 2 to close", fed.logs)
    round_2 = fed.grpc_round(2)
    assert sorted(c.client_id for c in round_2.clients if c.accepted) == survivors
    assert round_2.duration_s >= DEADLINE_S - DEADLINE_SLACK_S, round_2.duration_s  # at the deadline
    kinds = [e.kind for e in fed.events() if e.round_id == 2]
    assert "round_closed" in kinds and "round_extended" not in kinds and "round_aborted" not in kinds

    for client_id in victims:
        fed.restart_client(client_id)
    fed.wait_clients()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == ROUNDS
    assert [r["state"] for r in doc["rounds"]] == ["closed"] * ROUNDS
    for round_ in doc["rounds"][2:]:  # round 3 waited for the restarted clients: everybody trained
        assert sorted(round_["participants"]) == sorted(CLIENTS), round_
    fed.assert_in_sync_every_version(doc, list(CLIENTS))
    for client_id in victims:
        log = fed.client_log(client_id)
        assert "server at version 2, local replica at 0" in log, log
        assert fed.client_fingerprints(client_id)[2] == doc["rounds"][1]["fingerprint"]  # caught up
        assert fed.client_fingerprints(client_id)[ROUNDS] == doc["fingerprint"]
