"""Backends that add c·z(seed) to the flat parameter buffer, and how one is chosen.

Every backend implements two operations. `apply(params, seeds, values)`: for each element,
in the order given, `w ← fp32(w + (z_k ? v_k : −v_k))` with `v_k = fp32(values[k])` (design §2).
A MeZO perturbation is one (seed, ±ε) pair, the restore-and-update is (seed, ε), (seed, −η·g), and a
round delta is its (seed, c_s) list in ascending seed order. `chunk_digests(flat)`: the parallel part
of the fingerprint (fedmezo-fp-v1, fingerprint.py), run where θ lives. All backends give identical bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from fedmezo.zo.fingerprint import U32Array, chunk_digests_reference, words_of
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.rng import rademacher

__all__ = ["Backend", "ReferenceBackend", "available_backends", "get_backend", "to_fp32"]


def to_fp32(value: float) -> float:
    """Round a host float to the nearest fp32 once (design §2: v is computed on the host)."""
    return float(np.float32(value))


def check_seeds(seeds: Sequence[int], values: Sequence[float]) -> None:
    if len(seeds) != len(values):
        raise ValueError(f"{len(seeds)} seeds but {len(values)} values")
    for seed in seeds:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed}")
    for value in values:
        if not np.isfinite(value):
            raise ValueError(f"non-finite coefficient {value}")


class Backend(Protocol):
    """Adds Σ_k v_k·z(seed_k) to every trainable tensor, one fp32 add per (element, k)."""

    name: str

    def apply(self, params: TrainableParams, seeds: Sequence[int], values: Sequence[float]) -> None: ...

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        """fedmezo-fp-v1 chunk digests (n_chunks, 4) uint32 of a flat fp32 buffer (fingerprint.py)."""
        ...


class ReferenceBackend:
    """Readable and slow: materialises z per tensor with the numpy Philox reference. For tests."""

    name = "reference"

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        return chunk_digests_reference(words_of(flat).cpu().numpy().view(np.uint32))

    def apply(self, params: TrainableParams, seeds: Sequence[int], values: Sequence[float]) -> None:
        check_seeds(seeds, values)
        for seg in params.segments:
            w = params.flat[seg.offset : seg.offset + seg.numel]
            for seed, value in zip(seeds, values):
                z = rademacher(seed, seg.tensor_id, seg.numel).to(w.device)
                v = torch.tensor(to_fp32(value), dtype=torch.float32, device=w.device)
                w.add_(torch.where(z > 0, v, -v))  # fp32 + fp32, no multiply: exact IEEE add
        params.refresh_compute()


_BACKENDS: dict[str, Backend] = {}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on `device` here."""
    device = torch.device(device)
    names = ["reference"]
    if device.type == "cpu":
        names.append("numba")
    from fedmezo.zo import triton_kernel

    if triton_kernel.triton_available(device):
        names.append("triton")
    return names


def get_backend(device: torch.device | str = "cpu", name: str | None = None) -> Backend:
    """The fastest backend for `device` (numba on CPU, Triton on CUDA), or the one named."""
    device = torch.device(device)
    if name is None:
        name = "triton" if device.type == "cuda" else "numba"
    if name not in _BACKENDS:
        if name == "reference":
            _BACKENDS[name] = ReferenceBackend()
        elif name == "numba":
            from fedmezo.zo.cpu_kernel import NumbaBackend

            _BACKENDS[name] = NumbaBackend()
        elif name == "triton":
            from fedmezo.zo.triton_kernel import TritonBackend

            _BACKENDS[name] = TritonBackend()
        else:
            raise ValueError(f"unknown backend {name!r}; choose reference, numba or triton")
    return _BACKENDS[name]
