"""Fused multi-threaded CPU backend (numba): regenerate z block by block and add it in place.

z is never materialised for a whole tensor: each thread takes a chunk of Philox blocks, computes
one block's 128 signs in registers and adds ±v to 128 weights, for every (seed, value) in order,
while those 512 bytes sit in L1. Memory traffic is one read and one write of the buffer per batch of
up to SEED_BATCH seeds, which is why a 64-seed round delta costs little more than one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numba
import numpy as np
import torch
from numba import njit, prange

from fedmezo.zo.fingerprint import U32Array, words_of
from fedmezo.zo.fingerprint_numba import chunk_digests_numba
from fedmezo.zo.interface import derive_copy_on_scratch, seed_batches
from fedmezo.zo.layout import FlatBuffer, Segment
from fedmezo.zo.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from fedmezo.zo.rng import DOMAIN_DIRECTION, ELEMENTS_PER_BLOCK
from fedmezo.zo.values import check_seeds

__all__ = ["CHUNK_BLOCKS", "SEED_BATCH", "NumbaBackend", "philox_block"]

CHUNK_BLOCKS = 256  # Philox blocks per work item: 32K elements, 128 KiB of fp32 (fits L2)
# Seeds per kernel call: 8 KiB of sign tables each, 2 MiB a batch. One call with 4,096 seeds ran 3.7x
# slower per seed than batches of 256 (the tables fall out of cache); the bits are the same either way.
SEED_BATCH = 256

_U32 = numba.uint32
_U64 = numba.uint64


@njit(inline="always", cache=True)
def _philox10(k0, k1, c0, c1, c2, c3):  # type: ignore[no-untyped-def]
    """Philox4x32-10 on one counter; all arguments and results are uint32 (see philox.py)."""
    for r in range(10):
        if r > 0:
            k0 = _U32(k0 + _U32(PHILOX_W0))
            k1 = _U32(k1 + _U32(PHILOX_W1))
        p0 = _U64(PHILOX_M0) * _U64(c0)
        p1 = _U64(PHILOX_M1) * _U64(c2)
        hi0 = _U32(p0 >> _U64(32))
        lo0 = _U32(p0 & _U64(0xFFFFFFFF))
        hi1 = _U32(p1 >> _U64(32))
        lo1 = _U32(p1 & _U64(0xFFFFFFFF))
        c0, c1, c2, c3 = _U32(hi1 ^ c1 ^ k0), lo1, _U32(hi0 ^ c3 ^ k1), lo0
    return c0, c1, c2, c3


@njit(cache=True)
def philox_block(seed_lo, seed_hi, tensor_id, block, domain):  # type: ignore[no-untyped-def]
    """The four words of one block (counter (b mod 2^32, t, domain, b div 2^32)); for conformance tests."""
    b = _U64(block)
    return _philox10(
        _U32(seed_lo),
        _U32(seed_hi),
        _U32(b & _U64(0xFFFFFFFF)),
        _U32(tensor_id),
        _U32(domain),
        _U32(b >> _U64(32)),
    )


@njit(inline="always", cache=True)
def _add_word(buf, base, word, tables, k, count):  # type: ignore[no-untyped-def]
    """buf[base + j] += (bit j of word ? v : −v) for j < count, one byte (8 signs) at a time.

    tables[k, byte, i] holds ±v_k for bit i of `byte`, so each 8-element run is one table row added to
    8 consecutive weights: a branch-free, vectorisable fp32 add (no multiply).
    """
    if count == 32:
        for q in range(4):
            byte = (word >> _U32(8 * q)) & _U32(255)
            for i in range(8):
                buf[base + 8 * q + i] = buf[base + 8 * q + i] + tables[k, byte, i]
    else:
        for j in range(count):
            buf[base + j] = buf[base + j] + tables[k, (word >> _U32(8 * (j // 8))) & _U32(255), j % 8]


LANES = 8  # Philox blocks generated together: one SIMD-friendly loop over 8 independent counters


@njit(inline="always", cache=True)
def _philox10_lanes(k0, k1, x0, x1, x2, x3):  # type: ignore[no-untyped-def]
    """Philox4x32-10 on LANES counters at once, in place; the loop over lanes vectorises (vpmuludq)."""
    for r in range(10):
        if r > 0:
            k0 = _U32(k0 + _U32(PHILOX_W0))
            k1 = _U32(k1 + _U32(PHILOX_W1))
        for lane in range(LANES):
            p0 = _U64(PHILOX_M0) * _U64(x0[lane])
            p1 = _U64(PHILOX_M1) * _U64(x2[lane])
            n0 = _U32(_U32(p1 >> _U64(32)) ^ x1[lane] ^ k0)
            n2 = _U32(_U32(p0 >> _U64(32)) ^ x3[lane] ^ k1)
            x1[lane] = _U32(p1 & _U64(0xFFFFFFFF))
            x3[lane] = _U32(p0 & _U64(0xFFFFFFFF))
            x0[lane] = n0
            x2[lane] = n2


@njit(parallel=True, cache=True)
def _apply_kernel(buf, chunk_offset, chunk_numel, chunk_tid, chunk_b0, chunk_b1, keys_lo, keys_hi, tables):  # type: ignore[no-untyped-def]
    n_seeds = tables.shape[0]
    for c in prange(chunk_offset.shape[0]):
        offset = chunk_offset[c]
        numel = chunk_numel[c]
        tid = _U32(chunk_tid[c])
        x0 = np.empty(LANES, np.uint32)
        x1 = np.empty(LANES, np.uint32)
        x2 = np.empty(LANES, np.uint32)
        x3 = np.empty(LANES, np.uint32)
        for g in range(chunk_b0[c], chunk_b1[c], LANES):
            lanes = min(LANES, chunk_b1[c] - g)
            for k in range(n_seeds):
                for lane in range(LANES):  # counters (b mod 2^32, t, 0, b div 2^32) for blocks g..g+7
                    b = _U64(g + lane)
                    x0[lane] = _U32(b & _U64(0xFFFFFFFF))
                    x1[lane] = tid
                    x2[lane] = _U32(0)
                    x3[lane] = _U32(b >> _U64(32))
                _philox10_lanes(keys_lo[k], keys_hi[k], x0, x1, x2, x3)
                for lane in range(lanes):
                    start = (g + lane) * 128
                    remaining = numel - start
                    base = offset + start
                    if remaining >= 128:  # full block
                        _add_word(buf, base, x0[lane], tables, k, 32)
                        _add_word(buf, base + 32, x1[lane], tables, k, 32)
                        _add_word(buf, base + 64, x2[lane], tables, k, 32)
                        _add_word(buf, base + 96, x3[lane], tables, k, 32)
                    else:  # a tensor's last, partial block
                        words = (x0[lane], x1[lane], x2[lane], x3[lane])
                        for wi in range(4):
                            count = min(32, remaining - wi * 32)
                            if count <= 0:
                                break
                            _add_word(buf, base + wi * 32, words[wi], tables, k, count)


_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(bool)  # (256, 8)


def _sign_tables(values: Sequence[float]) -> np.ndarray:
    """(n, 256, 8) fp32: row `byte` of table k holds +v_k where the byte's bit is set, −v_k elsewhere."""
    vals = np.array(values, dtype=np.float64).astype(np.float32)  # round each once, to nearest
    v = vals[:, None, None]
    return np.ascontiguousarray(np.where(_BYTE_BITS[None], v, -v).astype(np.float32))


