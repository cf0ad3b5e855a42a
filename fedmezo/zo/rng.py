"""fedmezo-rng-v1: the perturbation direction z(seed) as a pure, readable reference (design §2).

Element e (row-major flat index) of tensor t is +1 if bit (e mod 32) of word ((e div 32) mod 4) of the
Philox4x32-10 block (e div 128) is set, else −1. The block's counter is
(b mod 2^32, t, domain, b div 2^32) and its key is the 64-bit seed split as (low, high).
Every backend (numba CPU, Triton GPU) must produce these exact bits; tests hold them to it.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmezo.zo.philox import philox4x32, split_seed

__all__ = [
    "DOMAIN_DIRECTION",
    "DOMAIN_FINGERPRINT",
    "DOMAIN_INIT",
    "DOMAIN_ROUNDING",
    "ELEMENTS_PER_BLOCK",
    "RNG_SPEC",
    "direction_words",
    "rademacher",
    "rademacher_blocks",
]

RNG_SPEC = "fedmezo-rng-v1"
ELEMENTS_PER_BLOCK = 128  # 4 words x 32 bits per Philox call
DOMAIN_DIRECTION = 0  # counter word c2 for perturbation directions
DOMAIN_ROUNDING = 1  # counter word c2 for stochastic rounding bits (rounding.py, bf16 weights)
DOMAIN_INIT = 2  # counter word c2 for portable weight initialisation (tiny-random, LoRA A)
DOMAIN_FINGERPRINT = 3  # counter word c2 for the chunk keys of fedmezo-fp-v1 (fingerprint.py)

_BIT_INDEX = np.arange(32, dtype=np.uint32)


def direction_words(
    seed: int, tensor_id: int, first_block: int, num_blocks: int, domain: int = DOMAIN_DIRECTION
) -> np.ndarray:
    """The four Philox output words of blocks [first_block, first_block + num_blocks): shape (n, 4) uint32."""
    if not 0 <= tensor_id < 2**32:
        raise ValueError(f"tensor_id must fit in 32 bits, got {tensor_id}")
    if first_block < 0 or first_block + num_blocks > 2**64:
        raise ValueError("block index out of the 64-bit counter range")
    blocks = np.arange(num_blocks, dtype=np.uint64) + np.uint64(first_block)
    counter = (
        (blocks & np.uint64(0xFFFFFFFF)).astype(np.uint32),  # c0 = b mod 2^32
        np.full(num_blocks, tensor_id, dtype=np.uint32),  # c1 = tensor id
        np.full(num_blocks, domain, dtype=np.uint32),  # c2 = domain
        (blocks >> np.uint64(32)).astype(np.uint32),  # c3 = b div 2^32
    )
    return np.stack(philox4x32(counter, split_seed(seed)), axis=1)


def rademacher_blocks(
    seed: int, tensor_id: int, first_block: int, num_blocks: int, domain: int = DOMAIN_DIRECTION
) -> torch.Tensor:
    """The ±1 entries of whole blocks, int8, shape (num_blocks * 128,): lets tests reach blocks ≥ 2^32."""
    words = direction_words(seed, tensor_id, first_block, num_blocks, domain)  # (n, 4)
    bits = (words[:, :, None] >> _BIT_INDEX) & np.uint32(1)  # (n, 4, 32): word-major, then bit
    signs = bits.astype(np.int8) * np.int8(2) - np.int8(1)
    return torch.from_numpy(signs.reshape(-1))


def rademacher(seed: int, tensor_id: int, numel: int, domain: int = DOMAIN_DIRECTION) -> torch.Tensor:
    """z(seed) for tensor `tensor_id` with `numel` elements: int8 ±1 (the conformance function)."""
    if numel < 0:
        raise ValueError(f"numel must be non-negative, got {numel}")
    num_blocks = -(-numel // ELEMENTS_PER_BLOCK)
    return rademacher_blocks(seed, tensor_id, 0, num_blocks, domain)[:numel].clone()
