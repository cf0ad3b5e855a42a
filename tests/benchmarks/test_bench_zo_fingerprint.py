"""bench_zo's fingerprint rows: the new fingerprint next to the host SHA-256 it replaced (tiny-random)."""

from __future__ import annotations

import json

import pytest
from helpers.scripts import load_script


def test_fingerprint_only_reports_both_hashes(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script("benchmarks/bench_zo.py")
    argv = ["--model", "tiny-random", "--device", "cpu", "--fingerprint-only", "--repeats", "1", "--json"]
    assert bench.main(argv) == 0
    row = json.loads(capsys.readouterr().out)["devices"]["cpu"]
    assert row["backend"] == "numba" and row["params"] > 1_000_000
    assert row["fingerprint_ms"] > 0 and row["host_sha256_ms"] > 0
    assert row["fingerprint_vs_sha256"] == pytest.approx(row["fingerprint_ms"] / row["host_sha256_ms"])
