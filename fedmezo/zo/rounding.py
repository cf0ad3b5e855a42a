"""Stochastic rounding fp32 → bf16 with portable random bits: the reference for bf16 canonical weights
(`weights = bf16-sr`, docs/protocol.md §7.4).

Round-to-nearest erases every update smaller than half a bf16 ulp, and a MeZO step (lr · g ~ 1e-6 on
weights ~ 1e-2, whose ulp is ~ 6e-5) is nearly always that small. Rounding up with probability equal to
the discarded fraction keeps each update in expectation. An apply (a round delta, or one local step)
adds all its pairs to an fp32 copy of each element first and rounds once: the rounding noise then
grows with |Σ ±c| rather than Σ |c| (√K less variance for K pairs of random sign). The 16 random bits
of element e come from Philox4x32-10 in domain 1 (DOMAIN_ROUNDING) keyed by the first pair's seed:
block e div 8, output word (e mod 8) div 2, its low half for even e and its high half for odd e. So
every backend rounds alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedmezo.zo.rng import DOMAIN_ROUNDING, direction_words, rademacher

__all__ = [
    "ELEMENTS_PER_ROUNDING_BLOCK",
    "perturbed_bf16",
    "rounding_bits",
    "sr_apply_bf16",
    "sr_sum_bf16",
    "stochastic_round_bf16",
]

ELEMENTS_PER_ROUNDING_BLOCK = 8  # 4 words x 2 halves of 16 bits per Philox call
_QUIET_NAN = 0x7FC0


def rounding_bits(seed: int, tensor_id: int, numel: int) -> torch.Tensor:
    """The 16-bit rounding draws of a tensor's `numel` elements under `seed`, int32 in [0, 2^16)."""
    if numel < 0:
        raise ValueError(f"numel must be non-negative, got {numel}")
    blocks = -(-numel // ELEMENTS_PER_ROUNDING_BLOCK)
    words = direction_words(seed, tensor_id, 0, blocks, DOMAIN_ROUNDING)  # (blocks, 4) uint32
    halves = np.stack([words & np.uint32(0xFFFF), words >> np.uint32(16)], axis=2)  # (blocks, 4, 2)
    return torch.from_numpy(halves.reshape(-1)[:numel].astype(np.int32))


def stochastic_round_bf16(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """bf16(x) rounded away from zero with probability (discarded low 16 bits) / 2^16, toward zero
    otherwise: add the draw to the fp32 bit pattern and truncate (the sign is not touched, so this is
    unbiased for either sign). Values already in bf16 are exact whatever the draw; ±inf stay; NaN becomes
    0x7FC0 (no sign: CUDA's arithmetic does not keep a NaN's sign, x86's does); a finite value can round
    to ±inf only from within an ulp of fp32's max."""
    if x.dtype != torch.float32 or bits.shape != x.shape:
        raise ValueError("x must be fp32 and bits must have its shape")
    u = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    finite = torch.isfinite(x)
    rounded = torch.where(finite, (u + bits.to(torch.int64)) >> 16, u >> 16)
    nan = torch.isnan(x)
    rounded = torch.where(nan, _QUIET_NAN, rounded)
    as_int16 = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded).to(torch.int16)
    return as_int16.view(torch.bfloat16)


def sr_sum_bf16(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> torch.Tensor:
    """The fp32 value §7.4 rounds: fp32(w), then for each (seed, coefficient) in order one binary32 add
    of ±fp32(c) (the sign from z(seed)), exactly §7.3's adds on an fp32 copy."""
    if w.dtype != torch.bfloat16:
        raise ValueError("w must be bf16")
    x = w.reshape(-1).float()
    for seed, coefficient in pairs:
        v = torch.tensor(float(np.float32(coefficient)), dtype=torch.float32)
        x = x + torch.where(rademacher(seed, tensor_id, x.numel()) > 0, v, -v)
    return x


def sr_apply_bf16(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> torch.Tensor:
    """§7.4 on a bf16 tensor: w ← SR(fp32(w) ± c_1 ± … ± c_K) with one rounding, its bits drawn from the
    first pair's seed in domain 1. No pairs: w unchanged. Returns the new bf16 tensor."""
    if not pairs:
        return w.clone()
    x = sr_sum_bf16(w, pairs, tensor_id)
    return stochastic_round_bf16(x, rounding_bits(pairs[0][0], tensor_id, x.numel())).reshape(w.shape)


def perturbed_bf16(w: torch.Tensor, seed: int, value: float, tensor_id: int) -> torch.Tensor:
    """What a forward reads at θ + v·z(seed) when θ is bf16: bf16(fp32(w) ± fp32(v)), rounded to nearest
    even, NaN → 0x7FC0. Local to one client's losses, never written back into θ, so it needs no random
    bits; the backends agree on it bit for bit all the same (§7.4). The rounding is spelled out in
    integers because torch's own conversion is not portable for NaN (0xFFFF with AVX-512 BF16 here)."""
    if w.dtype != torch.bfloat16:
        raise ValueError("w must be bf16")
    v = torch.tensor(float(np.float32(value)), dtype=torch.float32)
    signs = rademacher(seed, tensor_id, w.numel()).to(w.device)
    moved = w.reshape(-1).float() + torch.where(signs > 0, v, -v)  # one fp32 add per element
    u = moved.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = torch.where(torch.isnan(moved), _QUIET_NAN, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
    as_int16 = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded).to(torch.int16)
    return as_int16.view(torch.bfloat16).reshape(w.shape)
