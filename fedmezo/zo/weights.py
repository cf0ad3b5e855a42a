"""The two formats of canonical θ, and the few operations whose kernels differ between them.

`fp32` (TrainableParams, §7.3): θ in fp32, adds rounded to nearest, forwards perturbed in place or
through a bf16 compute copy. `bf16-sr` (Bf16Params, §7.4): θ in bf16, adds rounded stochastically,
forwards perturbed per module. Everything above fedmezo.zo (replicas, training, the server) holds a
`Weights` and calls these functions, so the format is a run setting and not a code path of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmezo.zo.backend import get_backend, warm_up
from fedmezo.zo.bf16_shift import Bf16Shift
from fedmezo.zo.bf16_weights import BF16_SR, Bf16Params
from fedmezo.zo.estimators import InPlace, Perturbation
from fedmezo.zo.interface import Backend
from fedmezo.zo.mixed import ComputeCopy, CopyShift
from fedmezo.zo.params import TrainableParams

__all__ = [
    "WEIGHT_FORMATS",
    "Weights",
    "add_pairs",
    "close_perturbation",
    "graph_safe",
    "perturbation",
    "warm_up_weights",
    "weights_of",
]

WEIGHT_FORMATS = ("fp32", BF16_SR)
Weights = TrainableParams | Bf16Params


def weights_of(model: torch.nn.Module, weights: str = "fp32") -> Weights:
    """Gather `model`'s trainable tensors in the named format (bf16-sr casts the model to bf16)."""
    if weights == "fp32":
        return TrainableParams.from_model(model)
    if weights == BF16_SR:
        return Bf16Params.from_model(model)
    raise ValueError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")


def add_pairs(
    params: Weights, seeds: Sequence[int], values: Sequence[float], backend: Backend | None = None
) -> None:
    """θ ← θ + Σ value·z(seed) in the given order: §7.3's fp32 adds, or §7.4's fp32 adds and one
    stochastic rounding (so a round delta goes in one call)."""
    if isinstance(params, Bf16Params):
        params.apply(seeds, values)
    else:
        (backend or get_backend(params.device)).apply(params, seeds, values)


def perturbation(model: torch.nn.Module, params: Weights, backend: Backend | None = None) -> Perturbation:
    """How a task's forwards see θ + v·z: per-module hooks (bf16-sr), the compute copy, or in place.
    Release it with `close_perturbation` when the task ends."""
    if isinstance(params, Bf16Params):
        return Bf16Shift(model, params)
    if isinstance(params.compute, ComputeCopy):
        return CopyShift(params.compute)
    return InPlace(params, backend)


def graph_safe(params: Weights) -> bool:
    """Whether forwards may be replayed as CUDA graphs. A graph replays the weights at the addresses it
    captured, and bf16-sr's hooks bind a freshly made perturbed tensor per module and forward: a replay
    would read stale weights, so those forwards run eager."""
    return not isinstance(params, Bf16Params)


def close_perturbation(move: Perturbation) -> None:
    """Drop any shift and the hooks a bf16-sr task installed (the others hold nothing)."""
    if isinstance(move, Bf16Shift):
        move.close()
    else:
        move.reset()


def warm_up_weights(params: Weights, backend: Backend | None = None) -> None:
    """Load every kernel this format's training and replay use (delta, fingerprint, and for bf16-sr the
    rounding and perturbed-copy kernels) before the first round pays for it."""
    warm_up(params.device, backend)
    if isinstance(params, Bf16Params):
        params.warm_up()
