"""Shared test setup: Triton through its interpreter without a GPU; `gpu` tests skip cleanly on CPU."""

from __future__ import annotations

import os

import pytest
import torch

# Must be set before triton.jit decorates our kernels (fedmezo.zo._triton_kernels is imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
