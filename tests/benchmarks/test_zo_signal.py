"""benchmarks/zo_signal.py on tiny-random: every weight group measured, the ratios from their parts."""

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
    rest = [g for g in rows if g != "embed_tokens"]
    expected = sum(rows[g]["g2"] for g in rest) / sum(rows[g]["trace"] for g in rest)
    assert math.isclose(result["subsets"]["all but embed_tokens"], expected)
