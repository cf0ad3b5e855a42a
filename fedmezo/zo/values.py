"""The coefficients a kernel adds: fp32 rounding on the host and the checks every backend runs first.

A leaf module: step, delta and every backend round and validate (seed, value) lists the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_seeds", "to_fp32"]


def to_fp32(value: float) -> float:
    """Round a host float to the nearest fp32 once (design §2: v is computed on the host)."""
    return float(np.float32(value))


def check_seeds(seeds: Sequence[int], values: Sequence[float]) -> None:
    """Refuse mismatched lengths, seeds outside uint64 and non-finite values before any weight is touched."""
    if len(seeds) != len(values):
        raise ValueError(f"{len(seeds)} seeds but {len(values)} values")
    for seed in seeds:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed}")
    for value in values:
        if not np.isfinite(value):
            raise ValueError(f"non-finite coefficient {value}")
