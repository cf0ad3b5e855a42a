"""Fused GPU backend (Triton): one launch regenerates z and adds it over all trainable tensors.

Each program owns TILE_BLOCKS Philox blocks of one tensor (TILE_BLOCKS × 128 weights): it loads the
weights once, runs Philox once per block (not per element), expands the 4 words to 128 signs with
shifts, adds ±v for every (seed, value) in order, and stores once. With `TRITON_INTERPRET=1` the same
kernel runs on CPU tensors, which is how CI checks its bits without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from fedmezo.zo.fingerprint import CHUNK_WORDS, LANES, U32Array, chunk_keys, num_chunks, words_of
from fedmezo.zo.interface import check_copy
from fedmezo.zo.layout import FlatBuffer, Segment
from fedmezo.zo.rng import ELEMENTS_PER_BLOCK
from fedmezo.zo.values import check_seeds

__all__ = [
    "FINGERPRINT_TILE",
    "TILE_BLOCKS",
    "TritonBackend",
    "triton_available",
    "triton_chunk_digests",
    "triton_philox_blocks",
]

TILE_BLOCKS = 16  # Philox blocks per program: 2,048 fp32 weights (8 KiB) per program
NUM_WARPS = 4  # warps per program (benchmarks/tune_triton_pass.py sweeps both on a GPU)
FINGERPRINT_TILE = 4096  # words per fingerprint program (16 KiB); must divide CHUNK_WORDS


def triton_available(device: torch.device | str) -> bool:
    """Triton runs on CUDA devices, and on CPU tensors under TRITON_INTERPRET=1."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    """Import the optional triton lazily: it may be absent, imports slowly, and CPU replicas never use it."""
    from fedmezo.zo._triton_kernels import apply_kernel, words_kernel

    return apply_kernel, words_kernel


def _keys_tensor(seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """Seeds as interleaved (low, high) 32-bit words, stored as int32 and bit-cast in the kernel."""
    u64 = np.array(seeds, dtype=np.uint64)
    words = np.stack([(u64 & np.uint64(0xFFFFFFFF)), (u64 >> np.uint64(32))], axis=1).astype(np.uint32)
    return torch.from_numpy(words.reshape(-1).view(np.int32).copy()).to(device)


@lru_cache(maxsize=1)
def _fingerprint_kernel() -> Any:
    """Import the optional triton lazily, as `_kernels` does."""
    from fedmezo.zo._triton_fingerprint import digest_kernel

    return digest_kernel


@lru_cache(maxsize=8)
def _chunk_keys_on(n_chunks: int, device: torch.device) -> torch.Tensor:
    """The chunk keys as int32 on `device`, uploaded once per buffer size."""
    return torch.from_numpy(chunk_keys(n_chunks).reshape(-1).view(np.int32).copy()).to(device)


def triton_chunk_digests(
    flat: torch.Tensor, tile: int = FINGERPRINT_TILE, num_warps: int = NUM_WARPS
) -> U32Array:
    """fedmezo-fp-v1 chunk digests computed where `flat` lives; only (n_chunks, 4) words reach the host."""
    if CHUNK_WORDS % tile:
        raise ValueError(f"the fingerprint tile ({tile}) must divide the chunk ({CHUNK_WORDS} words)")
    if not triton_available(flat.device):
        raise RuntimeError(f"Triton cannot run on {flat.device} here (CUDA, or CPU with TRITON_INTERPRET=1)")
    words = words_of(flat)
    n_chunks = num_chunks(words.numel())
    tiles_per_chunk = CHUNK_WORDS // tile
    sums = torch.zeros((n_chunks * tiles_per_chunk, LANES), dtype=torch.int64, device=flat.device)
    n_tiles = -(-words.numel() // tile)  # the last chunk's missing tiles keep their zero sums
    _fingerprint_kernel()[(n_tiles,)](
        words, _chunk_keys_on(n_chunks, flat.device), sums, words.numel(),
        CHUNK=CHUNK_WORDS, TILE=tile, num_warps=num_warps,
    )  # fmt: skip
    digests = sums.view(n_chunks, tiles_per_chunk, LANES).sum(dim=1) & 0xFFFFFFFF  # exact integer sums
    return digests.cpu().numpy().astype(np.uint32)


@lru_cache(maxsize=16)
def _tile_table(segments: tuple[Segment, ...], device: torch.device, tile: int) -> tuple[torch.Tensor, ...]:
    rows = []
    for seg in segments:
        n_blocks = -(-seg.numel // ELEMENTS_PER_BLOCK)
        for b0 in range(0, n_blocks, tile):
            rows.append((seg.offset, seg.numel, seg.tensor_id, b0))
    table = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)
    return tuple(table[:, i].contiguous().to(device) for i in range(4))


def triton_philox_blocks(
    seed: int, tensor_id: int, blocks: Sequence[int], device: torch.device | str
) -> np.ndarray:
    """Philox words (n, 4) uint32 computed by the Triton kernel for arbitrary 64-bit block ids."""
    _, words_kernel = _kernels()
    device = torch.device(device)
    n = len(blocks)
    block_ids = torch.tensor(np.array(blocks, dtype=np.uint64).view(np.int64), device=device)
    out = torch.empty(4 * n, dtype=torch.int32, device=device)
    size = max(16, 1 << (n - 1).bit_length())
    words_kernel[(1,)](out, _keys_tensor([seed], device), tensor_id, block_ids, 0, n, BLOCK=size)
    return out.cpu().numpy().view(np.uint32).reshape(n, 4)


class TritonBackend:
    """One Triton launch per apply, over every trainable tensor, for all (seed, value) pairs."""

    name = "triton"
    seed_batch: int | None = None  # each program keeps its tile in registers: any number of seeds at once

    def __init__(self, tile_blocks: int = TILE_BLOCKS, num_warps: int = NUM_WARPS):
        self.tile_blocks = tile_blocks
        self.num_warps = num_warps

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        """fedmezo-fp-v1 chunk digests of a flat fp32 buffer, on the device that holds it."""
        return triton_chunk_digests(flat, num_warps=self.num_warps)

    def apply(self, params: FlatBuffer, seeds: Sequence[int], values: Sequence[float]) -> None:
        """θ += Σ v z; with a compute copy attached, the same pass also writes copy = bf16(θ)."""
        copy = params.compute.copy if params.compute is not None else None
        if copy is not None:
            check_copy(params, copy)
        self._launch(params, seeds, values, copy=copy, store_theta=True)

    def derive_copy(
        self, params: FlatBuffer, copy: torch.Tensor, seeds: Sequence[int], values: Sequence[float]
    ) -> None:
        """copy ← bf16(θ + Σ v z) in one pass that never stores θ."""
        check_copy(params, copy)
        self._launch(params, seeds, values, copy=copy, store_theta=False)

    def _launch(
        self,
        params: FlatBuffer,
        seeds: Sequence[int],
        values: Sequence[float],
        *,
        copy: torch.Tensor | None,
        store_theta: bool,
    ) -> None:
        check_seeds(seeds, values)
        if not seeds and copy is None:
            return
        device = params.flat.device
        if not triton_available(device):
            raise RuntimeError(f"Triton cannot run on {device} here (CUDA, or CPU with TRITON_INTERPRET=1)")
        apply_kernel, _ = _kernels()
        tiles = _tile_table(params.segments, device, self.tile_blocks)
        vals = torch.tensor(np.array(values, dtype=np.float64).astype(np.float32), device=device)
        keys = _keys_tensor(seeds, device) if seeds else torch.zeros(2, dtype=torch.int32, device=device)
        apply_kernel[(tiles[0].numel(),)](
            params.flat,
            *tiles,
            keys,
            vals,
            len(seeds),
            params.flat if copy is None else copy.view(torch.int16),
            TILE=self.tile_blocks,
            STORE_THETA=store_theta,
            STORE_COPY=copy is not None,
            num_warps=self.num_warps,
        )
