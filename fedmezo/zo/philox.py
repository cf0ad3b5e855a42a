"""Philox4x32-10 (Salmon et al., Random123, SC'11): the counter-based generator behind fedmezo-rng-v1.

A counter-based generator maps (key, counter) to random bits with no state, so every device can
regenerate any block of a perturbation independently and get the same bits. This module is the
readable reference, vectorised with numpy over many counters at once; the fast backends re-implement
the same ten rounds and are tested against it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_ROUNDS",
    "PHILOX_W0",
    "PHILOX_W1",
    "philox4x32",
    "split_seed",
]

PHILOX_M0 = 0xD2511F53  # round multiplier for counter word 0
PHILOX_M1 = 0xCD9E8D57  # round multiplier for counter word 2
PHILOX_W0 = 0x9E3779B9  # Weyl key increment for key word 0 (golden ratio)
PHILOX_W1 = 0xBB67AE85  # Weyl key increment for key word 1 (sqrt(3) - 1)
PHILOX_ROUNDS = 10

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

U32Array = npt.NDArray[np.uint32]


def split_seed(seed: int) -> tuple[int, int]:
    """Split a 64-bit seed into the Philox key (k0 = low 32 bits, k1 = high 32 bits)."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an unsigned 64-bit integer, got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def _mulhilo(multiplier: int, x: U32Array) -> tuple[U32Array, U32Array]:
    """32x32 -> 64-bit product, returned as (high word, low word); exact in uint64."""
    product = np.uint64(multiplier) * x.astype(np.uint64)
    return (product >> _SHIFT32).astype(np.uint32), (product & _MASK32).astype(np.uint32)


def philox4x32(
    counter: tuple[U32Array, U32Array, U32Array, U32Array], key: tuple[int, int]
) -> tuple[U32Array, U32Array, U32Array, U32Array]:
    """Philox4x32-10 on arrays of counters (all four arrays of one shape); returns the four output words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for round_index in range(PHILOX_ROUNDS):
            if round_index > 0:  # bump the key between rounds (Weyl sequence, wraps mod 2^32)
                k0 = np.uint32((int(k0) + PHILOX_W0) & 0xFFFFFFFF)
                k1 = np.uint32((int(k1) + PHILOX_W1) & 0xFFFFFFFF)
            hi0, lo0 = _mulhilo(PHILOX_M0, c0)
            hi1, lo1 = _mulhilo(PHILOX_M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3
