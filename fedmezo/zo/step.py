"""One MeZO step (Malladi et al., 2023; design §1), as straight-line code.

    g = ( L(θ + ε·z(s); B) − L(θ − ε·z(s); B) ) / (2ε)       # projected gradient, a scalar
    θ ← θ − η·g·z(s)

Three passes over the parameters, each one fused regenerate-and-add of z(s): +ε, −2ε, and
restore-and-update (+ε then −η·g, two adds per element in one pass). No gradients, no optimizer state;
the only extra memory is the kernel's working block. In-place ±ε is not exactly reversible in fp32, so
the local trajectory drifts by a few ulps; the round protocol restores θ_r from a snapshot (design §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fedmezo.zo.backend import get_backend
from fedmezo.zo.interface import Backend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.values import to_fp32

__all__ = ["StepResult", "check_hyperparameters", "mezo_step", "projected_gradient"]


@dataclass(frozen=True)
class StepResult:
    """What a step reports: the scalar that travels (projected_grad) and the two losses."""

    seed: int
    projected_grad: float  # g after clipping; 0.0 when skipped (the update is then a no-op)
    loss_plus: float
    loss_minus: float
    skipped: bool  # a loss was NaN/inf: θ is restored and not updated
    clipped: bool

    @property
    def loss(self) -> float:
        return 0.5 * (self.loss_plus + self.loss_minus)


def check_hyperparameters(eps: float, lr: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")


def projected_gradient(
    loss_plus: float, loss_minus: float, eps: float, clip: float | None
) -> tuple[float | None, bool]:
    """g = (L₊ − L₋)/2ε in float64, optionally clipped, rounded to the fp32 scalar that travels.

    Returns (None, False) when a loss is NaN/inf: the step must be skipped.
    """
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        return None, False
    g = (loss_plus - loss_minus) / (2.0 * eps)
    clipped = clip is not None and abs(g) > clip
    if clip is not None and clipped:
        g = math.copysign(clip, g)
    return to_fp32(g), clipped


def mezo_step(
    params: TrainableParams,
    loss_fn: Callable[[], float],
    *,
    seed: int,
    eps: float,
    lr: float,
    clip: float | None = None,
    backend: Backend | None = None,
) -> StepResult:
    """Run one MeZO step on `params` with direction z(seed); `loss_fn` evaluates the current weights."""
    check_hyperparameters(eps, lr)
    backend = backend or get_backend(params.device)

    # 1. θ ← θ + ε·z, then L₊ (forward in eval + inference mode, loss in fp32)
    backend.apply(params, [seed], [eps])
    loss_plus = loss_fn()
    # 2. θ ← θ − 2ε·z, then L₋ on the same batch
    backend.apply(params, [seed], [-2.0 * eps])
    loss_minus = loss_fn()

    # 3. projected gradient g = (L₊ − L₋) / 2ε, in float64 on the host
    projected_grad, clipped = projected_gradient(loss_plus, loss_minus, eps, clip)
    if projected_grad is None:  # a non-finite loss: restore only
        backend.apply(params, [seed], [eps])
        return StepResult(seed, 0.0, loss_plus, loss_minus, skipped=True, clipped=False)

    # 4. restore and update in one pass: θ ← θ + ε·z − η·g·z
    backend.apply(params, [seed, seed], [eps, -lr * projected_grad])
    return StepResult(seed, projected_grad, loss_plus, loss_minus, skipped=False, clipped=clipped)
