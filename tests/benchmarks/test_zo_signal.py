"""benchmarks/zo_signal.py on tiny-random: every weight group measured, the ratios from their parts, and
each trace with the standard error of its probes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers.scripts import load_script

zo_signal = load_script("benchmarks/zo_signal.py")


def test_every_group_is_measured_and_the_subset_ratio_is_of_sums(tmp_path: Path) -> None:
    out = tmp_path / "signal.json"
    assert zo_signal.main(["--model", "tiny-random", "--batches", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["groups"]
    assert result["batches"] == 2
    assert {"embed_tokens", "q_proj", "down_proj", "final_norm"} <= set(rows)
    assert sum(r["numel"] for r in rows.values()) > 1_000_000  # every trainable weight of tiny-random
    for row in rows.values():
        assert row["g2"] >= row["mean_g2"] >= 0.0  # E|g_b|² ≥ |E g_b|² (Jensen)
        assert math.isclose(row["ratio"], row["g2"] / row["trace"])
        assert len(row["probes"]) == 2
        assert math.isclose(row["trace"], sum(row["probes"]) / 2)
        assert math.isclose(row["trace_se"], abs(row["probes"][0] - row["probes"][1]) / 2)
    rest = [g for g in rows if g != "embed_tokens"]
    subset = result["subsets"]["all but embed_tokens"]
    assert math.isclose(subset["trace"], sum(rows[g]["trace"] for g in rest))
    assert math.isclose(subset["ratio"], sum(rows[g]["g2"] for g in rest) / subset["trace"])
    per_probe = [sum(rows[g]["probes"][i] for g in rest) for i in range(2)]
    assert math.isclose(subset["trace_se"], abs(per_probe[0] - per_probe[1]) / 2)


def test_a_trace_within_two_standard_errors_of_zero_is_not_a_measurement() -> None:
    assert math.isclose(zo_signal.standard_error([1.0, 3.0, 5.0]), 2.0 / math.sqrt(3))
    assert math.isnan(zo_signal.standard_error([1.0]))
    assert zo_signal.measured(10.0, 4.9)
    assert not zo_signal.measured(10.0, 5.1)
    assert not zo_signal.measured(-10.0, 1.0)
    assert zo_signal.measured(10.0, float("nan"))  # one probe has no SE: the value stands as measured
