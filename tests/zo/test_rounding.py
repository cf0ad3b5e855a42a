"""Stochastic rounding to bf16 (issue #14 item 2's reference): portable bits, exact where bf16 is exact,
unbiased, and small updates survive in expectation where round-to-nearest erases them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmezo.zo.rng import DOMAIN_ROUNDING, direction_words, rademacher
from fedmezo.zo.rounding import rounding_bits, sr_apply_bf16, stochastic_round_bf16


def test_bits_are_the_halves_of_domain_1_words() -> None:
    seed, tensor_id = 0x0123456789ABCDEF, 7
    bits = rounding_bits(seed, tensor_id, 21)
    words = direction_words(seed, tensor_id, 0, 3, DOMAIN_ROUNDING)
    for e in range(21):  # block e div 8, word (e mod 8) div 2, low half for even e, high for odd
        word = int(words[e // 8, (e % 8) // 2])
        assert int(bits[e]) == (word >> 16 if e % 2 else word & 0xFFFF), e
    assert DOMAIN_ROUNDING == 1
    assert torch.equal(rounding_bits(seed, tensor_id, 5), bits[:5])  # a prefix, whatever the length
    assert not torch.equal(rounding_bits(seed + 1, tensor_id, 21), bits)


def test_values_bf16_holds_are_exact_and_specials_stay() -> None:
    exact = torch.tensor([0.0, -0.0, 1.0, -2.5, 0.0078125, 3.0e38], dtype=torch.bfloat16).float()
    for fill in (0, 0xFFFF, 0x8000):
        out = stochastic_round_bf16(exact, torch.full(exact.shape, fill, dtype=torch.int32))
        assert torch.equal(out.float().view(torch.int32), exact.view(torch.int32)), fill  # -0.0 kept
    special = torch.tensor([math.inf, -math.inf, math.nan, -math.nan])
    out = stochastic_round_bf16(special, torch.full((4,), 0xFFFF, dtype=torch.int32)).float()
    assert out[0] == math.inf and out[1] == -math.inf and out[2:].isnan().all()
    # a finite value rounds up to inf only from within an ulp of fp32's largest
    top = torch.tensor([3.4028235e38])
    assert stochastic_round_bf16(top, torch.tensor([0xFFFF], dtype=torch.int32)).float()[0] == math.inf


@pytest.mark.parametrize("x", [1.0 + 2.0**-10, -(1.0 + 3 * 2.0**-9), 3.3e-3, -7.77e-6])
def test_rounding_is_unbiased(x: float) -> None:
    n = 200_000
    values = torch.full((n,), x, dtype=torch.float32)
    out = stochastic_round_bf16(values, rounding_bits(11, 3, n)).double()
    lo, hi = out.min().item(), out.max().item()
    assert lo <= float(np.float32(x)) <= hi and len({lo, hi}) <= 2  # only the two neighbours
    spread = hi - lo
    tolerance = 5 * spread / 2 / math.sqrt(n)  # 5 standard errors of a two-valued mean, at most
    assert abs(out.mean().item() - float(np.float32(x))) <= tolerance


def test_small_updates_survive_in_expectation() -> None:
    """1,000 updates of +1e-4 each on weights of 1.0 (bf16 ulp 2^-7: each update is 1/78 of it)."""
    w = torch.ones(4096, dtype=torch.bfloat16)
    pairs = [(seed, 1e-4) for seed in range(1000)]
    out = sr_apply_bf16(w, pairs, tensor_id=0).double()
    # z(s) is ±1, so each element moves by a random walk of ±1e-4 steps: its mean over elements and
    # steps is 0, but the spread is what round-to-nearest would erase entirely
    nearest = w.float()
    for seed, c in pairs[:50]:
        nearest = (nearest + torch.where(rademacher(seed, 0, 4096) > 0, c, -c)).bfloat16().float()
    assert torch.equal(nearest, torch.ones(4096))  # nearest rounding never leaves 1.0
    assert out.std().item() > 0.5 * 1e-4 * math.sqrt(1000)  # SR keeps the walk (std ~ 3.2e-3)
    assert abs(out.mean().item() - 1.0) < 1e-3


def test_sr_apply_is_one_fp32_add_then_the_seeds_rounding_per_pair() -> None:
    w = (torch.arange(64, dtype=torch.float32) / 64).bfloat16()
    pairs = [(1, 1e-3), (2, -2e-3)]
    expected = w.float()
    for seed, c in pairs:  # §7.4 written out: signs of z(seed), one fp32 add, the seed's rounding bits
        v = torch.tensor(float(np.float32(c)))
        moved = expected + torch.where(rademacher(seed, 5, 64) > 0, v, -v)
        expected = stochastic_round_bf16(moved, rounding_bits(seed, 5, 64)).float()
    got = sr_apply_bf16(w, pairs, tensor_id=5)
    assert got.dtype == torch.bfloat16 and torch.equal(got.float(), expected)
    assert not torch.equal(sr_apply_bf16(w, [(3, 1e-3), (2, -2e-3)], 5).float(), expected)
    with pytest.raises(ValueError, match="bf16"):
        sr_apply_bf16(w.float(), pairs, 5)
