"""fedmezo-rng-v1: the bit layout of z, golden hashes, and the counter's high word."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedmezo.zo.cpu_kernel import philox_block
from fedmezo.zo.philox import philox4x32, split_seed
from fedmezo.zo.rng import DOMAIN_DIRECTION, DOMAIN_INIT, rademacher, rademacher_blocks

# sha256 of the int8 bytes of rademacher(seed, tensor_id, numel): pins the spec across versions.
GOLDEN = [
    (0, 0, 1000, "c997b17d8389a45d73c35957e84c288c15662c685b1fbae8d83562014f21a93c"),
    (42, 7, 4099, "e147bdd41e1d840e053b74a22c131dbce482728d99c4f38987e4a965afac1e28"),
    (2**64 - 1, 123, 389, "3d2c03855260ebeaa3b932071d8489526cc0197e88640e8da9149edc74e4d4c3"),
    (0x0123456789ABCDEF, 0, 1, "a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89"),
]


def _element_by_spec(seed: int, tensor_id: int, e: int, domain: int = DOMAIN_DIRECTION) -> int:
    """The spec's sentence, element by element, with scalar Philox calls."""
    block = e // 128
    counter = (block % 2**32, tensor_id, domain, block // 2**32)
    words = philox4x32(tuple(np.array([c], dtype=np.uint32) for c in counter), split_seed(seed))
    word = int(words[(e // 32) % 4][0])
    return 1 if (word >> (e % 32)) & 1 else -1


@pytest.mark.parametrize(("seed", "tensor_id", "numel", "digest"), GOLDEN)
def test_golden_hashes(seed, tensor_id, numel, digest):
    z = rademacher(seed, tensor_id, numel)
    assert hashlib.sha256(z.numpy().tobytes()).hexdigest() == digest


def test_layout_matches_spec_element_by_element():
    seed, tensor_id = 0xDEADBEEF12345678, 5
    z = rademacher(seed, tensor_id, 300)
    for e in [0, 1, 31, 32, 63, 64, 95, 96, 127, 128, 129, 255, 256, 299]:
        assert int(z[e]) == _element_by_spec(seed, tensor_id, e)


def test_values_are_plus_minus_one_and_balanced():
    z = rademacher(7, 3, 100_000)
    assert set(z.unique().tolist()) == {-1, 1}
    assert abs(float(z.float().mean())) < 0.02


def test_prefix_property_and_independence():
    long = rademacher(9, 1, 1000)
    assert np.array_equal(rademacher(9, 1, 333).numpy(), long[:333].numpy())
    assert not np.array_equal(rademacher(9, 2, 1000).numpy(), long.numpy())  # other tensor
    assert not np.array_equal(rademacher(10, 1, 1000).numpy(), long.numpy())  # other seed
    assert not np.array_equal(rademacher(9, 1, 1000, domain=DOMAIN_INIT).numpy(), long.numpy())


def test_high_counter_word_for_blocks_beyond_2_pow_32():
    seed, tensor_id = 1234567, 9
    first = 2**32 + 5  # c0 = 5, c3 = 1
    z = rademacher_blocks(seed, tensor_id, first, 2).numpy()
    for e in [0, 37, 127, 128, 200]:
        assert int(z[e]) == _element_by_spec(seed, tensor_id, first * 128 + e)
    # the same low word without the high word is a different block
    low = rademacher_blocks(seed, tensor_id, 5, 1).numpy()
    assert not np.array_equal(low, z[:128])
    # and the numba kernel builds the same counter from a 64-bit block index
    words_ref = philox4x32(
        tuple(np.array([c], dtype=np.uint32) for c in (5, tensor_id, 0, 1)), split_seed(seed)
    )
    k0, k1 = split_seed(seed)
    assert tuple(int(w) for w in philox_block(k0, k1, tensor_id, first, 0)) == tuple(
        int(w[0]) for w in words_ref
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        rademacher(-1, 0, 10)
    with pytest.raises(ValueError):
        rademacher(0, 2**32, 10)
    with pytest.raises(ValueError):
        rademacher(0, 0, -1)
