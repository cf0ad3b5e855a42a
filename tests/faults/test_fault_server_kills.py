"""SIGKILL the server at random moments of a run and restart it, again and again: the run completes,
no acknowledged update is lost, the state file stays intact, and every replica ends on the server's
fingerprint.

Clients: three test-owned clients (the real client link and replica sync, random projected gradients:
they keep an exact ledger of what the server acknowledged) and one real `fedmezo client` daemon
(its log says which rounds it got acknowledged and the fingerprint of every version it reached).
The kill moments are random (a seed is printed; FEDMEZO_FAULT_SEED=<seed> replays a run): after 0-2
more closed rounds plus up to a second, which lands kills while updates arrive, while a round closes
and writes a checkpoint, while clients rejoin; one cycle in four kills the server while it starts.
After every kill the state file is audited before the next start.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import state_db
from helpers.federation import Federation
from helpers.processes import spawn, wait_for
from helpers.scripted_client import Ack, ScriptedClient

from fedmezo.fl.replica import Replica

SCRIPTED = ("s1", "s2", "s3")
DAEMON = "c1"
LOCAL_STEPS = 4
STARTUP_KILL_PROBABILITY = 0.25
MAX_EXTRA_ROUNDS_PER_CYCLE = 2
MAX_KILL_DELAY_S = 1.0
FINISH_TIMEOUT_S = 240.0


@dataclass
class Ledger:
    """The kills so far (what was killed when) and how many audits of the state file passed."""

    kills: list[str] = field(default_factory=list)
    audits: int = 0


def _seed() -> int:
    seed = int(os.environ.get("FEDMEZO_FAULT_SEED", random.randrange(2**32)))
    print(f"fault seed {seed} (FEDMEZO_FAULT_SEED={seed} replays this run)")
    return seed


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with Federation(tmp_path) as fed:
        yield fed


def _acks(clients: list[ScriptedClient]) -> list[Ack]:
    return [ack for client in clients for ack in list(client.acks)]


def _audit(fed: Federation, clients: list[ScriptedClient], context: str) -> None:
    """Right after a crash: the file is intact and holds every update acknowledged so far, verbatim."""
    db = fed.state_dir / "state.sqlite"
    assert state_db.integrity(db) == "ok", context
    stored = state_db.stored_updates(db)
    for ack in _acks(clients):
        key = (ack.round_id, ack.client_id)
        assert key in stored, f"acknowledged update {key} lost ({context})"
        assert stored[key] == (ack.projected_grads, ack.losses), f"update {key} changed ({context})"
    for round_id in fed.client_submitted_rounds(DAEMON):
        assert (round_id, DAEMON) in stored, f"acknowledged update of {DAEMON} in round {round_id} lost"


def _reached(fed: Federation, rounds: int) -> Callable[[], bool]:
    """A condition: the server reports at least `rounds` closed rounds."""

    def reached() -> bool:
        status = fed.grpc_status()
        return status is not None and int(status.rounds_completed) >= rounds

    return reached


def _kill_and_audit(fed: Federation, clients: list[ScriptedClient], ledger: Ledger, what: str) -> None:
    fed.kill_server()
    ledger.kills.append(what)
    print(f"kill {len(ledger.kills)}: {what}")
    _audit(fed, clients, f"after kill {len(ledger.kills)}: {what}")
    ledger.audits += 1


def _run_with_kills(fed: Federation, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    progress = [rng.randint(0, MAX_EXTRA_ROUNDS_PER_CYCLE) for _ in range(cycles)]
    rounds = sum(progress) + 3  # the run cannot finish before the last kill
    fed.start_server(
        f"--rounds={rounds}",
        f"--local-steps={LOCAL_STEPS}",
        f"--min-clients={len(SCRIPTED) + 1}",  # every round waits for all four: each one counts everybody
        "--deadline-s=60",
        "--checkpoint-every=2",
        "--heartbeat-interval-s=1",
        # the scripted clients send N(0, 1) scalars, the daemon real ones of another scale: the outlier
        # rule would (rightly) reject the odd one out, and this test needs every update counted
        "--outlier-k=0",
    )
    params = [Replica.load("tiny-random").params for _ in SCRIPTED]
    target = f"127.0.0.1:{fed.port}"
    clients = [ScriptedClient(cid, target, p, seed=seed) for cid, p in zip(SCRIPTED, params, strict=True)]
    ledger = Ledger()
    try:
        for client in clients:
            client.start()
        fed.start_client(DAEMON)
        goal = 0
        for cycle, extra in enumerate(progress, start=1):
            goal += extra
            wait_for(
                _reached(fed, goal),
                FINISH_TIMEOUT_S,
                f"round {goal} (cycle {cycle})",
                fed.logs,
            )
            time.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S))
            _kill_and_audit(fed, clients, ledger, f"cycle {cycle}, {_closed_rounds(fed)} rounds closed")
            if rng.random() < STARTUP_KILL_PROBABILITY:  # kill it again while it restores and starts
                fed.server = spawn(fed.server_args, fed.tmp / f"server-startkill-{cycle}.log", env=fed.env)
                time.sleep(rng.uniform(0.5, 4.0))
                _kill_and_audit(fed, clients, ledger, f"cycle {cycle} during start")
            fed.start_server()
        for client in clients:
            client.join(FINISH_TIMEOUT_S)
        fed.wait_clients(FINISH_TIMEOUT_S)
        acked = _check_final(fed, clients, ledger, rounds)
    finally:
        for client in clients:
            client.stop()
    summary = f"{len(ledger.kills)} kills, {ledger.audits} audits, {rounds} rounds"
    print(f"{summary}, {acked} acknowledged updates, seed {seed}")


def _closed_rounds(fed: Federation) -> int:
    """Closed rounds in the state file right now (for the kill log)."""
    return sum(
        1 for state in state_db.round_states(fed.state_dir / "state.sqlite").values() if state == "closed"
    )


def _check_final(fed: Federation, clients: list[ScriptedClient], ledger: Ledger, rounds: int) -> int:
    """Every final invariant; returns how many acknowledged updates were checked."""
    for client in clients:
        assert not client.errors, client.errors
        assert client.finished and not client.refused, (client.client_id, client.refused)
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == rounds, doc["run_state"]
    everybody = sorted([*SCRIPTED, DAEMON])
    for round_ in doc["rounds"]:  # nobody's update was dropped, no round aborted
        assert round_["state"] == "closed" and sorted(round_["participants"]) == everybody, round_
    db = fed.state_dir / "state.sqlite"
    assert state_db.integrity(db) == "ok"
    _audit(fed, clients, "at the end")
    accepted, applied = state_db.accepted_updates(db), state_db.delta_participants(db)
    acked = {(a.round_id, a.client_id) for a in _acks(clients)}
    acked |= {(r, DAEMON) for r in fed.client_submitted_rounds(DAEMON)}
    assert acked, "no update was acknowledged"
    assert acked <= accepted and acked <= applied, sorted(acked - (accepted & applied))
    # every replica ends with the server's fingerprint, and agreed with it at every version on the way
    by_round = {r["round"]: r["fingerprint"] for r in doc["rounds"]}
    for client in clients:
        assert client.fingerprint() == doc["fingerprint"], client.client_id
        assert client.reported[rounds] == doc["fingerprint"]
        assert all(by_round[v] == fp for v, fp in client.reported.items()), client.client_id
    fed.assert_in_sync_every_version(doc, [DAEMON])
    assert fed.client_fingerprints(DAEMON)[rounds] == doc["fingerprint"]
    assert sum(1 for e in fed.events() if e.kind == "run_resumed") >= 1
    assert len(ledger.kills) >= 1
    return len(acked)


@pytest.mark.timeout(300)
def test_three_server_kills_lose_no_acknowledged_update(federation: Federation) -> None:
    _run_with_kills(federation, cycles=3, seed=_seed())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_twenty_server_kills_lose_no_acknowledged_update(federation: Federation) -> None:
    _run_with_kills(federation, cycles=20, seed=_seed())
