"""The Backend interface every kernel implements, and the readable reference backend that defines it.

Three operations, identical bits on every backend:

- `apply(params, seeds, values)`: for each element, in the order given, `w ← fp32(w + (z_k ? v_k : −v_k))`
  with `v_k = fp32(values[k])` (design §2); an attached compute copy then follows θ. A MeZO perturbation
  is one (seed, ±ε) pair, the restore-and-update is (seed, ε), (seed, −η·g), and a round delta is its
  (seed, c_s) list in ascending seed order.
- `derive_copy(params, copy, seeds, values)`: `copy ← bf16(θ + Σ_k v_k·z(seed_k))` with θ untouched: the
  perturbed forwards of mixed precision (mixed.py). A backend whose kernel can write the copy does it
  in its own pass; the others add on a scratch θ (`derive_copy_on_scratch`).
- `chunk_digests(flat)`: the parallel part of the fingerprint (fedmezo-fp-v1, fingerprint.py).

`seed_batch` is how many seeds one kernel call takes best: `apply` splits longer lists into consecutive
batches itself (`seed_batches`), so callers hand it a whole round delta.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from fedmezo.zo.fingerprint import U32Array, chunk_digests_reference, words_of
from fedmezo.zo.layout import FlatBuffer
from fedmezo.zo.rng import rademacher
from fedmezo.zo.values import check_seeds, to_fp32

__all__ = ["Backend", "ReferenceBackend", "check_copy", "derive_copy_on_scratch", "seed_batches"]


class Backend(Protocol):
    """Adds Σ_k v_k·z(seed_k) to every trainable tensor, one fp32 add per (element, k)."""

    name: str
    seed_batch: int | None  # seeds per kernel call that run fastest; None: any number at once

    def apply(self, params: FlatBuffer, seeds: Sequence[int], values: Sequence[float]) -> None:
        """θ += Σ v·z(seed), in the order given; an attached compute copy follows θ."""
        ...

    def derive_copy(
        self, params: FlatBuffer, copy: torch.Tensor, seeds: Sequence[int], values: Sequence[float]
    ) -> None:
        """copy ← bf16(θ + Σ v·z(seed)); θ is not written."""
        ...

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        """fedmezo-fp-v1 chunk digests (n_chunks, 4) uint32 of a flat fp32 buffer (fingerprint.py)."""
        ...


def seed_batches(
    seeds: Sequence[int], values: Sequence[float], size: int | None
) -> Iterator[tuple[Sequence[int], Sequence[float]]]:
    """Consecutive (seeds, values) slices of at most `size` pairs; all at once when `size` is None.

    Every element still receives its adds in the given order, so batching never changes a bit.
    """
    if size is None or len(seeds) <= size:
        yield seeds, values
        return
    for start in range(0, len(seeds), size):
        yield seeds[start : start + size], values[start : start + size]


def check_copy(params: FlatBuffer, copy: torch.Tensor) -> None:
    if copy.shape != params.flat.shape or copy.device != params.flat.device or copy.dtype != torch.bfloat16:
        raise ValueError("the compute copy must be bf16 and match the flat buffer's shape and device")


def derive_copy_on_scratch(
    backend: Backend, params: FlatBuffer, copy: torch.Tensor, seeds: Sequence[int], values: Sequence[float]
) -> None:
    """`derive_copy` for a backend that cannot write the copy itself: the same adds on a scratch θ."""
    check_copy(params, copy)
    scratch = params.scratch()
    backend.apply(scratch, seeds, values)
    copy.copy_(scratch.flat)


class ReferenceBackend:
    """Readable and slow: materialises z per tensor with the numpy Philox reference. For tests."""

    name = "reference"
    seed_batch: int | None = None

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        return chunk_digests_reference(words_of(flat).cpu().numpy().view(np.uint32))

    def apply(self, params: FlatBuffer, seeds: Sequence[int], values: Sequence[float]) -> None:
        check_seeds(seeds, values)
        for seg in params.segments:
            w = params.flat[seg.offset : seg.offset + seg.numel]
            for seed, value in zip(seeds, values):
                z = rademacher(seed, seg.tensor_id, seg.numel).to(w.device)
                v = torch.tensor(to_fp32(value), dtype=torch.float32, device=w.device)
                w.add_(torch.where(z > 0, v, -v))  # fp32 + fp32, no multiply: exact IEEE add
        params.refresh_compute()

    def derive_copy(
        self, params: FlatBuffer, copy: torch.Tensor, seeds: Sequence[int], values: Sequence[float]
    ) -> None:
        derive_copy_on_scratch(self, params, copy, seeds, values)
