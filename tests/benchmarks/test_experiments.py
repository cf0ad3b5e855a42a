"""`make experiments QUICK=1` end to end (issue #5: the quick mode runs in CI), and its verdict logic."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "convergence_rounds",
    "convergence_wallclock",
    "convergence_wallclock_link",
    "exact_match",
    "memory",
    "communication",
    "personalization",
    "sensitivity",
    "trajectory",
)
# Issue #5 asks for <= 20 min on a 2-core CPU; that figure is measured and recorded (summary.json,
# RESULTS.md), not asserted here: a shared CI machine must not turn a timing into a failure.
QUICK_TIMEOUT_S = 45 * 60


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("experiments", ROOT / "benchmarks" / "experiments.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiments"] = module
    spec.loader.exec_module(module)
    return module


experiments = _load()


@pytest.mark.timeout(QUICK_TIMEOUT_S + 300)
def test_make_experiments_quick(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        ["make", "--no-print-directory", "experiments", "QUICK=1", f"EXPERIMENTS_OUT={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=QUICK_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["name"] == "quick" and summary["plan"]["model"] == "smollm2-135m"
    assert summary["wall_seconds"] > 0
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    text = (out / "RESULTS.md").read_text()
    assert text.count(experiments.BEGIN) == 1 and text.count(experiments.END) == 1
    verdicts = summary["verdicts"]
    assert [v["claim"][:2] for v in verdicts] == ["1.", "2.", "3.", "4."]
    assert all(v["verdict"] in ("confirmed", "partly confirmed", "refuted") for v in verdicts)
    for v in verdicts:
        assert f"**{v['verdict']}**" in text
    # Claim 4 is fedmezo's own and must hold even at quick size: same trajectory as full-state FedMeZO.
    gaps = [g for per_run in summary["trajectory"].values() for _, g in per_run]
    assert gaps and max(gaps) <= 1e-4
    assert verdicts[3]["verdict"] == "confirmed"
    # A MeZO step stays near inference memory; backprop with AdamW does not (real weights, real batch).
    memory = summary["memory"]
    inference = memory["inference"]["peak_bytes"]
    assert memory["fedmezo"]["peak_bytes"] / inference <= 1.1
    assert memory["fedavg-adamw"]["peak_bytes"] > memory["fedmezo"]["peak_bytes"]


def _run(losses: list[float], seconds: float = 1.0, bytes_per_round: int = 100) -> dict[str, Any]:
    rounds = [
        {"round_id": i, "eval_loss": loss, "exact_match": None, "round_seconds": 0.0 if i == 0 else seconds,
         "bytes_up": 0 if i == 0 else bytes_per_round, "bytes_down": 0, "selected": [] if i == 0 else ["a"],
         "peak_memory_bytes": 1}
        for i, loss in enumerate(losses)
    ]  # fmt: skip
    return {"rounds": rounds, "config": {"rounds": len(losses) - 1, "local_steps": 1}}


def _results(
    zo: list[float], fo: list[float], full: list[float], personal: dict[str, list[float]]
) -> dict[str, Any]:
    conv = {
        "c3": {"fedmezo": _run(zo), "fedmezo-full": _run(full, bytes_per_round=10**6), "fedavg": _run(fo)}
    }
    results = {
        "convergence": conv,
        "memory": {k: {"peak_bytes": v, "baseline_bytes": 0} for k, v in
                   {"inference": 100, "fedmezo": 101, "fedavg-sgd": 150, "fedavg-adamw": 300}.items()},
        "personalization": {"1e-4": {s: _run(v) for s, v in personal.items()}},
    }  # fmt: skip
    results["trajectory"] = {
        "c3": experiments.trajectory_gap(conv["c3"]["fedmezo"], conv["c3"]["fedmezo-full"])
    }
    return results


def test_verdicts_follow_the_numbers() -> None:
    personal = {"frozen": [3.0, 2.5], "random": [3.0, 2.4], "round-wise": [3.0, 2.6]}
    good = _results([3.0, 2.0], [3.0, 2.5], [3.0, 2.0], personal)
    by_claim = {v["claim"][0]: v["verdict"] for v in experiments.verdicts(good)}
    assert by_claim == {"1": "confirmed", "2": "confirmed", "3": "partly confirmed", "4": "confirmed"}
    bad = _results([3.0, 2.9], [3.0, 2.0], [3.0, 2.8], {"frozen": [3.0, 2.0], "random": [3.0, 2.1]})
    by_claim = {v["claim"][0]: v["verdict"] for v in experiments.verdicts(bad)}
    assert by_claim == {"1": "refuted", "2": "confirmed", "3": "refuted", "4": "refuted"}


def test_personalization_verdict_counts_every_base_rate() -> None:
    results = _results([3.0, 2.0], [3.0, 2.5], [3.0, 2.0], {"frozen": [3.0, 2.5], "random": [3.0, 2.6]})
    results["personalization"]["3e-05"] = {"frozen": _run([3.0, 2.8]), "random": _run([3.0, 2.7])}
    verdict = experiments.claim_personalization(results)
    assert verdict["verdict"] == "partly confirmed"
    assert "η₀ 1e-4" in verdict["evidence"] and "η₀ 3e-05" in verdict["evidence"]


def test_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    quoted = f"Prose that quotes `{experiments.BEGIN}` inline is not a marker."
    md.write_text(f"# Measured results\n\n## Other\n{quoted}\nkeep me\n")
    first = f"{experiments.BEGIN}\nold\n{experiments.END}\n"
    experiments.write_section(md, first)
    experiments.write_section(md, f"{experiments.BEGIN}\nnew\n{experiments.END}\n")
    text = md.read_text()
    assert "keep me" in text and quoted in text and "new" in text and "old" not in text
    assert text.count(f"\n{experiments.BEGIN}\n") == 1


def test_the_federated_model_is_a_step_function_of_wall_clock() -> None:
    curve = [(0.0, 4.0), (10.0, 2.0)]
    assert experiments.loss_at(curve, 5.0) == 4.0  # round 1 has not closed yet
    assert experiments.loss_at(curve, 10.0) == 2.0
    assert math.isnan(experiments.loss_at(curve, 11.0))


def test_transfers_over_the_link_are_added_per_round() -> None:
    run = _run([3.0, 2.0, 1.0], seconds=1.0, bytes_per_round=12_500_000)  # 100 Mbit for one client
    assert experiments.wall_curve(run) == [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0)]
    with_link = experiments.wall_curve(run, link_mbps=100.0)
    assert with_link == [(0.0, 3.0), (pytest.approx(2.0), 2.0), (pytest.approx(4.0), 1.0)]


def test_time_to_a_target_loss() -> None:
    curve = [(0.0, 4.0), (10.0, 2.5), (20.0, 2.0)]
    assert experiments.time_to(curve, 2.5) == 10.0
    assert experiments.time_to(curve, 1.0) == math.inf


def test_mean_loss_after_start_is_the_area_under_the_curve() -> None:
    assert experiments.mean_loss_after_start(_run([4.0, 3.0, 1.0])) == pytest.approx(2.0)  # round 0 left out
