"""Mixed precision without drift (design §3): fp32 canonical θ, low-precision forwards.

The model's trainable weights are rebound to a bf16 *compute copy*; the canonical fp32 θ
lives only in `params.flat`. Each pass derives the copy from θ in one fused kernel:

    copy ← bf16(θ + ε·z)      forward → L₊          (θ untouched)
    copy ← bf16(θ − ε·z)      forward → L₋          (θ untouched)
    θ ← θ − η·g·z;  copy ← bf16(θ)                  (the canonical fp32 add, design §2)

θ is never perturbed, so local training adds no drift at all, and nothing is ever rounded back
into θ. The bf16 forwards are what make the GPU client fast; the fp32 adds keep replicas identical.
Both passes go through the Backend interface (`derive_copy`, `apply`): Triton writes the copy in its
own pass, the CPU backends add on a scratch θ or refresh the copy after the add.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedmezo.zo.backend import compute_copy_backend
from fedmezo.zo.interface import Backend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.step import StepResult, check_hyperparameters, projected_gradient

__all__ = ["ComputeCopy", "CopyShift", "mezo_step_mixed"]


class ComputeCopy:
    """A low-precision copy of θ that the model's forwards read; θ stays fp32 in `params.flat`."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: TrainableParams,
        dtype: torch.dtype = torch.bfloat16,
        backend: Backend | None = None,
    ):
        if dtype != torch.bfloat16:
            raise ValueError(f"the compute copy is bfloat16 (fp32's exponent range), got {dtype}")
        self.params = params
        self.dtype = dtype
        self.backend = backend or compute_copy_backend(params.device)
        self.copy = torch.empty(params.numel, dtype=dtype, device=params.device)
        model.to(
            dtype
        )  # frozen weights and buffers join the compute dtype; θ (params.flat) is no module tensor
        for name, shape, seg in zip(params.names, params.shapes, params.segments, strict=True):
            model.get_parameter(name).data = self.copy[seg.offset : seg.offset + seg.numel].view(shape)
        params.compute = self  # from now on every write to θ keeps the copy in step
        self.derive([], [])

    def derive(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """copy ← bf16(θ + Σ v·z(seed)), θ unchanged."""
        self.backend.derive_copy(self.params, self.copy, seeds, values)

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """θ ← θ + Σ v·z(seed) (canonical fp32 adds); the backend refreshes the copy with it."""
        self.backend.apply(self.params, seeds, values)


class CopyShift:
    """The estimators' view of a compute copy: shifts only ever touch the copy, never θ."""

    def __init__(self, compute: ComputeCopy) -> None:
        self.compute = compute
        self._shifted = False

    def shift(self, seed: int, value: float) -> None:
        self.compute.derive([seed], [value])
        self._shifted = True

    def reset(self) -> None:
        if self._shifted:
            self.compute.derive([], [])
            self._shifted = False

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """θ ← θ + Σ v·z and copy ← bf16(θ) in one pass (an empty update only refreshes the copy)."""
        if seeds:
            self.compute.update(seeds, values)
        elif self._shifted:
            self.compute.derive([], [])
        self._shifted = False


def mezo_step_mixed(
    compute: ComputeCopy,
    loss_fn: Callable[[], float],
    *,
    seed: int,
    eps: float,
    lr: float,
    clip: float | None = None,
) -> StepResult:
    """One MeZO step with low-precision forwards; θ moves only by the canonical −η·g·z add."""
    check_hyperparameters(eps, lr)
    # 1. copy ← bf16(θ + ε·z), L₊
    compute.derive([seed], [eps])
    loss_plus = loss_fn()
    # 2. copy ← bf16(θ − ε·z), L₋
    compute.derive([seed], [-eps])
    loss_minus = loss_fn()
    # 3. projected gradient, fp64 on the host, rounded to the fp32 scalar that travels
    projected_grad, clipped = projected_gradient(loss_plus, loss_minus, eps, clip)
    if projected_grad is None:
        compute.derive([], [])
        return StepResult(seed, 0.0, loss_plus, loss_minus, skipped=True, clipped=False)
    # 4. θ ← θ − η·g·z and copy ← bf16(θ), one pass
    compute.update([seed], [-lr * projected_grad])
    return StepResult(seed, projected_grad, loss_plus, loss_minus, skipped=False, clipped=clipped)
