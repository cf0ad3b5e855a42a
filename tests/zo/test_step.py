"""The MeZO step on a loss with a known gradient: projected gradient, update, skip, clip."""

from __future__ import annotations

import math

import pytest
import torch

from fedmezo.zo.backend import get_backend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.rng import rademacher
from fedmezo.zo.step import mezo_step


class Quadratic(torch.nn.Module):
    def __init__(self, n: int = 1000) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(n, generator=gen))
        self.target = torch.randn(n, generator=gen)

    def loss(self) -> float:
        return float(((self.w.detach().double() - self.target.double()) ** 2).sum())


def setup() -> tuple[Quadratic, TrainableParams]:
    model = Quadratic()
    return model, TrainableParams.from_model(model)


def test_projected_gradient_is_the_directional_derivative():
    model, params = setup()
    z = rademacher(11, 0, params.numel).double()
    expected = float(2 * (z * (model.w.detach().double() - model.target.double())).sum())  # ∇L·z
    result = mezo_step(params, model.loss, seed=11, eps=1e-3, lr=0.0)
    assert not result.skipped
    assert result.projected_grad == pytest.approx(expected, rel=1e-3)
    assert result.loss == pytest.approx(model.loss(), rel=1e-4)


def test_update_moves_along_minus_lr_g_z_and_lowers_the_loss():
    model, params = setup()
    theta0 = params.flat.clone().double()
    before = model.loss()
    result = mezo_step(params, model.loss, seed=3, eps=1e-3, lr=1e-4)
    z = rademacher(3, 0, params.numel).double()
    expected = theta0 - 1e-4 * result.projected_grad * z
    assert torch.allclose(params.flat.double(), expected, atol=1e-6)  # up to fp32 drift of ±ε
    assert model.loss() < before
    assert model.w.grad is None  # no autograd state


def test_non_finite_loss_skips_and_restores():
    _, params = setup()
    theta0 = params.flat.clone()
    calls = iter([1.0, float("nan")])
    result = mezo_step(params, lambda: next(calls), seed=5, eps=1e-3, lr=1.0)
    assert result.skipped and result.projected_grad == 0.0
    assert torch.allclose(params.flat, theta0, atol=1e-6)
    assert math.isnan(result.loss_minus)


def test_clipping_bounds_the_scalar():
    model, params = setup()
    result = mezo_step(params, model.loss, seed=11, eps=1e-3, lr=0.0, clip=0.5)
    assert result.clipped and abs(result.projected_grad) == 0.5


def test_same_result_on_every_backend():
    results = {}
    for name in ("reference", "numba"):
        model, params = setup()
        step = mezo_step(params, model.loss, seed=21, eps=1e-3, lr=1e-4, backend=get_backend("cpu", name))
        results[name] = (step.projected_grad, params.flat.clone())
    assert results["reference"][0] == results["numba"][0]
    assert torch.equal(results["reference"][1], results["numba"][1])


def test_rejects_bad_hyperparameters():
    model, params = setup()
    for kwargs in (
        {"eps": 0.0, "lr": 1.0},
        {"eps": float("nan"), "lr": 1.0},
        {"eps": 1e-3, "lr": float("inf")},
    ):
        with pytest.raises(ValueError):
            mezo_step(params, model.loss, seed=1, **kwargs)
