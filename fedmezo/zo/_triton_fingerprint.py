"""The Triton kernel of fedmezo-fp-v1 (imported only when Triton is used; see triton_kernel.py)."""

# mypy: ignore-errors
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["digest_kernel"]


@triton.jit
def _fmix32(h):
    """MurmurHash3's finaliser on uint32 (multiplies keep the low word, as on the CPU)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _lane_sum(w, j, key, multiplier, mask):
    """Σ fmix32(w ^ (key + j·A)) over the tile's valid words, exact in int64 (at most 2^16 terms < 2^32)."""
    h = _fmix32(w ^ (key + j * multiplier))
    h = tl.where(mask, h, 0)
    return tl.sum(h.to(tl.int64), axis=0)


@triton.jit
def digest_kernel(words_ptr, keys_ptr, out_ptr, numel, CHUNK: tl.constexpr, TILE: tl.constexpr):
    """Program t sums tile t (TILE words of chunk t // (CHUNK // TILE)); out[t, L] = its lane-L sum.

    The host adds a chunk's tile sums mod 2^32: the chunk digest is a sum, so splitting it across
    programs changes nothing in the bits.
    """
    pid = tl.program_id(0)
    tiles_per_chunk: tl.constexpr = CHUNK // TILE
    chunk = pid // tiles_per_chunk
    first = pid.to(tl.int64) * TILE
    offs = first + tl.arange(0, TILE).to(tl.int64)
    mask = offs < numel
    w = tl.load(words_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    j = ((pid % tiles_per_chunk) * TILE + tl.arange(0, TILE)).to(tl.uint32)  # index within the chunk
    k0 = tl.load(keys_ptr + 4 * chunk).to(tl.uint32, bitcast=True)
    k1 = tl.load(keys_ptr + 4 * chunk + 1).to(tl.uint32, bitcast=True)
    k2 = tl.load(keys_ptr + 4 * chunk + 2).to(tl.uint32, bitcast=True)
    k3 = tl.load(keys_ptr + 4 * chunk + 3).to(tl.uint32, bitcast=True)
    tl.store(out_ptr + 4 * pid, _lane_sum(w, j, k0, 0x9E3779B1, mask))
    tl.store(out_ptr + 4 * pid + 1, _lane_sum(w, j, k1, 0x85EBCA77, mask))
    tl.store(out_ptr + 4 * pid + 2, _lane_sum(w, j, k2, 0xC2B2AE3D, mask))
    tl.store(out_ptr + 4 * pid + 3, _lane_sum(w, j, k3, 0x27D4EB2F, mask))
