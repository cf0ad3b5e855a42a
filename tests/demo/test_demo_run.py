"""`fedmezo demo --model tiny-random` end to end, as a user runs it: real processes on loopback.

A small schedule keeps it well under the 3-minute bound on a 2-core CPU; the smollm2 demo (≤ 15 min,
loss must drop) is run by hand and its numbers are in the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

FEDMEZO = [sys.executable, "-m", "fedmezo.cli.main"]
DEMO_BOUND_S = 180.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMEZO_") or k == "FEDMEZO_CACHE_DIR"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def test_tiny_random_demo_runs_end_to_end_and_exports_a_loadable_model(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    started = time.monotonic()
    result = subprocess.run(
        [
            *FEDMEZO,
            "demo",
            "--model=tiny-random",
            f"--workdir={workdir}",
            "--rounds=2",
            "--local-steps=5",
            "--eval-examples=16",
            *(["--tls"] if shutil.which("openssl") else []),  # TLS here; the interrupt tests run plaintext
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEMO_BOUND_S + 30,
    )
    elapsed = time.monotonic() - started
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(workdir.glob("logs/*.log")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    assert elapsed < DEMO_BOUND_S

    out = result.stdout
    expected_lines = (
        "dashboard: http://localhost:",
        "before training: held-out loss",
        "round 1/2 closed",
        "round 2/2 closed",
        "export answers",
        "exact match",
    )
    for expected in expected_lines:
        assert expected in out, out
    doc = json.loads((workdir / "summary.json").read_text())
    assert doc["rounds"] == 2 and doc["clients"] == 3 and doc["participations"] == 6
    assert doc["before"]["num_examples"] == doc["after"]["num_examples"] == 16
    assert doc["before"]["loss"] > 0 and doc["after"]["loss"] > 0
    assert 0 < doc["bytes_on_wire"] < doc["fedavg_bytes"]
    assert len(doc["round_losses"]) == 2 and all(loss is not None for loss in doc["round_losses"])
    assert doc["wall_clock_s"] > doc["training_s"] > 0
    assert f"{doc['before']['loss']:.4f}" in out and f"{doc['after']['loss']:.4f}" in out

    commands = (workdir / "logs" / "commands.txt").read_text()
    assert "--token-file=" in commands and "--token=" not in commands  # secrets stay out of `ps`

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "export").eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
