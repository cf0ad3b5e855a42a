"""The Triton §7.4 kernel (bf16 weights, stochastic rounding) equals the reference bit for bit: on CPU
tensors under TRITON_INTERPRET=1 here (tests/conftest.py sets it without CUDA), on the GPU there."""

from __future__ import annotations

import math

import pytest
import torch

from fedmezo.zo.rounding import perturbed_bf16, sr_apply_bf16
from fedmezo.zo.rounding_triton import perturbed_bf16_triton, sr_apply_bf16_triton
from fedmezo.zo.triton_kernel import triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not triton_available(DEVICE), reason="no Triton for this device")


@pytest.mark.parametrize("numel", [1, 127, 129, 1025, 3000])
def test_triton_equals_the_reference(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    w = (torch.randn(numel, generator=gen) * 0.05).bfloat16()
    if numel >= 5:
        w[:5] = torch.tensor([math.inf, -math.inf, math.nan, -0.0, 3.3e38]).bfloat16()
    pairs = [(12345, 1e-4), (2**63 + 7, -3e-3), (2**64 - 1, 4e37)]
    for tensor_id in (0, 2**32 - 1):
        expected = sr_apply_bf16(w, pairs, tensor_id).view(torch.int16)
        got = w.to(DEVICE)
        sr_apply_bf16_triton(got, pairs, tensor_id)
        assert torch.equal(got.cpu().view(torch.int16), expected), tensor_id


def test_in_place_on_a_segment_and_refusals() -> None:
    buffer = torch.zeros(300, dtype=torch.bfloat16, device=DEVICE)
    sr_apply_bf16_triton(buffer[100:200], [(3, 1e-2)], 4)
    expected = sr_apply_bf16(torch.zeros(100).bfloat16(), [(3, 1e-2)], 4)
    assert torch.equal(buffer[100:200].cpu().view(torch.int16), expected.view(torch.int16))
    assert not buffer[:100].any() and not buffer[200:].any()
    with pytest.raises(ValueError, match="bf16"):
        sr_apply_bf16_triton(torch.zeros(4, device=DEVICE), [(3, 1e-2)], 4)


@pytest.mark.parametrize("numel", [1, 129, 3000])
def test_perturbed_copy_equals_the_reference(numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    w = (torch.randn(numel, generator=gen) * 0.05).bfloat16()
    if numel >= 5:
        w[:5] = torch.tensor([math.inf, -math.inf, math.nan, -0.0, 3.38e38]).bfloat16()
    for seed, value, tensor_id in [(1, 1e-3, 0), (2**64 - 1, -2e-2, 7), (5, 4e37, 2**32 - 1)]:
        expected = perturbed_bf16(w, seed, value, tensor_id).view(torch.int16)
        got = perturbed_bf16_triton(w.to(DEVICE), seed, value, tensor_id)
        assert torch.equal(got.cpu().view(torch.int16), expected)
