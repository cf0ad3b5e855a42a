"""The Triton kernels of the GPU backend (imported only when Triton is used; see triton_kernel.py)."""

# mypy: ignore-errors
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["apply_kernel", "perturbed_kernel", "philox10", "sr_apply_kernel", "words_kernel"]


@triton.jit
def philox10(k0, k1, c0, c1, c2, c3):
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + 0x9E3779B9  # uint32, wraps mod 2^32
            k1 = k1 + 0xBB67AE85
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _bf16_bits(w):
    """fp32 -> bf16 bits (int16), round to nearest even: what torch's .to(bfloat16) does for finite w."""
    bits = w.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def apply_kernel(
    buf_ptr,
    tile_offset_ptr,
    tile_numel_ptr,
    tile_tid_ptr,
    tile_b0_ptr,
    keys_ptr,
    vals_ptr,
    n_seeds,
    copy_ptr,
    TILE: tl.constexpr,
    STORE_THETA: tl.constexpr,
    STORE_COPY: tl.constexpr,
):
    pid = tl.program_id(0)
    offset = tl.load(tile_offset_ptr + pid)  # int64: tensor start in the flat buffer
    numel = tl.load(tile_numel_ptr + pid)
    tid = tl.load(tile_tid_ptr + pid).to(tl.uint32)
    blk = tl.load(tile_b0_ptr + pid) + tl.arange(0, TILE).to(tl.int64)  # (TILE,) block ids
    bit = tl.arange(0, 32)
    # word q of block b covers elements b*128 + q*32 + [0, 32): four (TILE, 32) sub-tiles
    elem0 = blk[:, None] * 128 + bit[None, :]
    elem1 = elem0 + 32
    elem2 = elem0 + 64
    elem3 = elem0 + 96
    w0 = tl.load(buf_ptr + offset + elem0, mask=elem0 < numel, other=0.0)
    w1 = tl.load(buf_ptr + offset + elem1, mask=elem1 < numel, other=0.0)
    w2 = tl.load(buf_ptr + offset + elem2, mask=elem2 < numel, other=0.0)
    w3 = tl.load(buf_ptr + offset + elem3, mask=elem3 < numel, other=0.0)
    c0 = (blk & 0xFFFFFFFF).to(tl.uint32)  # counter (b mod 2^32, t, 0, b div 2^32)
    c3 = (blk >> 32).to(tl.uint32)
    c1 = tl.zeros((TILE,), dtype=tl.uint32) + tid
    c2 = tl.zeros((TILE,), dtype=tl.uint32)
    shift = bit.to(tl.uint32)[None, :]
    for k in range(n_seeds):
        k0 = tl.load(keys_ptr + 2 * k).to(tl.uint32, bitcast=True)
        k1 = tl.load(keys_ptr + 2 * k + 1).to(tl.uint32, bitcast=True)
        v = tl.load(vals_ptr + k)
        x0, x1, x2, x3 = philox10(k0, k1, c0, c1, c2, c3)
        # fp32 add of ±v, no multiply: bit-identical to the CPU backends
        w0 = w0 + tl.where(((x0[:, None] >> shift) & 1) != 0, v, -v)
        w1 = w1 + tl.where(((x1[:, None] >> shift) & 1) != 0, v, -v)
        w2 = w2 + tl.where(((x2[:, None] >> shift) & 1) != 0, v, -v)
        w3 = w3 + tl.where(((x3[:, None] >> shift) & 1) != 0, v, -v)
    if STORE_THETA:  # the canonical fp32 weights
        tl.store(buf_ptr + offset + elem0, w0, mask=elem0 < numel)
        tl.store(buf_ptr + offset + elem1, w1, mask=elem1 < numel)
        tl.store(buf_ptr + offset + elem2, w2, mask=elem2 < numel)
        tl.store(buf_ptr + offset + elem3, w3, mask=elem3 < numel)
    if STORE_COPY:  # the bf16 compute copy, rounded to nearest even in integer ops (same on every device)
        tl.store(copy_ptr + offset + elem0, _bf16_bits(w0), mask=elem0 < numel)
        tl.store(copy_ptr + offset + elem1, _bf16_bits(w1), mask=elem1 < numel)
        tl.store(copy_ptr + offset + elem2, _bf16_bits(w2), mask=elem2 < numel)
        tl.store(copy_ptr + offset + elem3, _bf16_bits(w3), mask=elem3 < numel)


