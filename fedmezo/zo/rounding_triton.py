"""§7.4 with Triton: bf16 weights on CUDA (or CPU tensors under TRITON_INTERPRET=1, as CI runs it),
bit for bit `rounding.sr_apply_bf16` and `rounding.perturbed_bf16`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedmezo.zo.triton_kernel import _keys_tensor, triton_available

__all__ = ["perturbed_bf16_triton", "sr_apply_bf16_triton"]

BLOCK = 1024


def _check(w: torch.Tensor) -> None:
    if w.dtype != torch.bfloat16 or not w.is_contiguous():
        raise ValueError("w must be a contiguous bf16 tensor")
    if not triton_available(w.device):
        raise RuntimeError(f"Triton cannot run on {w.device} here (CUDA, or CPU with TRITON_INTERPRET=1)")


def sr_apply_bf16_triton(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> None:
    """Apply (seed, coefficient) pairs in order to the contiguous bf16 tensor `w`, in place."""
    _check(w)
    if not pairs or w.numel() == 0:
        return
    from fedmezo.zo._triton_kernels import sr_apply_kernel

    keys = _keys_tensor([seed for seed, _ in pairs], w.device)
    values = torch.tensor([float(np.float32(c)) for _, c in pairs], dtype=torch.float32, device=w.device)
    flat = w.view(torch.int16).reshape(-1)
    grid = (-(-flat.numel() // BLOCK),)
    sr_apply_kernel[grid](flat, flat.numel(), tensor_id, keys, values, len(pairs), BLOCK=BLOCK)


def perturbed_bf16_triton(w: torch.Tensor, seed: int, value: float, tensor_id: int) -> torch.Tensor:
    """`rounding.perturbed_bf16` as one kernel: a new bf16 tensor shaped like `w` (w is only read)."""
    _check(w)
    out = torch.empty_like(w)
    if w.numel() == 0:
        return out
    from fedmezo.zo._triton_kernels import perturbed_kernel

    grid = (-(-w.numel() // BLOCK),)
    src, dst = w.view(torch.int16).reshape(-1), out.view(torch.int16).reshape(-1)
    perturbed_kernel[grid](
        src, dst, w.numel(), tensor_id, _keys_tensor([seed], w.device), float(np.float32(value)), BLOCK=BLOCK
    )
    return out
