"""bench_zo's fingerprint rows: the new fingerprint next to the host SHA-256 it replaced (tiny-random)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_zo.py"


def test_fingerprint_only_reports_both_hashes(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_zo", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--model", "tiny-random", "--device", "cpu", "--fingerprint-only", "--repeats", "1", "--json"]
    assert bench.main(argv) == 0
    row = json.loads(capsys.readouterr().out)["devices"]["cpu"]
    assert row["backend"] == "numba" and row["params"] > 1_000_000
    assert row["fingerprint_ms"] > 0 and row["host_sha256_ms"] > 0
    assert row["fingerprint_vs_sha256"] == pytest.approx(row["fingerprint_ms"] / row["host_sha256_ms"])