@triton.jit
def words_kernel(out_ptr, keys_ptr, tid, blocks_ptr, domain, n, BLOCK: tl.constexpr):
    """Raw Philox words for given block ids: lets tests reach counters with blocks ≥ 2^32."""
    i = tl.arange(0, BLOCK)
    m = i < n
    blk = tl.load(blocks_ptr + i, mask=m, other=0)
    k0 = tl.load(keys_ptr).to(tl.uint32, bitcast=True)
    k1 = tl.load(keys_ptr + 1).to(tl.uint32, bitcast=True)
    c0 = (blk & 0xFFFFFFFF).to(tl.uint32)
    c3 = ((blk >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c1 = tl.zeros((BLOCK,), dtype=tl.uint32) + tid.to(tl.uint32)
    c2 = tl.zeros((BLOCK,), dtype=tl.uint32) + domain.to(tl.uint32)
    x0, x1, x2, x3 = philox10(k0, k1, c0, c1, c2, c3)
    tl.store(out_ptr + 4 * i, x0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 4 * i + 1, x1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 4 * i + 2, x2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 4 * i + 3, x3.to(tl.int32, bitcast=True), mask=m)


@triton.jit
def _word(x0, x1, x2, x3, q):
    """Output word q (0..3) of a Philox block, element-wise."""
    return tl.where(q == 0, x0, tl.where(q == 1, x1, tl.where(q == 2, x2, x3)))


@triton.jit
def sr_apply_kernel(w_ptr, numel, tid, keys_ptr, vals_ptr, n_seeds, BLOCK: tl.constexpr):
    """docs/protocol.md §7.4 on bf16 weights (int16 bit patterns, in place): per pair one fp32 add of ±v
    (sign: domain 0), then one stochastic rounding (16 bits: domain 1 under the first pair's seed). A
    first version: each element runs its own Philox blocks, 128x and 8x more than the block-shared
    layout of apply_kernel."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = e < numel
    bits = tl.load(w_ptr + e, mask=m, other=0).to(tl.uint16, bitcast=True).to(tl.uint32) << 16
    t = tl.zeros((BLOCK,), dtype=tl.uint32) + tid.to(tl.uint32)
    b = e >> 7  # the sign's block, word, bit
    rb = e >> 3  # the rounding draw's block, word, half
    d_lo, d_hi = (b & 0xFFFFFFFF).to(tl.uint32), (b >> 32).to(tl.uint32)
    r_lo, r_hi = (rb & 0xFFFFFFFF).to(tl.uint32), (rb >> 32).to(tl.uint32)
    zeros = tl.zeros((BLOCK,), dtype=tl.uint32)
    x = bits.to(tl.float32, bitcast=True)
    for k in range(n_seeds):
        k0 = tl.load(keys_ptr + 2 * k).to(tl.uint32, bitcast=True)
        k1 = tl.load(keys_ptr + 2 * k + 1).to(tl.uint32, bitcast=True)
        v = tl.load(vals_ptr + k)
        x0, x1, x2, x3 = philox10(k0, k1, d_lo, t, zeros, d_hi)
        sign = (_word(x0, x1, x2, x3, (e >> 5) & 3) >> (e & 31).to(tl.uint32)) & 1
        x = x + tl.where(sign != 0, v, -v)
    u = x.to(tl.uint32, bitcast=True)
    k0 = tl.load(keys_ptr).to(tl.uint32, bitcast=True)
    k1 = tl.load(keys_ptr + 1).to(tl.uint32, bitcast=True)
    y0, y1, y2, y3 = philox10(k0, k1, r_lo, t, zeros + 1, r_hi)
    word = _word(y0, y1, y2, y3, (e & 7) >> 1)
    draw = tl.where((e & 1) != 0, word >> 16, word & 0xFFFF)
    finite = ((u >> 23) & 0xFF) != 0xFF
    nan = (~finite) & ((u & 0x7FFFFF) != 0)
    kept = tl.where(finite, (u.to(tl.uint64) + draw.to(tl.uint64)) >> 16, (u >> 16).to(tl.uint64))
    kept = tl.where(nan, tl.full((BLOCK,), 0x7FC0, tl.uint64), kept)
    tl.store(w_ptr + e, kept.to(tl.uint16).to(tl.int16, bitcast=True), mask=m)


@triton.jit
def perturbed_kernel(src_ptr, dst_ptr, numel, tid, keys_ptr, v, BLOCK: tl.constexpr):
    """docs/protocol.md §7.4's perturbed forward copy: dst ← bf16_rne(fp32(src) ± v), NaN → 0x7FC0."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = e < numel
    bits = tl.load(src_ptr + e, mask=m, other=0).to(tl.uint16, bitcast=True).to(tl.uint32) << 16
    t = tl.zeros((BLOCK,), dtype=tl.uint32) + tid.to(tl.uint32)
    b = e >> 7
    k0 = tl.load(keys_ptr).to(tl.uint32, bitcast=True)
    k1 = tl.load(keys_ptr + 1).to(tl.uint32, bitcast=True)
    x0, x1, x2, x3 = philox10(k0, k1, (b & 0xFFFFFFFF).to(tl.uint32), t, t * 0, (b >> 32).to(tl.uint32))
    sign = (_word(x0, x1, x2, x3, (e >> 5) & 3) >> (e & 31).to(tl.uint32)) & 1
    x = bits.to(tl.float32, bitcast=True) + tl.where(sign != 0, v, -v)
    u = x.to(tl.uint32, bitcast=True)
    nan = (((u >> 23) & 0xFF) == 0xFF) & ((u & 0x7FFFFF) != 0)
    wide = u.to(tl.uint64)  # negative NaNs would wrap in 32 bits (they are masked, but stay quiet)
    rounded = tl.where(nan, 0x7FC0, (wide + 0x7FFF + ((wide >> 16) & 1)) >> 16)
    tl.store(dst_ptr + e, rounded.to(tl.uint16).to(tl.int16, bitcast=True), mask=m)
