"""bench_seed_schemes --quick: the structural facts behind its table, not its timings.

Shared seeds: the delta has τ·P coefficients and a client's replay applies τ·P seeds whatever N, so the
downlink is the same for every N; per-client seeds: N·τ·P coefficients, a downlink that grows with N.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers.scripts import script_module

TAU = 20


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    with script_module("benchmarks/bench_seed_schemes.py") as module:
        yield module


def run(bench: ModuleType, tmp_path: Path, *extra: str) -> dict[str, Any]:
    output = tmp_path / "seed_schemes.json"
    assert bench.main(["--quick", "--output", str(output), *extra]) == 0
    report: dict[str, Any] = json.loads(output.read_text())
    return report


def rows_of(report: dict[str, Any], scheme: str, p: int) -> list[dict[str, Any]]:
    rows = [r for r in report["rows"] if r["scheme"] == scheme and r["perturbations"] == p]
    return sorted(rows, key=lambda r: r["clients"])


def test_quick_report_shows_shared_seeds_independent_of_n(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run(bench, tmp_path)
    assert report["local_steps"] == TAU and report["layout"] == "quick"
    assert len(report["load_average_before"]) == 3 and len(report["load_average_after"]) == 3
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert len(report["rows"]) == 6  # per-client:1, shared:1, shared:4 × N in {3, 10}

    for p in (1, 4):
        shared = rows_of(report, "shared", p)
        assert [r["clients"] for r in shared] == [3, 10]
        for row in shared:
            assert row["coefficients"] == TAU * p  # the shared delta: τ·P coefficients
            assert row["applied_seeds"] == TAU * p and row["apply_how"] == "measured"  # replay: τ·P seeds
        assert len({r["downlink_bytes"] for r in shared}) == 1  # the same bytes for every N
        assert len({r["delta_message_bytes"] for r in shared}) == 1
        assert all(r["downlink_bytes"] > r["delta_message_bytes"] for r in shared)

    per_client = rows_of(report, "per-client", 1)
    assert [r["coefficients"] for r in per_client] == [3 * TAU, 10 * TAU]
    assert [r["applied_seeds"] for r in per_client] == [3 * TAU, 10 * TAU]
    assert per_client[0]["downlink_bytes"] < per_client[1]["downlink_bytes"]  # grows with N
    shared_p1 = rows_of(report, "shared", 1)
    assert per_client[0]["downlink_bytes"] > shared_p1[0]["downlink_bytes"]
    for row in report["rows"]:
        assert row["apply_s"] > 0 and row["close_round_ms"] > 0 and row["derive_ms"] > 0
        assert row["replay_s"] == pytest.approx(row["derive_ms"] / 1e3 + row["apply_s"])

    out = capsys.readouterr().out
    assert out.startswith("| seeds | P | N |") and out.count("\n| shared |") == 4


def test_an_extrapolated_replay_says_so(bench: ModuleType, tmp_path: Path) -> None:
    report = run(
        bench, tmp_path, "--clients", "3", "20", "--cases", "per-client:1", "shared:1",
        "--full-replay-max-seeds", "300", "--sample-seeds", "256",
    )  # fmt: skip
    by_n = {r["clients"]: r for r in rows_of(report, "per-client", 1)}
    assert by_n[3]["apply_how"] == "measured" and by_n[3]["applied_seeds"] == 3 * TAU
    big = by_n[20]
    assert big["apply_how"] == "extrapolated" and big["applied_seeds"] == 256
    assert big["coefficients"] == 20 * TAU
    assert "extrapolated" in report["table"]
    assert all(r["apply_how"] == "measured" for r in rows_of(report, "shared", 1))
