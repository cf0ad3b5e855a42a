"""bench_bf16_weights on tiny-random: every arm trains in its own process, resumes from its file, and
round-to-nearest bf16 erases the small updates that stochastic rounding keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.scripts import load_script

from fedmezo.models import build_random_model, tiny_random_config


def _bench() -> object:
    return load_script("benchmarks/bench_bf16_weights.py")


def test_arms_resume_and_nearest_rounding_erases_small_updates(tmp_path: Path) -> None:
    bench = _bench()
    # tiny-random's matrices are ±0.02 (bf16 ulp 2^-13 ~ 1.2e-4): updates of lr·g ~ 1e-6 are far below it
    args = ["--model", "tiny-random", "--steps", "6", "--eval-every", "3", "--eval-examples", "8",
            "--lr", "1e-6", "--eps", "1e-2", "--seeds", "0", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main([*args, "--json"]) == 0  # type: ignore[attr-defined]
    runs = {p.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    by_format = {r["format"]: r for r in runs.values()}
    assert set(by_format) == {"fp32", "bf16-sr", "bf16-rn", "fp32-bf16fwd", "bf16-sr-vec32"}
    theta0 = build_random_model(tiny_random_config())
    assert sum(p.numel() for p in theta0.parameters()) == by_format["bf16-sr"]["params"]
    rn, sr = by_format["bf16-rn"], by_format["bf16-sr"]
    assert len({loss for _, loss in rn["curve"]}) == 1  # nearest rounding: θ never moved
    assert len({loss for _, loss in sr["curve"]}) > 1  # stochastic rounding: it did
    assert sr["memory_ratio"] > 0 and sr["inference_peak_bytes"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert summary["summary"]["bf16-sr"]["start"] == summary["summary"]["bf16-rn"]["start"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    assert bench.main(args) == 0  # type: ignore[attr-defined]  # everything cached: nothing reruns
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")} == stamps


def test_fzoo_rounds_apply_one_delta_per_round(tmp_path: Path) -> None:
    bench = _bench()
    args = ["--model", "tiny-random", "--steps", "4", "--eval-every", "2", "--eval-examples", "8",
            "--estimator", "fzoo", "--perturbations", "2", "--lr", "1e-3", "--round-steps", "2",
            "--seeds", "0", "--formats", "fp32", "bf16-sr", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(args) == 0  # type: ignore[attr-defined]
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*-fzoo-p2-tau2-*.json"))]
    assert {r["format"] for r in runs} == {"fp32", "bf16-sr"}
    for run in runs:
        assert run["forwards_per_step"] == 3 and run["round_steps"] == 2
        assert [step for step, _ in run["curve"]] == [0, 2, 4]  # θ between rounds only
        assert run["curve"][-1][1] != run["curve"][0][1]  # the round deltas moved θ
    assert (tmp_path / "summary-fzoo-p2-tau2.json").exists()
    bad = [*args[:5], "3", *args[6:]]  # --eval-every 3 falls inside a round
    with pytest.raises(SystemExit):
        bench.main(bad)  # type: ignore[attr-defined]


def test_summary_judges_bf16_sr_against_fp32_with_other_directions(tmp_path: Path) -> None:
    """fp32 with `--direction-salt 1` (the same batches, other directions) joins the plain summary as
    the noise row, and every gap to fp32 is reported the same way."""
    bench = _bench()
    args = ["--model", "tiny-random", "--steps", "4", "--eval-every", "2", "--eval-examples", "8",
            "--lr", "1e-3", "--round-steps", "2", "--seeds", "0", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main([*args, "--formats", "fp32", "--direction-salt", "1"]) == 0  # type: ignore[attr-defined]
    assert bench.main([*args, "--formats", "fp32", "bf16-sr"]) == 0  # type: ignore[attr-defined]
    summary = json.loads((tmp_path / "summary-tau2.json").read_text())
    assert set(summary["curves"]) == {"fp32/0", "bf16-sr/0", "fp32-dir1/0"}
    assert summary["curves"]["fp32-dir1/0"][0] == summary["curves"]["fp32/0"][0]  # same θ0 and batches
    assert summary["curves"]["fp32-dir1/0"][-1] != summary["curves"]["fp32/0"][-1]  # other directions
    noise = summary["summary"]["fp32-dir1_minus_fp32"]["0"]
    final = summary["curves"]["fp32-dir1/0"][-1][1] - summary["curves"]["fp32/0"][-1][1]
    assert noise["final"] == pytest.approx(final) and noise["second_half_mean_abs"] > 0
    assert summary["summary"]["bf16-sr_minus_fp32"]["0"]["final"] == pytest.approx(
        summary["summary"]["bf16_sr_minus_fp32_same_stream"][0]
    )
