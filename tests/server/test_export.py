"""`fedmezo export` rebuilds the canonical model from a stopped server's state dir; transformers loads it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.server_rpc import FakeClient, grads_for, running_server
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedmezo.cli.main import main as cli_main
from fedmezo.fl.replica import Replica


def test_export_after_rounds_loads_and_generates(tmp_path: Path, replica: Replica) -> None:
    async def run_rounds() -> bytes:
        async with running_server(tmp_path, replica, rounds=2, min_clients=1, clients_per_round=1,
                                  checkpoint_every=1) as app:  # fmt: skip
            c = FakeClient(app.port, "solo", manifest=replica.manifest_sha256)
            await c.join()
            for r in (1, 2):
                t = await c.get_task(r - 1, 5.0)
                await c.submit(r, grads_for("solo", r, 4), [1.0] * 4)
                await c.wait_delta(r)
                assert t.task.round_id == r
            await c.close()
            return app.coordinator.replica.fingerprint()

    fingerprint = asyncio.run(run_rounds())
    out = tmp_path / "hf"
    assert cli_main(["export", "--state-dir", str(tmp_path / "state"), "--out", str(out)]) == 0
    meta = json.loads((out / "fedmezo.json").read_text())
    assert meta["version"] == 2 and meta["fingerprint"] == fingerprint.hex()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    exported = dict(model.named_parameters())
    for name, tensor in replica.params.tensors():  # the server's replica at version 2
        assert torch.equal(exported[name].detach(), tensor), name
    ids = tokenizer("hello", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 5
    assert isinstance(tokenizer.decode(generated[0]), str)
    # a full-parameter run has no adapters to write alone: a clear refusal, nothing written
    adapter = tmp_path / "adapter"
    assert (
        cli_main(["export", "--state-dir", str(tmp_path / "state"), "--out", str(adapter), "--adapter-only"])
        == 3
    )
    assert not adapter.exists()


def test_export_of_missing_state_dir_fails_cleanly(tmp_path: Path) -> None:
    assert cli_main(["export", "--state-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 3


def test_a_copied_state_dir_resumes_and_exports_from_its_own_checkpoints(
    tmp_path: Path, replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps checkpoint paths as the server was given them (here relative to another working
    directory); a copy of the state dir elsewhere still finds its checkpoints by name."""
    first_cwd = tmp_path / "first"
    first_cwd.mkdir()
    monkeypatch.chdir(first_cwd)

    async def run_rounds() -> bytes:
        async with running_server(tmp_path, replica, rounds=2, min_clients=1, clients_per_round=1,
                                  checkpoint_every=1, state_dir="state") as app:  # fmt: skip
            c = FakeClient(app.port, "solo", manifest=replica.manifest_sha256)
            await c.join()
            for r in (1, 2):
                await c.get_task(r - 1, 5.0)
                await c.submit(r, grads_for("solo", r, 4), [1.0] * 4)
                await c.wait_delta(r)
            await c.close()
            return app.coordinator.replica.fingerprint()

    fingerprint = asyncio.run(run_rounds())
    copied = tmp_path / "copied"
    shutil.copytree(first_cwd / "state", copied)
    shutil.rmtree(first_cwd / "state")  # the stored paths now lead nowhere
    monkeypatch.chdir(tmp_path)

    async def restart() -> None:
        fresh = Replica.load("tiny-random")
        async with running_server(tmp_path, fresh, rounds=2, min_clients=1, clients_per_round=1,
                                  checkpoint_every=1, state_dir=str(copied)) as app:  # fmt: skip
            assert app.coordinator.replica.version == 2
            assert app.coordinator.replica.fingerprint() == fingerprint
            round_id, path, *_ = app.coordinator.checkpoint_for("solo")  # what DownloadCheckpoint sends
            assert round_id == 2 and Path(path).parent == copied / "checkpoints"

    asyncio.run(restart())
    out = tmp_path / "hf"
    assert cli_main(["export", "--state-dir", str(copied), "--out", str(out)]) == 0
    assert json.loads((out / "fedmezo.json").read_text())["fingerprint"] == fingerprint.hex()


def test_export_of_a_bf16_sr_run_writes_its_bf16_weights(tmp_path: Path) -> None:
    from fedmezo.fl.config import RunConfig

    bf16 = Replica.for_run(
        RunConfig(model="tiny-random", mode="full", weights="bf16-sr", freeze="")
    )  # as make_config

    async def run_round() -> bytes:
        async with running_server(tmp_path, bf16, rounds=1, min_clients=1, clients_per_round=1,
                                  checkpoint_every=1, weights="bf16-sr") as app:  # fmt: skip
            c = FakeClient(app.port, "solo", manifest=bf16.manifest_sha256)
            await c.join()
            await c.get_task(0, 5.0)
            await c.submit(1, grads_for("solo", 1, 4), [1.0] * 4)
            await c.wait_delta(1)
            await c.close()
            return app.coordinator.replica.fingerprint()

    fingerprint = asyncio.run(run_round())
    out = tmp_path / "hf"
    assert cli_main(["export", "--state-dir", str(tmp_path / "state"), "--out", str(out)]) == 0
    meta = json.loads((out / "fedmezo.json").read_text())
    assert meta["fingerprint"] == fingerprint.hex() and meta["weights"] == "bf16-sr"
    exported = dict(AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).named_parameters())
    for name, tensor in bf16.params.tensors():  # bit for bit the server's bf16 θ after round 1
        assert torch.equal(exported[name].detach().view(torch.int16), tensor.view(torch.int16)), name
