"""§7.4 with Triton: bf16 weights on CUDA (or CPU tensors under TRITON_INTERPRET=1, as CI runs it),
bit for bit `rounding.sr_apply_bf16`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedmezo.zo.triton_kernel import _keys_tensor, triton_available

__all__ = ["sr_apply_bf16_triton"]

BLOCK = 1024


def sr_apply_bf16_triton(w: torch.Tensor, pairs: Sequence[tuple[int, float]], tensor_id: int) -> None:
    """Apply (seed, coefficient) pairs in order to the contiguous bf16 tensor `w`, in place."""
    if w.dtype != torch.bfloat16 or not w.is_contiguous():
        raise ValueError("w must be a contiguous bf16 tensor")
    if not triton_available(w.device):
        raise RuntimeError(f"Triton cannot run on {w.device} here (CUDA, or CPU with TRITON_INTERPRET=1)")
    if not pairs or w.numel() == 0:
        return
    from fedmezo.zo._triton_kernels import sr_apply_kernel

    keys = _keys_tensor([seed for seed, _ in pairs], w.device)
    values = torch.tensor([float(np.float32(c)) for _, c in pairs], dtype=torch.float32, device=w.device)
    flat = w.view(torch.int16).reshape(-1)
    grid = (-(-flat.numel() // BLOCK),)
    sr_apply_kernel[grid](flat, flat.numel(), tensor_id, keys, values, len(pairs), BLOCK=BLOCK)