@lru_cache(maxsize=16)
def _chunk_table(segments: tuple[Segment, ...]) -> tuple[np.ndarray, ...]:
    """Split every tensor's blocks into work items of CHUNK_BLOCKS so threads stay balanced."""
    rows = []
    for seg in segments:
        n_blocks = -(-seg.numel // ELEMENTS_PER_BLOCK)
        for b0 in range(0, n_blocks, CHUNK_BLOCKS):
            rows.append((seg.offset, seg.numel, seg.tensor_id, b0, min(b0 + CHUNK_BLOCKS, n_blocks)))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return tuple(np.ascontiguousarray(table[:, i]) for i in range(5))


class NumbaBackend:
    """Fused regenerate-and-add over the whole flat buffer on CPU threads (numba prange)."""

    name = "numba"
    seed_batch: int | None = SEED_BATCH

    def chunk_digests(self, flat: torch.Tensor) -> U32Array:
        """fedmezo-fp-v1 chunk digests on CPU threads (fingerprint_numba)."""
        if flat.device.type != "cpu":
            raise ValueError("the numba backend runs on CPU tensors only")
        return chunk_digests_numba(words_of(flat).numpy().view(np.uint32))

    def apply(self, params: FlatBuffer, seeds: Sequence[int], values: Sequence[float]) -> None:
        """One kernel call per `seed_batch` consecutive seeds; the compute copy is refreshed once, after."""
        check_seeds(seeds, values)
        if not seeds:
            return
        if params.flat.device.type != "cpu":
            raise ValueError("the numba backend runs on CPU tensors only")
        assert DOMAIN_DIRECTION == 0  # the kernel hard-codes counter word c2 = 0
        buf = params.flat.detach().numpy()  # shares memory with the tensor
        chunks = _chunk_table(params.segments)
        for batch_seeds, batch_values in seed_batches(seeds, values, self.seed_batch):
            seeds_u64 = np.array(batch_seeds, dtype=np.uint64)
            keys_lo = (seeds_u64 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            keys_hi = (seeds_u64 >> np.uint64(32)).astype(np.uint32)
            _apply_kernel(buf, *chunks, keys_lo, keys_hi, _sign_tables(batch_values))  # type: ignore[call-arg]
        params.refresh_compute()

    def derive_copy(
        self, params: FlatBuffer, copy: torch.Tensor, seeds: Sequence[int], values: Sequence[float]
    ) -> None:
        """The kernel writes θ only: the adds run on a scratch θ, then the copy is rounded from it."""
        derive_copy_on_scratch(self, params, copy, seeds, values)
