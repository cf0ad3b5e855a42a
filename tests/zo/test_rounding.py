"""Stochastic rounding to bf16 (§7.4's reference): portable bits, exact where bf16 is exact, unbiased,
small updates survive in expectation where round-to-nearest erases them, and an apply of many pairs
rounds once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmezo.zo.rng import DOMAIN_ROUNDING, direction_words, rademacher
from fedmezo.zo.rounding import rounding_bits, sr_apply_bf16, sr_sum_bf16, stochastic_round_bf16


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
    # NaN of either sign is 0x7FC0: CUDA's arithmetic does not keep a NaN's sign
    bits = stochastic_round_bf16(special, torch.zeros(4, dtype=torch.int32)).view(torch.int16) & 0xFFFF
    assert bits[2:].tolist() == [0x7FC0, 0x7FC0]
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
    """1,000 applies of one ±1e-4 pair each on weights of 1.0 (bf16 ulp 2^-7: each is 1/78 of it)."""
    w = torch.ones(4096, dtype=torch.bfloat16)
    pairs = [(seed, 1e-4) for seed in range(1000)]
    out = w
    for pair in pairs:  # each apply rounds: the update survives only through the rounding's odds
        out = sr_apply_bf16(out, [pair], tensor_id=0)
    out = out.double()
    # z(s) is ±1, so each element moves by a random walk of ±1e-4 steps: its mean over elements and
    # steps is 0, but the spread is what round-to-nearest would erase entirely
    nearest = w.float()
    for seed, c in pairs[:50]:
        nearest = (nearest + torch.where(rademacher(seed, 0, 4096) > 0, c, -c)).bfloat16().float()
    assert torch.equal(nearest, torch.ones(4096))  # nearest rounding never leaves 1.0
    assert out.std().item() > 0.5 * 1e-4 * math.sqrt(1000)  # SR keeps the walk (std ~ 3.2e-3)
    assert abs(out.mean().item() - 1.0) < 1e-3


def test_sr_apply_is_fp32_adds_in_order_then_one_rounding_by_the_first_seed() -> None:
    w = (torch.arange(64, dtype=torch.float32) / 64).bfloat16()
    pairs = [(1, 1e-3), (2, -2e-3)]
    moved = w.float()
    for seed, c in pairs:  # §7.4 written out: signs of z(seed), one fp32 add each, in order
        v = torch.tensor(float(np.float32(c)))
        moved = moved + torch.where(rademacher(seed, 5, 64) > 0, v, -v)
    assert torch.equal(sr_sum_bf16(w, pairs, 5).view(torch.int32), moved.view(torch.int32))
    expected = stochastic_round_bf16(moved, rounding_bits(1, 5, 64))  # the first pair's seed's bits
    got = sr_apply_bf16(w, pairs, tensor_id=5)
    assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), expected.view(torch.int16))
    other_first = stochastic_round_bf16(moved, rounding_bits(2, 5, 64))
    assert not torch.equal(other_first.view(torch.int16), expected.view(torch.int16))
    no_pairs = sr_apply_bf16(w, [], 5)  # nothing to add: no rounding either
    assert torch.equal(no_pairs.view(torch.int16), w.view(torch.int16))
    with pytest.raises(ValueError, match="bf16"):
        sr_apply_bf16(w.float(), pairs, 5)


def test_one_rounding_per_apply_is_less_noise_than_one_per_pair() -> None:
    """64 pairs of ±3e-4 on weights near 0.5 (ulp 2^-9 ≈ 2e-3): rounding the sum once leaves an error of
    about √(ulp·|Σ|) per element; rounding after every pair about √(ulp·Σ|c|), √(64·π/2)^(1/2) ≈ 3x more."""
    n = 8192
    w = torch.full((n,), 0.5, dtype=torch.bfloat16)
    pairs = [(100 + k, 3e-4) for k in range(64)]
    exact = sr_sum_bf16(w, pairs, 2).double()  # fp32 adds of 3e-4 at 0.5: rounding error ≪ ulp
    once = sr_apply_bf16(w, pairs, 2).double()
    each = w
    for pair in pairs:
        each = sr_apply_bf16(each, [pair], 2)
    err_once, err_each = (once - exact).std().item(), (each.double() - exact).std().item()
    assert abs((once - exact).mean().item()) < 5 * err_once / math.sqrt(n)  # still unbiased
    assert err_once < 0.5 * err_each, (err_once, err_each)
