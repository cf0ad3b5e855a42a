"""fedmezo-fp-v1: a fingerprint of θ that a GPU computes in parallel, identical on every backend (design §3).

SHA-256 over the whole buffer is one sequential chain, so a GPU replica had to copy θ to the host and
hash ~0.5 GB on one core. fedmezo-fp-v1 splits the buffer, read as little-endian uint32 words in
manifest order, into chunks of CHUNK_WORDS words and gives every chunk a 128-bit digest of four lanes:

    digest[c, L] = Σ_j fmix32( w[c·CHUNK_WORDS + j] ^ (K[c, L] + j·A_L) )   mod 2^32,  L = 0..3

K[c, 0..3] is the Philox4x32-10 block of counter (c mod 2^32, 0, DOMAIN_FINGERPRINT, c div 2^32) under
a key fixed by the spec name, A_L are odd constants, fmix32 is MurmurHash3's finaliser. Only uint32
adds, multiplies (low word), xors and shifts: numpy, numba and Triton give the same bits, and since a
chunk digest is a sum, any reduction order (threads, warps, tiles) gives the same result too. The
fingerprint is SHA-256 over the spec name, the element count, the chunk size and the digests.

Collision properties, honestly: for fixed (c, L) the map w ↦ fmix32(w ^ k) is a bijection, so a change
confined to one word of a chunk always changes all four lanes of that chunk's digest (a flipped bit,
−0.0 for 0.0, a different NaN payload are all caught with certainty). Larger changes escape only if four
32-bit sums cancel at once: about 2^-128 per changed chunk if fmix32 outputs behave like random values,
a heuristic, not a proof. The keys are public and the digest is additive, so anyone who wants a
collision can build one: this guards against accidental divergence (kernel bugs, lost updates, wrong
order, bit rot), not adversaries. That is no loss here — a client reports its own fingerprint, so a
dishonest one could send the server's value whatever the hash — and checkpoint files stay protected
by a file SHA-256. The cryptographic alternative (SHA-256 per chunk) is 64 dependent rounds per block,
one GPU thread per chunk: a few thousand threads for a 135M model, far from the memory bandwidth.

This leaf module is the spec and its numpy reference; `fingerprint(flat)`, which runs the digests on
the backend where θ lives, is in backend.py.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch

from fedmezo.zo.philox import philox4x32, split_seed
from fedmezo.zo.rng import DOMAIN_FINGERPRINT

__all__ = [
    "CHUNK_WORDS",
    "FINGERPRINT_SPEC",
    "FMIX_M1",
    "FMIX_M2",
    "LANES",
    "LANE_MULTIPLIERS",
    "chunk_digests_reference",
    "chunk_keys",
    "fingerprint_from_digests",
    "num_chunks",
    "words_of",
]

FINGERPRINT_SPEC = "fedmezo-fp-v1"
CHUNK_WORDS = 1 << 16  # 256 KiB of fp32 per chunk: a 135M model has ~2,000 chunks, 33 KB of digests
LANES = 4  # 4 × 32-bit lanes: a 128-bit digest per chunk
LANE_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)  # odd: j ↦ j·A_L is injective
FMIX_M1 = 0x85EBCA6B  # MurmurHash3 fmix32 multipliers (odd, so fmix32 is a bijection)
FMIX_M2 = 0xC2B2AE35
# The Philox key of the chunk keys: the first 8 bytes of SHA-256(spec name), little-endian.
FINGERPRINT_KEY = int.from_bytes(hashlib.sha256(FINGERPRINT_SPEC.encode()).digest()[:8], "little")

U32Array = npt.NDArray[np.uint32]


def num_chunks(numel: int) -> int:
    return -(-numel // CHUNK_WORDS)


@lru_cache(maxsize=8)
def chunk_keys(n_chunks: int) -> U32Array:
    """K[c, 0..3] for chunks 0..n−1, shape (n, 4) uint32: one Philox block per chunk, mixed in by index."""
    chunks = np.arange(n_chunks, dtype=np.uint64)
    counter = (
        (chunks & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        np.zeros(n_chunks, dtype=np.uint32),
        np.full(n_chunks, DOMAIN_FINGERPRINT, dtype=np.uint32),
        (chunks >> np.uint64(32)).astype(np.uint32),
    )
    keys = np.stack(philox4x32(counter, split_seed(FINGERPRINT_KEY)), axis=1)
    keys.setflags(write=False)  # shared by every caller through the cache
    return keys


def _fmix32(h: U32Array) -> U32Array:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(FMIX_M1)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(FMIX_M2)
    return h ^ (h >> np.uint32(16))


def chunk_digests_reference(words: U32Array) -> U32Array:
    """The readable reference: digests (n_chunks, 4) uint32 of a 1-D uint32 array, one chunk at a time."""
    words = np.ascontiguousarray(words, dtype=np.uint32)
    n_chunks = num_chunks(words.size)
    keys = chunk_keys(n_chunks)
    out = np.empty((n_chunks, LANES), dtype=np.uint32)
    j = np.arange(CHUNK_WORDS, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for c in range(n_chunks):
            w = words[c * CHUNK_WORDS : (c + 1) * CHUNK_WORDS]
            for lane, multiplier in enumerate(LANE_MULTIPLIERS):
                position_key = keys[c, lane] + j[: w.size] * np.uint32(multiplier)  # uint32, wraps
                terms = _fmix32(w ^ position_key)
                out[c, lane] = np.uint32(int(terms.sum(dtype=np.uint64)) & 0xFFFFFFFF)
    return out


def fingerprint_from_digests(digests: U32Array, numel: int) -> str:
    """SHA-256 (hex) over spec name, element count, chunk size and the chunk digests in chunk order."""
    if digests.shape != (num_chunks(numel), LANES):
        raise ValueError(f"{digests.shape} digests do not describe {numel} words")
    sha = hashlib.sha256(FINGERPRINT_SPEC.encode() + b"\0")
    sha.update(struct.pack("<QI", numel, CHUNK_WORDS))
    sha.update(np.ascontiguousarray(digests, dtype="<u4").tobytes())
    return sha.hexdigest()


def words_of(flat: torch.Tensor) -> torch.Tensor:
    """The fp32 buffer's bits as int32 words (a view: no copy); kernels read them as uint32."""
    if flat.dtype != torch.float32 or flat.dim() != 1 or not flat.is_contiguous():
        raise ValueError("the fingerprint covers a contiguous 1-D fp32 buffer")
    return flat.detach().view(torch.int32)
