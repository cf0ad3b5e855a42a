"""Seed derivation: deterministic, 64-bit, distinct across rounds, clients and steps."""

from __future__ import annotations

import pytest

from fedmezo.zo.seeds import derive_seed


def test_golden_values_pin_the_derivation():
    assert derive_seed(0, 0, "client-1", 0) == 12517903811774076336
    assert derive_seed(2**64 - 1, 5, "é", 19) == 11743866930162774993


def test_distinct_and_in_range():
    seeds = {derive_seed(7, r, f"client-{c}", t) for r in range(20) for c in range(10) for t in range(20)}
    assert len(seeds) == 20 * 10 * 20
    assert all(0 <= s < 2**64 for s in seeds)
    assert derive_seed(7, 1, "a", 0) != derive_seed(8, 1, "a", 0)
    assert derive_seed(7, 1, "ab", 0) != derive_seed(7, 1, "a", 0)


def test_rejects_out_of_range():
    with pytest.raises(ValueError):
        derive_seed(-1, 0, "a", 0)
    with pytest.raises(ValueError):
        derive_seed(0, -1, "a", 0)
