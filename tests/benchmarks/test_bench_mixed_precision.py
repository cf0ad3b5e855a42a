"""The bf16-vs-fp32 comparison script measures what the GPU client computes (run quickly on tiny-random)."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch
from helpers.scripts import load_script

from fedmezo.models import load_model
from fedmezo.zo import TrainableParams
from fedmezo.zo.mixed import ComputeCopy, mezo_step_mixed


@pytest.fixture(autouse=True)
def numba_compute_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derive the bf16 copy with the CPU client's numba path, not Triton's (slow) interpreter."""
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/bench_mixed_precision.py")


def test_compare_on_tiny_random_matches_the_client_step(bench: ModuleType) -> None:
    from fedmezo.data.demo import generate_demo_dataset

    loaded = load_model("tiny-random")
    batches = bench.make_batches(loaded.tokenizer, generate_demo_dataset()[1][:8], 4, 64)
    seeds = [11, 2**63 + 5, 77]
    result = bench.compare(loaded.model, batches, seeds=seeds, eps_values=[1e-3])

    loss = result["loss"]
    assert len(loss["fp32"]) == len(loss["bf16"]) == 2
    assert loss["fp32"] != loss["bf16"]  # the bf16 forwards really ran
    assert 0 < loss["mean_rel_diff"] < 0.01
    grad = result["grad"]["0.001"]
    assert 0.0 <= grad["sign_agreement"] <= 1.0 and 0.0 <= grad["unperturbed_frac"] <= 1.0
    assert all(math.isfinite(g) for g in grad["g_fp32"] + grad["g_bf16"])

    # The bf16 arm is the client's step: mezo_step_mixed on a fresh replica gives the same g, bit for bit.
    fresh = load_model("tiny-random").model
    compute = ComputeCopy(fresh, TrainableParams.from_model(fresh))
    for k, seed in enumerate(seeds):
        batch = batches[k % len(batches)]
        step = mezo_step_mixed(
            compute, lambda b=batch: bench.causal_lm_loss(fresh, b), seed=seed, eps=1e-3, lr=0.0
        )
        assert step.projected_grad == grad["g_bf16"][k]


def test_grad_agreement_statistics(bench: ModuleType) -> None:
    stats = bench.grad_agreement([1.0, -2.0, 4.0, 0.5], [1.1, 2.0, 4.0, 0.5])
    assert stats["sign_agreement"] == 0.75
    assert stats["median_rel_err"] == pytest.approx(0.05)
    assert stats["noise_to_signal"] == pytest.approx(
        math.sqrt((0.01 + 16) / 4) / math.sqrt((1 + 4 + 16 + 0.25) / 4)
    )


def test_cli_prints_a_table(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    argv = ["--model", "tiny-random", "--examples", "4", "--batch-size", "4", "--seeds", "2", "--eps", "1e-2"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "sign_agreement" in out and "eps 0.01" in out and "batch  0" in out
