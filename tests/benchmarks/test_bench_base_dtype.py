"""bench_base_dtype on tiny-random: each base (also NF4) runs in its own process and reports both peaks."""

from __future__ import annotations

from helpers.scripts import script_module


def test_each_base_reports_its_weights_and_both_peaks() -> None:
    with script_module("benchmarks/bench_base_dtype.py") as bench:
        modes = ["fp32", "bf16", "nf4", "full-fp32", "full-bf16-sr"]
        report = bench.run("tiny-random", modes, batch_size=2, seq_len=16, device="cpu")
    fp32, bf16, nf4 = (report["bases"][b] for b in ("fp32", "bf16", "nf4"))
    assert bf16["stored_weight_bytes"] * 2 == fp32["stored_weight_bytes"]  # the base halves
    assert nf4["stored_weight_bytes"] < bf16["stored_weight_bytes"]  # linear layers in 4 bits
    assert nf4["adapter_params"] == bf16["adapter_params"] == fp32["adapter_params"] > 0  # same adapters
    for row in (fp32, bf16, nf4):
        assert row["inference_peak_bytes"] > 0 and row["step_peak_bytes"] > 0
        assert row["ratio"] == row["step_peak_bytes"] / row["inference_peak_bytes"]
        assert 0.0 < row["loss"] < 20.0
    # full-parameter modes: every weight trains, bf16-sr at half of fp32's bytes
    full32, full16 = report["bases"]["full-fp32"], report["bases"]["full-bf16-sr"]
    assert full16["stored_weight_bytes"] * 2 == full32["stored_weight_bytes"] == fp32["stored_weight_bytes"]
    assert full16["trainable_params"] == full32["trainable_params"] == full32["model_params"]
    assert (
        0.0 < full16["loss"] < 20.0
        and full16["ratio"] == full16["step_peak_bytes"] / full16["inference_peak_bytes"]
    )
    budgets = report["budgets"]
    assert (
        budgets["full-bf16-sr"]["bytes_per_param"] == 2.0 and budgets["full-fp32"]["bytes_per_param"] == 4.0
    )
    for row in budgets.values():  # a bigger budget holds a bigger model
        sizes = [row["largest_params"][g] for g in ("8", "16", "24", "80")]
        assert sizes == sorted(sizes) and sizes[-1] > 0
    assert budgets["full-bf16-sr"]["largest_params"]["24"] > budgets["full-fp32"]["largest_params"]["24"]
