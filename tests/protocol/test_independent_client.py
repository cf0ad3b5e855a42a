"""A client written from docs/protocol.md alone takes part in a real federation and stays in sync.

`independent_client.py` imports nothing of fedmezo (checked here on its source and, at run time, on
its `sys.modules`). The test exports tiny-random with `save_pretrained`, starts a real `fedmezo server`
(plaintext, no tokens) and a real fedmezo client daemon, and runs the independent client as a process
next to them: both are selected in every round, train real MeZO steps on their own data, and the server
must find both in sync at every version. The independent client first checks its implementation
against every test vector of the document, and ends by downloading the final checkpoint and replaying
the run from θ_0.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.federation import Federation
from helpers.processes import subprocess_env, tail

from fedmezo.data import ClientDataset, read_jsonl
from fedmezo.fl.records import Task
from fedmezo.fl.train import train_task
from fedmezo.models.builtin import build_tiny_random
from fedmezo.trainable import prepare_trainable
from fedmezo.v1 import status_pb2, status_pb2_grpc

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("independent_client.py")
ROUNDS = 2
LOCAL_STEPS = 4
CLIENT_TIMEOUT_S = 240.0
ALLOWED_IMPORTS = {"numpy", "torch", "transformers", "grpc", "grpc_tools", "google"}


def test_the_independent_client_imports_nothing_of_fedmezo() -> None:
    tree = ast.parse(CLIENT.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r != "__future__"}
    assert third_party <= ALLOWED_IMPORTS, third_party - ALLOWED_IMPORTS


def export_tiny_random(folder: Path) -> Path:
    model, tokenizer = build_tiny_random()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fedmezo_round_one(data: Path, record: dict[str, Any], max_length: int) -> tuple[float, ...]:
    """The scalars fedmezo's own training computes for the independent client's round-1 task (θ_0)."""
    built, tokenizer = build_tiny_random()
    model, params = prepare_trainable(built, "full")
    dataset = ClientDataset.from_examples(tokenizer, read_jsonl(data), max_length)
    task = Task(
        round_id=1, local_steps=record["tau"], lr=record["lr"], eps=record["eps"], batch_size=2, run_seed=42
    )
    return train_task(model, params, dataset, task, "outsider", progress=False).projected_grads


def status_reads(port: int) -> tuple[Any, list[Any], list[Any]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        status = stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
        clients = stub.ListClients(status_pb2.ListClientsRequest(), timeout=10).clients
        rounds = stub.ListRounds(status_pb2.ListRoundsRequest(from_round=1), timeout=10).rounds
    return status, list(clients), list(rounds)


def test_independent_client_trains_with_a_fedmezo_daemon_and_ends_in_sync(tmp_path: Path) -> None:
    model_dir = export_tiny_random(tmp_path / "tiny-random")
    summary_path = tmp_path / "outsider.json"
    log_path = tmp_path / "outsider.log"
    with Federation(tmp_path) as fed:
        fed.start_server(
            f"--rounds={ROUNDS}", f"--local-steps={LOCAL_STEPS}", "--min-clients=2", "--run-seed=42"
        )
        fed.start_client("c1")
        command = [
            sys.executable, str(CLIENT), f"--doc={ROOT / 'docs' / 'protocol.md'}",
            f"--proto-dir={ROOT / 'proto'}", f"--model-dir={model_dir}", f"--data={fed.data['c2']}",
            f"--server=127.0.0.1:{fed.port}", "--client-id=outsider", f"--summary={summary_path}",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            outsider = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
        try:
            code = outsider.wait(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            outsider.kill()
            outsider.wait(timeout=10)
            pytest.fail(f"the independent client did not finish\n{tail(log_path, 40)}\n{fed.logs()}")
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        assert code == 0, f"exit {code}: {summary.get('error')}\n{tail(log_path, 40)}\n{fed.logs()}"
        fed.wait_clients()
        status, clients, rounds = status_reads(fed.port)
        daemon_fingerprints = fed.client_fingerprints("c1")

    # what the independent client saw
    assert summary["fedmezo_modules"] == []
    assert summary["self_check"]["failed"] == [] and len(summary["self_check"]["passed"]) >= 16
    assert summary["theta0_matches_server"] is True
    assert "sync_errors" not in summary and "resyncs" not in summary, summary
    assert summary["heartbeats"] >= 1
    trained = {r["round"]: r for r in summary["trained"]}
    assert sorted(trained) == list(range(1, ROUNDS + 1))
    for record in trained.values():
        assert record["submit"] == "accepted" and record["resend"] == "accepted", record
        assert len(record["projected_grads"]) == LOCAL_STEPS and len(record["losses"]) == LOCAL_STEPS
        assert all(math.isfinite(g) and g != 0.0 for g in record["projected_grads"]), record
        assert all(3.0 < loss < 8.0 for loss in record["losses"]), record  # ~ln(260) on random weights
        assert record["forward_passes"] == 2 * LOCAL_STEPS
    assert [a["participants"] for a in summary["applied"]] == [["c1", "outsider"]] * ROUNDS
    assert [a["seeds"] for a in summary["applied"]] == [2 * LOCAL_STEPS] * ROUNDS
    reports = summary["reports"]
    assert {r["version"] for r in reports} == set(range(0, ROUNDS + 1))  # θ_0 by its first poll
    assert all(r["in_sync"] for r in reports), reports
    assert summary["final"]["version"] == ROUNDS
    assert summary["checkpoint"] == {"round": ROUNDS, "fingerprint_matches": True, "bytes_equal": True}
    assert summary["replay_from_theta0"] == {"version": ROUNDS, "fingerprint_matches": True}
    assert summary["refusals"] == {
        "GetTask before Join": ["FAILED_PRECONDITION", "not_joined"],
        "Join with another manifest": ["FAILED_PRECONDITION", "incompatible_client"],
        "ReportFingerprint of 31 bytes": ["INVALID_ARGUMENT", "invalid_update"],
        "ReportFingerprint beyond the last version": ["OUT_OF_RANGE", "wrong_round"],
        "SubmitUpdate, another update for an answered round": ["ALREADY_EXISTS", "conflicting_update"],
        "SubmitUpdate for a round that does not exist": ["OUT_OF_RANGE", "wrong_round"],
    }

    # its scalars are the ones fedmezo's client computes for the same task (up to the last bits of
    # the forward passes, which depend on the thread count): same seeds, batches, encoding and loss
    expected = fedmezo_round_one(fed.data["c2"], trained[1], summary["run"]["max_length"])
    assert all(
        math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3)
        for a, b in zip(trained[1]["projected_grads"], expected)
    )

    # what the server says: every round took both updates, both replicas are in sync at the end
    final = status.fingerprint.hex()
    assert status.rounds_completed == ROUNDS and summary["final"]["fingerprint"] == final
    assert [sorted(c.client_id for c in r.clients if c.accepted) for r in rounds] == [
        ["c1", "outsider"]
    ] * ROUNDS
    by_round = {r.round_id: r.fingerprint.hex() for r in rounds}
    by_round[0] = summary["theta0_fingerprint"]
    for report in reports:
        assert report["fingerprint"] == by_round[report["version"]]
    for client in clients:
        assert client.in_sync and client.fingerprint_version == ROUNDS and client.fingerprint.hex() == final
    assert daemon_fingerprints[ROUNDS] == final
    print(f"independent client: {summary['seconds']} s (self-check {summary['self_check_s']} s)")
