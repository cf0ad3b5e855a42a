"""bench_compile: its synthetic data covers the buckets, and (on a GPU) both settings agree bit for bit."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any

import pytest
import torch
from helpers.scripts import ROOT, load_script

from fedmezo.zo.graphs import bucket_length


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    return load_script("benchmarks/bench_compile.py")


def test_random_dataset_spans_the_buckets(bench: ModuleType) -> None:
    dataset = bench.random_dataset(vocab=100, max_length=64)
    widths = {dataset.batch_for_step(seed, 1).input_ids.shape[1] for seed in range(200)}
    assert min(widths) >= 16 and max(widths) <= 64
    assert len({bucket_length(w, 64) for w in widths}) >= 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda(bench: ModuleType) -> None:
    assert bench.main(["--model", "tiny-random", "--steps", "2"]) == 2


def _run(bench: ModuleType, device: str, dtypes: list[str]) -> dict[str, Any]:
    args = argparse.Namespace(
        model="tiny-random", batch_size=2, max_length=32, steps=3, estimator="fzoo", perturbations=2,
        dtypes=dtypes, device=device,
    )  # fmt: skip
    report: dict[str, Any] = bench.run(args)
    return report


def test_cpu_dry_run_traces_and_agrees_bit_for_bit(bench: ModuleType) -> None:
    report = _run(bench, "cpu", ["fp32"])  # bf16's compute copy runs in Triton's slow interpreter here
    for row in report["modes"].values():
        assert row["bit_identical"] and row["on"]["dynamo_graphs"] >= 1 and row["off"]["dynamo_graphs"] == 0
        assert row["off"]["step_ms"] > 0 and row["on"]["two_forwards_ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_and_eager_tasks_agree_bit_for_bit(bench: ModuleType) -> None:
    report = _run(bench, "cuda", ["fp32", "bf16"])
    for row in report["modes"].values():
        assert row["bit_identical"] and row["on"]["cudagraph_skips"] == 0, report
