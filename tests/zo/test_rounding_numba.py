"""The numba §7.4 kernel (bf16 weights, stochastic rounding) equals the reference bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from fedmezo.zo.rounding import perturbed_bf16, sr_apply_bf16
from fedmezo.zo.rounding_numba import perturbed_bf16_numba, sr_apply_bf16_numba


@pytest.mark.parametrize("numel", [1, 7, 127, 128, 129, 1000, 4099])
def test_numba_equals_the_reference(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    w = (torch.randn(numel, generator=gen) * 0.05).bfloat16()
    if numel >= 7:  # specials, a signed zero and a value that rounds to inf go through as specified
        w[:5] = torch.tensor([math.inf, -math.inf, math.nan, -0.0, 3.3e38]).bfloat16()
    pairs = [(12345, 1e-4), (2**63 + 7, -3e-3), (5, 2e-6), (2**64 - 1, 4e37)]
    for tensor_id in (0, 9, 2**32 - 1):
        expected = sr_apply_bf16(w, pairs, tensor_id).view(torch.int16)
        got = w.clone()
        sr_apply_bf16_numba(got, pairs, tensor_id)
        assert torch.equal(got.view(torch.int16), expected), tensor_id


def test_in_place_on_a_view_of_the_buffer_and_refusals() -> None:
    buffer = torch.zeros(300, dtype=torch.bfloat16)
    part = buffer[100:200]  # a tensor's segment of a flat buffer: contiguous, offset
    sr_apply_bf16_numba(part, [(3, 1e-2)], 4)
    assert torch.equal(
        part.view(torch.int16), sr_apply_bf16(torch.zeros(100).bfloat16(), [(3, 1e-2)], 4).view(torch.int16)
    )
    assert not buffer[:100].any() and not buffer[200:].any()
    sr_apply_bf16_numba(part, [], 4)  # no pairs: nothing to do
    with pytest.raises(ValueError, match="bf16"):
        sr_apply_bf16_numba(torch.zeros(4), [(3, 1e-2)], 4)
    with pytest.raises(ValueError, match="contiguous"):
        sr_apply_bf16_numba(torch.zeros(8, dtype=torch.bfloat16)[::2], [(3, 1e-2)], 4)


@pytest.mark.parametrize("numel", [1, 127, 129, 4099])
def test_perturbed_copy_equals_the_reference(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    w = (torch.randn(numel, generator=gen) * 0.05).bfloat16()
    if numel >= 5:  # NaN becomes 0x7FC0 whatever torch's own conversion does on this CPU
        w[:5] = torch.tensor([math.inf, -math.inf, math.nan, -0.0, 3.38e38]).bfloat16()
    for seed, value, tensor_id in [(1, 1e-3, 0), (2**64 - 1, -2e-2, 7), (5, 4e37, 2**32 - 1)]:
        expected = perturbed_bf16(w, seed, value, tensor_id).view(torch.int16)
        before = w.clone()
        assert torch.equal(perturbed_bf16_numba(w, seed, value, tensor_id).view(torch.int16), expected)
        assert torch.equal(w.view(torch.int16), before.view(torch.int16))  # the source is only read
