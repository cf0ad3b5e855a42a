"""§7.4 on CPU with numba: bf16 weights, one fp32 add per (element, pair), then one stochastic rounding
under the first pair's seed, block by block in registers; and the perturbed copy a forward reads
(round to nearest even). Bit for bit `rounding.sr_apply_bf16` and `rounding.perturbed_bf16` (tests
hold them to that)."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch
from numba import njit, prange

from fedmezo.zo.cpu_kernel import philox_block
from fedmezo.zo.philox import split_seed
from fedmezo.zo.rng import DOMAIN_DIRECTION, DOMAIN_ROUNDING, ELEMENTS_PER_BLOCK

__all__ = ["perturbed_bf16_numba", "sr_apply_bf16_numba"]

_U32 = numba.uint32
_ROUND_BLOCKS = ELEMENTS_PER_BLOCK // 8  # domain-1 blocks (8 elements each) per domain-0 block


@njit(parallel=True, cache=True)
def _sr_apply(w, tensor_id, seeds_lo, seeds_hi, values):  # type: ignore[no-untyped-def]
    """w: uint16 bit patterns of the bf16 weights, changed in place; values: fp32 coefficients."""
    n = w.size
    for b in prange((n + 127) // 128):
        start = b * 128
        count = min(128, n - start)
        x = np.empty(128, np.float32)
        bits = x.view(np.uint32)
        for i in range(count):
            bits[i] = _U32(w[start + i]) << _U32(16)
        for k in range(seeds_lo.size):
            d = philox_block(seeds_lo[k], seeds_hi[k], tensor_id, b, DOMAIN_DIRECTION)
            v = values[k]
            for i in range(count):  # one fp32 add each: +v where the sign bit is set, else -v
                if (d[i // 32] >> _U32(i % 32)) & _U32(1):
                    x[i] = x[i] + v
                else:
                    x[i] = x[i] + (-v)
        for j in range(_ROUND_BLOCKS):  # one rounding of the sum, bits from the first pair's seed
            if j * 8 >= count:
                break
            r = philox_block(seeds_lo[0], seeds_hi[0], tensor_id, b * _ROUND_BLOCKS + j, DOMAIN_ROUNDING)
            for h in range(min(8, count - j * 8)):
                i = j * 8 + h
                word = r[h // 2]
                draw = (word >> _U32(16)) if h % 2 else (word & _U32(0xFFFF))
                u = bits[i]
                if (u >> _U32(23)) & _U32(0xFF) != _U32(0xFF):  # finite: add the draw, truncate
                    w[start + i] = np.uint16((numba.uint64(u) + numba.uint64(draw)) >> numba.uint64(16))
                elif u & _U32(0x7FFFFF):  # NaN: 0x7FC0
                    w[start + i] = np.uint16(0x7FC0)
                else:  # ±inf
                    w[start + i] = np.uint16(u >> _U32(16))


def sr_apply_bf16_numba(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> None:
    """Apply (seed, coefficient) pairs in order to the bf16 CPU tensor `w`, in place."""
    if w.dtype != torch.bfloat16 or w.device.type != "cpu" or not w.is_contiguous():
        raise ValueError("w must be a contiguous bf16 CPU tensor")
    if not pairs:
        return
    halves = [split_seed(seed) for seed, _ in pairs]
    lo = np.array([h[0] for h in halves], dtype=np.uint32)
    hi = np.array([h[1] for h in halves], dtype=np.uint32)
    values = np.array([np.float32(c) for _, c in pairs], dtype=np.float32)
    _sr_apply(w.view(torch.int16).numpy().view(np.uint16).reshape(-1), np.uint32(tensor_id), lo, hi, values)


@njit(parallel=True, cache=True)
def _perturbed(src, dst, tensor_id, seed_lo, seed_hi, v):  # type: ignore[no-untyped-def]
    """dst ← bf16_rne(fp32(src) ± v); src, dst: uint16 bit patterns; one Philox block per 128 elements."""
    n = src.size
    for b in prange((n + 127) // 128):
        start = b * 128
        count = min(128, n - start)
        x = np.empty(128, np.float32)
        bits = x.view(np.uint32)
        for i in range(count):
            bits[i] = _U32(src[start + i]) << _U32(16)
        d = philox_block(seed_lo, seed_hi, tensor_id, b, DOMAIN_DIRECTION)
        for i in range(count):
            if (d[i // 32] >> _U32(i % 32)) & _U32(1):
                x[i] = x[i] + v
            else:
                x[i] = x[i] + (-v)
        for i in range(count):
            u = bits[i]
            if (u & _U32(0x7F800000)) == _U32(0x7F800000) and (u & _U32(0x7FFFFF)):
                dst[start + i] = np.uint16(0x7FC0)
            else:
                dst[start + i] = np.uint16((u + _U32(0x7FFF) + ((u >> _U32(16)) & _U32(1))) >> _U32(16))


def perturbed_bf16_numba(w: torch.Tensor, seed: int, value: float, tensor_id: int) -> torch.Tensor:
    """`rounding.perturbed_bf16` on CPU threads: a new bf16 tensor shaped like `w` (w is only read)."""
    if w.dtype != torch.bfloat16 or w.device.type != "cpu" or not w.is_contiguous():
        raise ValueError("w must be a contiguous bf16 CPU tensor")
    out = torch.empty_like(w)
    lo, hi = split_seed(seed)
    src = w.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    dst = out.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    _perturbed(src, dst, np.uint32(tensor_id), np.uint32(lo), np.uint32(hi), np.float32(value))
    return out
