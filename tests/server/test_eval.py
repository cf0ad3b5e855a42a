"""Server-side evaluation (`--eval-data`): the initial model and every K-th round are evaluated in a
worker thread after the round committed; the metrics reach the store, ListRounds (round 0 included),
the `eval` events and `fedmezo status --json`; RPCs are served meanwhile; a lost evaluation is redone
at restart and never costs the round."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.server_rpc import FakeClient, grads_for, running_server

from fedmezo.cli.main import main as cli_main
from fedmezo.data import evaluate, generate_demo_dataset, read_jsonl, write_jsonl
from fedmezo.fl.evaluation import EVAL_BATCH_SIZE, EvalOutcome, Evaluator
from fedmezo.fl.replica import Replica
from fedmezo.server.app import ServerApp
from fedmezo.v1 import status_pb2

STEPS = 2
EVAL_LIMIT = 3
NEW_TOKENS = 2
MAX_LENGTH = 96
WAIT_S = 60.0


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, held_out = generate_demo_dataset(seed=0)
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    write_jsonl(path, held_out[:5])
    return path


def _eval_options(eval_file: Path, **overrides: Any) -> dict[str, Any]:
    return dict(
        eval_data=str(eval_file), eval_limit=EVAL_LIMIT, eval_max_new_tokens=NEW_TOKENS,
        max_length=MAX_LENGTH, min_clients=1, clients_per_round=1, local_steps=STEPS,
    ) | overrides  # fmt: skip


def _direct_eval(replica: Replica, eval_file: Path) -> float:
    """What fedmezo.data.evaluate says about the replica as it is now (the server must agree)."""
    result = evaluate(
        replica.model, replica.tokenizer, read_jsonl(eval_file)[:EVAL_LIMIT], batch_size=EVAL_BATCH_SIZE,
        max_length=MAX_LENGTH, max_new_tokens=NEW_TOKENS, progress=False,
    )  # fmt: skip
    return result.loss


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _train_round(app: ServerApp, client: FakeClient, r: int) -> None:
    task = await client.get_task(r - 1, 10.0)
    assert task.task.round_id == r
    await client.submit(r, grads_for(client.client_id, r, STEPS), [3.0 - 0.1 * r] * STEPS)
    await client.wait_delta(r)


def test_eval_of_round_0_and_every_kth_round(
    tmp_path: Path, replica: Replica, eval_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> tuple[list[Any], list[Any], dict[str, Any]]:
        async with running_server(
            tmp_path, replica, rounds=3, **_eval_options(eval_file, eval_every=2)
        ) as app:
            store = app.coordinator.store
            await _wait_for(lambda: "eval_loss" in store.get_metrics(0), "the eval of round 0")
            client = FakeClient(app.port, "c0", manifest=replica.manifest_sha256)
            await client.join(inference_peak_memory_bytes=321 << 20)
            for r in (1, 2, 3):
                await _train_round(app, client, r)
            await app.coordinator.idle()  # the evaluations scheduled after the closes finish
            everything = (
                await client.status.ListRounds(status_pb2.ListRoundsRequest(), **client.kw())
            ).rounds
            request = status_pb2.ListRoundsRequest(from_round=1)
            real = (await client.status.ListRounds(request, **client.kw())).rounds
            capsys.readouterr()
            code = await asyncio.to_thread(
                cli_main, ["status", "--server", f"127.0.0.1:{app.port}", "--json", "--insecure"]
            )
            assert code == 0
            assert [e.round_id for e in store.list_events() if e.kind == "eval"] == [0, 2, 3]
            assert "eval_loss" in store.get_metrics(3)  # durable, in the run's SQLite store
            await client.close()
        return list(everything), list(real), json.loads(capsys.readouterr().out)

    everything, real, doc = asyncio.run(main())
    assert [r.round_id for r in everything] == [0, 1, 2, 3]
    assert [r.round_id for r in real] == [1, 2, 3]  # from_round=1: only real rounds
    initial = everything[0]
    assert initial.state == status_pb2.ROUND_STATE_CLOSED and not initial.clients and initial.bytes_up == 0
    evaluated = {r.round_id: dict(r.eval_metrics) for r in everything}
    assert evaluated[1] == {}  # eval_every=2: round 1 is skipped; 2 and the last round (3) are not
    for r in (0, 2, 3):
        m = evaluated[r]
        assert set(m) == {"eval_loss", "exact_match", "eval_examples"}
        assert math.isfinite(m["eval_loss"]) and m["eval_loss"] > 0
        assert 0.0 <= m["exact_match"] <= 1.0 and m["eval_examples"] == EVAL_LIMIT
    assert evaluated[3]["eval_loss"] != evaluated[0]["eval_loss"]  # the model moved
    # the server evaluated its canonical replica after the last round (the replica is still at v3)
    assert replica.version == 3
    assert evaluated[3]["eval_loss"] == pytest.approx(_direct_eval(replica, eval_file), rel=1e-6)
    by_round = {r["round"]: r for r in doc["rounds"]}
    assert sorted(by_round) == [0, 1, 2, 3]
    assert by_round[0]["eval_metrics"]["eval_loss"] == pytest.approx(evaluated[0]["eval_loss"])
    assert by_round[2]["eval_metrics"]["exact_match"] == pytest.approx(evaluated[2]["exact_match"])
    assert by_round[1]["eval_metrics"] == {}
    assert doc["clients"][0]["inference_peak_memory_bytes"] == 321 << 20
    assert int(doc["config"]["max_length"]) == MAX_LENGTH


def test_rpcs_are_served_while_evaluating_and_the_next_close_waits(
    tmp_path: Path, replica: Replica, eval_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected_round_0 = _direct_eval(replica, eval_file)  # θ_0
    started, release = threading.Event(), threading.Event()
    original = Evaluator.evaluate

    def blocking(self: Evaluator, rep: Replica) -> EvalOutcome:
        started.set()
        assert release.wait(WAIT_S)
        return original(self, rep)

    monkeypatch.setattr(Evaluator, "evaluate", blocking)

    async def main() -> None:
        async with running_server(tmp_path, replica, rounds=1, **_eval_options(eval_file)) as app:
            await _wait_for(started.is_set, "the eval of round 0 to start")
            client = FakeClient(app.port, "c0", manifest=replica.manifest_sha256)
            t0 = time.monotonic()
            await client.join()
            await client.status.GetStatus(status_pb2.GetStatusRequest(), **client.kw())
            task = await client.get_task(0, 10.0)  # a round opens while θ_0 is being evaluated
            await client.submit(1, grads_for("c0", 1, STEPS), [3.0] * STEPS)
            assert time.monotonic() - t0 < 5.0, "RPCs waited for the evaluation"
            assert task.task.round_id == 1
            await asyncio.sleep(0.5)
            assert app.coordinator.rounds_completed == 0  # the close waits: θ_0 must not move mid-eval
            release.set()
            await client.wait_delta(1)
            await app.coordinator.idle()
            metrics = {r: app.coordinator.store.get_metrics(r) for r in (0, 1)}
            await client.close()
        assert metrics[0]["eval_loss"] == pytest.approx(expected_round_0, rel=1e-6)
        assert "eval_loss" in metrics[1]

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_failed_eval_keeps_the_round_and_a_restart_redoes_it(
    tmp_path: Path, replica: Replica, eval_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theta_0 = replica.params.snapshot()
    original = Evaluator.evaluate

    def crash(self: Evaluator, rep: Replica) -> EvalOutcome:
        raise RuntimeError("evaluation crashed")

    async def first_run() -> bytes:
        monkeypatch.setattr(Evaluator, "evaluate", crash)
        async with running_server(tmp_path, replica, rounds=1, **_eval_options(eval_file)) as app:
            client = FakeClient(app.port, "c0", manifest=replica.manifest_sha256)
            await client.join()
            await _train_round(app, client, 1)
            await app.coordinator.idle()
            store = app.coordinator.store
            assert [e.round_id for e in store.list_events() if e.kind == "eval_failed"] == [0, 1]
            assert store.get_metrics(1) == {} and app.coordinator.rounds_completed == 1
            await client.close()
            return app.coordinator.fingerprint_at(1) or b""

    async def restart() -> None:
        monkeypatch.setattr(Evaluator, "evaluate", original)
        replica.params.restore(theta_0)  # a fresh process: θ_0, then resume from the state dir
        replica.version = 0
        async with running_server(tmp_path, replica, rounds=1, **_eval_options(eval_file)) as app:
            store = app.coordinator.store
            await _wait_for(lambda: "eval_loss" in store.get_metrics(1), "the redone eval of round 1")
            await app.coordinator.idle()
            rec = store.get_round(1)
            assert rec is not None and rec.state.value == "closed" and rec.fingerprint == fingerprint
            assert store.get_metrics(0) == {}  # only the current version is redone
            assert [e.round_id for e in store.list_events() if e.kind == "eval"] == [1]

    fingerprint = asyncio.run(first_run())
    asyncio.run(restart())
