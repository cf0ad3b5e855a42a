"""End to end over real sockets with real processes: `fedmezo server` + `fedmezo client`s on loopback.

Every check reads what an operator would read (`fedmezo status --json`, the client logs) while the
processes run exactly as deployed. tiny-random, batch 2, short texts: the whole file stays in a few
minutes on a 2-core machine. Every process is killed in a `finally`, whatever happens.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.federation import RUN_TIMEOUT_S, Federation
from helpers.processes import FEDMEZO, START_TIMEOUT_S, wait_for

pytestmark = pytest.mark.timeout(240)

ROUND_BYTES_LIMIT = 1024  # issue 3: bytes_up + bytes_down per participating client per round
SHUTDOWN_LIMIT_S = 5.0  # SIGTERM to exit, while idle in a long-poll
EXIT_AUTH = 77  # fedmezo.cli.client_cmd.EXIT_AUTH


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with Federation(tmp_path) as fed:
        yield fed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, dict[str, Any]]]:
    """Scenario 1, shared with the export test: 3 clients, 3 rounds of 20 local steps."""
    fed = Federation(tmp_path_factory.mktemp("run"))
    try:
        fed.start_server("--rounds=3", "--local-steps=20", "--min-clients=3")
        for client_id in ("c1", "c2", "c3"):
            fed.start_client(client_id)
        fed.wait_clients()
        yield fed, fed.status()
    finally:
        fed.close()


def test_three_clients_three_rounds_in_sync_under_1kib(
    finished_run: tuple[Federation, dict[str, Any]],
) -> None:
    fed, doc = finished_run
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 3
    assert [r["state"] for r in doc["rounds"]] == ["closed"] * 3
    fed.assert_in_sync_every_version(doc, ["c1", "c2", "c3"])
    for client_id in ("c1", "c2", "c3"):  # every client reported every round it trained
        assert set(fed.client_fingerprints(client_id)) == {1, 2, 3}
    assert int(doc["config"]["max_length"]) == 64 and int(doc["config"]["trainable_params"]) > 0
    for client_id in ("c1", "c2", "c3"):  # the server's max length, not the client's default (256)
        assert "max length 64" in fed.client_log(client_id)
    for client in doc["clients"]:  # measured once at start and reported at join
        assert client["inference_peak_memory_bytes"] > 0, client
    for round_ in doc["rounds"]:
        assert sorted(round_["participants"]) == ["c1", "c2", "c3"]
        assert round_["mean_loss"] is not None and round_["mean_loss"] > 0
        for client in round_["clients"]:
            per_client = client["bytes_up"] + client["bytes_down"]
            assert 0 < per_client <= ROUND_BYTES_LIMIT, (round_["round"], client)
    print(
        "bytes per client per round:",
        [[c["bytes_up"] + c["bytes_down"] for c in r["clients"]] for r in doc["rounds"]],
    )


def test_exported_model_loads_with_transformers_and_generates(
    finished_run: tuple[Federation, dict[str, Any]],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fed, _ = finished_run
    out = fed.tmp / "export"
    subprocess.run(
        [*FEDMEZO, "export", f"--state-dir={fed.state_dir}", f"--out={out}"],
        env=fed.env,
        timeout=120,
        check=True,
        capture_output=True,
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(generated[0]), str)


def test_server_killed_in_round_2_restarts_and_clients_reconnect(federation: Federation) -> None:
    fed = federation
    fed.start_server("--rounds=3", "--local-steps=20", "--min-clients=3")
    for client_id in ("c1", "c2", "c3"):
        fed.start_client(client_id)

    def in_round_2() -> bool:
        status = fed.grpc_status()
        return status is not None and status.rounds_completed == 1 and status.current_round == 2

    wait_for(in_round_2, RUN_TIMEOUT_S, "round 2", fed.logs)
    round_1_before = fed.grpc_round(1)
    fed.kill_server()
    fed.start_server()
    fed.wait_clients()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 3
    round_1 = doc["rounds"][0]
    assert round_1["state"] == "closed" and sorted(round_1["participants"]) == ["c1", "c2", "c3"]
    assert round_1["fingerprint"] == round_1_before.fingerprint.hex()
    assert {c["id"]: c["mean_loss"] for c in round_1["clients"]} == pytest.approx(
        {c.client_id: c.mean_loss for c in round_1_before.clients if c.accepted}
    )
    fed.assert_in_sync_every_version(doc, ["c1", "c2", "c3"])
    for client_id in ("c1", "c2", "c3"):
        assert fed.client_fingerprints(client_id).get(3) == doc["fingerprint"]
    logs = "".join(fed.client_log(c) for c in ("c1", "c2", "c3"))
    assert "unavailable" in logs.lower() or "retrying" in logs.lower()


def test_client_joining_after_round_2_catches_up(federation: Federation) -> None:
    fed = federation
    # 10 rounds of 40 steps: long enough that the late client (a cold start takes seconds) joins mid-run
    fed.start_server("--rounds=10", "--local-steps=40", "--min-clients=2", "--clients-per-round=2")
    for client_id in ("c1", "c2"):
        fed.start_client(client_id)

    def two_rounds_done() -> bool:
        status = fed.grpc_status()
        return status is not None and status.rounds_completed >= 2

    wait_for(two_rounds_done, RUN_TIMEOUT_S, "round 2 to close", fed.logs)
    fed.start_client("c4")
    fed.wait_clients()
    doc = fed.status()
    assert doc["rounds_completed"] == 10
    log = fed.client_log("c4")
    joined_at = int(re.search(r"server at version (\d+), local replica at 0", log).group(1))  # type: ignore[union-attr]
    assert joined_at >= 2
    # it caught up by replaying the stored deltas, or from a checkpoint when that was cheaper
    assert "catching up from version 0" in log or "loaded checkpoint" in log
    late = fed.client_fingerprints("c4")
    assert late[10] == doc["fingerprint"]
    fed.assert_in_sync_every_version(doc, ["c1", "c2", "c4"])


def test_tokens_identify_clients_and_sigterm_exits_cleanly(federation: Federation) -> None:
    fed = federation
    tokens = fed.tmp / "tokens.txt"
    tokens.write_text("c1:tok-one\nc2:tok-two\n")
    (fed.tmp / "c1.token").write_text("tok-one\n")
    fed.reader_metadata = (("authorization", "Bearer tok-one"),)
    # min-clients 2 and only c1 ever joins: no round opens, c1 idles in its long-poll
    fed.start_server("--rounds=1", "--local-steps=4", "--min-clients=2", f"--tokens={tokens}")
    fed.start_client("c2", "--token=wrong")  # not a known token: fails fast, no retrying
    fed.start_client("c1", f"--token-file={fed.tmp / 'c1.token'}")
    assert fed.clients["c2"].wait(timeout=START_TIMEOUT_S) == EXIT_AUTH, fed.logs()

    def c1_joined() -> bool:
        return "joined run" in fed.client_log("c1")

    wait_for(c1_joined, START_TIMEOUT_S, "c1 to join", fed.logs)
    started = time.monotonic()
    fed.clients["c1"].send_signal(signal.SIGTERM)
    assert fed.clients["c1"].wait(timeout=30) == 0, fed.logs()
    assert time.monotonic() - started < SHUTDOWN_LIMIT_S  # the long-poll was interrupted, not awaited
    assert "tok-one" not in fed.client_log("c1")  # secrets never reach the log


@pytest.mark.parametrize("base", ["bf16", "nf4"])
def test_lora_on_a_low_precision_base_stays_in_sync_and_exports_a_bf16_model(
    federation: Federation, base: str
) -> None:
    """Issue #14 item 1: the frozen base in bf16 or 4-bit NF4, fp32 adapters; the manifest names the
    base; the export merges the adapters into the bf16 base (also after an NF4 run)."""
    import torch
    from transformers import AutoModelForCausalLM

    fed = federation
    fed.start_server(
        "--rounds=2", "--local-steps=8", "--min-clients=2", "--mode=lora", f"--base-dtype={base}"
    )
    for client_id in ("c1", "c2"):
        fed.start_client(client_id)
    fed.wait_clients()
    doc = fed.status()
    assert doc["run_state"] == "finished" and doc["rounds_completed"] == 2
    assert doc["config"]["base_dtype"] == base
    fed.assert_in_sync_every_version(doc, ["c1", "c2"])
    out = fed.tmp / "export"
    subprocess.run(
        [*FEDMEZO, "export", f"--state-dir={fed.state_dir}", f"--out={out}"],
        env=fed.env, timeout=120, check=True, capture_output=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # adapters merged into the base
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    # --adapter-only: the PEFT folder alone; applied to the user's own bf16 base it merges into exactly
    # the model the merged export wrote
    from peft import PeftModel

    from fedmezo.models import load_model

    adapter = fed.tmp / "adapter"
    subprocess.run(
        [*FEDMEZO, "export", f"--state-dir={fed.state_dir}", f"--out={adapter}", "--adapter-only"],
        env=fed.env, timeout=120, check=True, capture_output=True,
    )  # fmt: skip
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "fedmezo.json").read_text())["contents"] == "adapter"
    own_base = load_model("tiny-random", dtype=torch.bfloat16).model
    merged = PeftModel.from_pretrained(own_base, adapter).merge_and_unload()
    exported = dict(model.named_parameters())
    for name, tensor in merged.named_parameters():
        assert torch.equal(tensor, exported[name]), name
