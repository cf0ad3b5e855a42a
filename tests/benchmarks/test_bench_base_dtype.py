"""bench_base_dtype on tiny-random: each base (also NF4) runs in its own process and reports both peaks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_base_dtype.py"


def test_each_base_reports_its_weights_and_both_peaks() -> None:
    spec = importlib.util.spec_from_file_location("bench_base_dtype", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        report = bench.run("tiny-random", ["fp32", "bf16", "nf4"], batch_size=2, seq_len=16, device="cpu")
    finally:
        sys.modules.pop(spec.name, None)
    fp32, bf16, nf4 = (report["bases"][b] for b in ("fp32", "bf16", "nf4"))
    assert bf16["stored_weight_bytes"] * 2 == fp32["stored_weight_bytes"]  # the base halves
    assert nf4["stored_weight_bytes"] < bf16["stored_weight_bytes"]  # linear layers in 4 bits
    assert nf4["adapter_params"] == bf16["adapter_params"] == fp32["adapter_params"] > 0  # same adapters
    for row in (fp32, bf16, nf4):
        assert row["inference_peak_bytes"] > 0 and row["step_peak_bytes"] > 0
        assert row["ratio"] == row["step_peak_bytes"] / row["inference_peak_bytes"]
        assert 0.0 < row["loss"] < 20.0
