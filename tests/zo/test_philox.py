"""Philox4x32-10 against the Random123 known-answer vectors (kat_vectors, philox4x32_10)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmezo.zo.cpu_kernel import philox_block
from fedmezo.zo.philox import philox4x32, split_seed

# (counter c0..c3, key k0..k1) -> output, from Random123's kat_vectors file.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_reference_matches_random123(counter, key, expected):
    out = philox4x32(tuple(np.array([c], dtype=np.uint32) for c in counter), key)
    assert tuple(int(o[0]) for o in out) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_numba_matches_random123(counter, key, expected):
    c0, c1, c2, c3 = counter
    block = c0 | (c3 << 32)  # the kernel builds (c0, c3) from the 64-bit block index
    assert tuple(int(w) for w in philox_block(key[0], key[1], c1, np.uint64(block), c2)) == expected


def test_split_seed():
    assert split_seed(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    with pytest.raises(ValueError):
        split_seed(-1)
    with pytest.raises(ValueError):
        split_seed(2**64)
