"""fedmezo-fp-v1 chunk digests on CPU threads (numba): one pass over the buffer, chunks in parallel.

Each thread takes whole chunks; the loop over a chunk's words keeps the four lane sums in registers
and vectorises (AVX2/AVX-512 32-bit multiplies), so the pass runs at memory speed rather than at
SHA-256's one-core speed. Bits are those of fingerprint.chunk_digests_reference.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from fedmezo.zo.fingerprint import (
    CHUNK_WORDS,
    FMIX_M1,
    FMIX_M2,
    LANE_MULTIPLIERS,
    LANES,
    U32Array,
    chunk_keys,
    num_chunks,
)

__all__ = ["chunk_digests_numba"]

_U32 = numba.uint32
_A0, _A1, _A2, _A3 = LANE_MULTIPLIERS


@njit(inline="always", cache=True)
def _fmix32(h):  # type: ignore[no-untyped-def]
    h = _U32(h ^ (h >> _U32(16)))
    h = _U32(h * _U32(FMIX_M1))
    h = _U32(h ^ (h >> _U32(13)))
    h = _U32(h * _U32(FMIX_M2))
    return _U32(h ^ (h >> _U32(16)))


@njit(parallel=True, cache=True)
def _digest_kernel(words, keys, out):  # type: ignore[no-untyped-def]
    n = words.shape[0]
    for c in prange(out.shape[0]):
        base = c * CHUNK_WORDS
        count = min(CHUNK_WORDS, n - base)
        k0, k1, k2, k3 = keys[c, 0], keys[c, 1], keys[c, 2], keys[c, 3]
        s0 = _U32(0)
        s1 = _U32(0)
        s2 = _U32(0)
        s3 = _U32(0)
        for j in range(count):
            w = words[base + j]
            jj = _U32(j)
            s0 = _U32(s0 + _fmix32(_U32(w ^ _U32(k0 + _U32(jj * _U32(_A0))))))
            s1 = _U32(s1 + _fmix32(_U32(w ^ _U32(k1 + _U32(jj * _U32(_A1))))))
            s2 = _U32(s2 + _fmix32(_U32(w ^ _U32(k2 + _U32(jj * _U32(_A2))))))
            s3 = _U32(s3 + _fmix32(_U32(w ^ _U32(k3 + _U32(jj * _U32(_A3))))))
        out[c, 0] = s0
        out[c, 1] = s1
        out[c, 2] = s2
        out[c, 3] = s3


def chunk_digests_numba(words: U32Array) -> U32Array:
    """Digests (n_chunks, 4) uint32 of a 1-D uint32 array, bit-identical to the numpy reference."""
    if words.dtype != np.uint32 or words.ndim != 1:
        raise ValueError("chunk digests read a 1-D uint32 array")
    n_chunks = num_chunks(words.size)
    out = np.empty((n_chunks, LANES), dtype=np.uint32)
    _digest_kernel(np.ascontiguousarray(words), chunk_keys(n_chunks), out)
    return out
