"""The estimators: MeZO with P = 1 is the original step bit for bit; MeZO with P > 1 and FZOO follow
their formulas on a quadratic whose losses are known in closed form; degenerate steps are skipped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmezo.zo import TrainableParams, mezo_step, rademacher
from fedmezo.zo.estimators import (
    ADAMEZO_BETAS,
    AdaMeZO,
    InPlace,
    estimate_step,
    forwards_per_step,
    task_estimator,
)

N = 257  # a few Philox blocks plus a ragged tail


def _params(seed: int = 0) -> TrainableParams:
    gen = torch.Generator().manual_seed(seed)
    return TrainableParams(torch.randn(N, generator=gen), ("w",), ((N,),))


def _z(seed: int) -> torch.Tensor:
    return rademacher(seed, 0, N).to(torch.float64)


class Quadratic:
    """L(θ) = ½‖θ − t‖² in float64, counting its calls (forwards)."""

    def __init__(self, params: TrainableParams) -> None:
        self.params = params
        self.target = torch.linspace(-1, 1, N, dtype=torch.float64)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return float(0.5 * ((self.params.flat.double() - self.target) ** 2).sum())


def test_mezo_with_one_perturbation_is_the_mezo_step_bit_for_bit() -> None:
    a, b = _params(), _params()
    for step in range(3):
        seed = 1000 + step
        ref = mezo_step(a, Quadratic(a), seed=seed, eps=1e-3, lr=1e-2)
        est = estimate_step("mezo", InPlace(b), Quadratic(b), seeds=[seed], eps=1e-3, lr=1e-2)
        assert est.scalars == (ref.projected_grad,)
        assert est.loss == ref.loss
        assert torch.equal(a.flat, b.flat)


def test_mezo_averages_p_two_point_estimates() -> None:
    params = _params(1)
    theta = params.flat.double().clone()
    loss = Quadratic(params)
    seeds, eps, lr = [11, 12, 13, 14], 1e-3, 1e-3
    est = estimate_step("mezo", InPlace(params), loss, seeds=seeds, eps=eps, lr=lr)
    assert loss.calls == forwards_per_step("mezo", 4) == 8
    for seed, a in zip(seeds, est.scalars):
        z = _z(seed)
        plus = float(0.5 * ((theta + eps * z - loss.target) ** 2).sum())
        minus = float(0.5 * ((theta - eps * z - loss.target) ** 2).sum())
        # the perturbed forwards see fp32 weights: compare at the precision of those losses
        assert a == pytest.approx((plus - minus) / (2 * eps) / 4, rel=1e-3)
    expected = theta - lr * sum(a * _z(s) for s, a in zip(seeds, est.scalars))
    assert torch.allclose(params.flat.double(), expected, atol=1e-5)


def test_fzoo_normalises_one_sided_differences_by_the_loss_spread() -> None:
    params = _params(2)
    theta = params.flat.double().clone()
    loss = Quadratic(params)
    seeds, eps, lr = [21, 22, 23, 24, 25, 26, 27, 28], 1e-3, 1e-2
    est = estimate_step("fzoo", InPlace(params), loss, seeds=seeds, eps=eps, lr=lr)
    assert loss.calls == forwards_per_step("fzoo", 8) == 9
    base = float(0.5 * ((theta - loss.target) ** 2).sum())
    perturbed = [float(0.5 * ((theta + eps * _z(s) - loss.target) ** 2).sum()) for s in seeds]
    sigma = float(np.std(perturbed))  # population std of the perturbed losses only
    for a, x in zip(est.scalars, perturbed):
        assert a == pytest.approx((x - base) / (8 * sigma), rel=1e-3, abs=1e-4)
    assert est.loss == pytest.approx(base, rel=1e-6)
    # a normalised step: Σ a_p² = 1/P when the differences have mean zero, about that otherwise
    assert 0.01 < math.fsum(a * a for a in est.scalars) < 1.0


def test_fzoo_descends_on_a_quadratic() -> None:
    params = _params(3)
    loss = Quadratic(params)
    start = loss()
    move = InPlace(params)
    for step in range(40):
        seeds = [5000 + 8 * step + p for p in range(8)]
        estimate_step("fzoo", move, loss, seeds=seeds, eps=1e-3, lr=0.5)
    assert loss() < 0.8 * start


@pytest.mark.parametrize("estimator", ["mezo", "fzoo"])
def test_a_non_finite_loss_skips_the_step_and_leaves_theta(estimator: str) -> None:
    params = _params(4)
    before = params.flat.clone()
    calls = iter([1.0, float("nan")] + [1.0] * 20)
    est = estimate_step(estimator, InPlace(params), lambda: next(calls), seeds=[1, 2], eps=1e-3, lr=1.0)
    assert est.skipped and est.scalars == (0.0, 0.0)
    assert torch.allclose(params.flat, before, atol=1e-6)  # back to θ up to the ±ε round trip


def test_fzoo_with_equal_losses_has_no_direction_and_skips() -> None:
    params = _params(5)
    before = params.flat.clone()
    est = estimate_step("fzoo", InPlace(params), lambda: 2.0, seeds=[1, 2, 3], eps=1e-3, lr=1.0)
    assert est.skipped and est.forwards == 4
    assert torch.allclose(params.flat, before, atol=1e-6)


def test_clip_bounds_every_scalar() -> None:
    params = _params(6)
    est = estimate_step("mezo", InPlace(params), Quadratic(params), seeds=[7, 8], eps=1e-3, lr=0.0, clip=0.5)
    assert all(abs(a) <= 0.25 for a in est.scalars)  # |g| ≤ 0.5, averaged over P = 2
    assert est.clipped


def test_bad_settings_are_refused_before_theta_moves() -> None:
    params = _params(7)
    before = params.flat.clone()
    for kwargs in ({"eps": 0.0, "lr": 1.0, "seeds": [1]}, {"eps": 1e-3, "lr": math.inf, "seeds": [1]},
                   {"eps": 1e-3, "lr": 1.0, "seeds": []}):  # fmt: skip
        with pytest.raises(ValueError):
            estimate_step("mezo", InPlace(params), Quadratic(params), **kwargs)  # type: ignore[arg-type]
    assert torch.equal(params.flat, before)


def _expected_adamezo_upload(
    steps: list[tuple[float, ...]], horizon: int, betas: tuple[float, float]
) -> list[float]:
    """docs/estimators.md's adamezo formula, written out independently: each step t moves along the
    last `horizon` steps' directions with coefficient w_k·a / (Σw · sqrt(v̂_t)); a slot uploads the sum."""
    b1, b2 = betas
    coef = [0.0] * sum(len(s) for s in steps)
    starts = [sum(len(s) for s in steps[:t]) for t in range(len(steps))]
    for t in range(len(steps)):
        window = list(range(max(0, t - horizon + 1), t + 1))  # oldest first
        w = [b1 ** (t - j) for j in window]
        u = [b2 ** (t - j) for j in window]
        v = sum(ui * sum(a * a for a in steps[j]) for ui, j in zip(u, window)) / sum(u)
        for wi, j in zip(w, window):
            for p, a in enumerate(steps[j]):
                coef[starts[j] + p] += wi / sum(w) * a / math.sqrt(v)
    return coef


@pytest.mark.parametrize("perturbations", [1, 3])
def test_adamezo_moves_along_the_last_h_directions_and_uploads_their_sums(perturbations: int) -> None:
    params = _params(8)
    theta = params.flat.double().clone()
    loss = Quadratic(params)
    estimator = AdaMeZO(horizon=4)
    steps, seeds, lr = [], [], 0.05
    for t in range(7):
        step_seeds = [7000 + perturbations * t + p for p in range(perturbations)]
        est = estimator.step(InPlace(params), loss, seeds=step_seeds, eps=1e-3, lr=lr)
        assert est.forwards == forwards_per_step("adamezo", perturbations) == 2 * perturbations
        steps.append(est.scalars)
        seeds += step_seeds
    upload = estimator.upload()
    expected = _expected_adamezo_upload(steps, 4, ADAMEZO_BETAS)
    assert upload == pytest.approx(expected, rel=1e-6)
    # the local model is θ − η·Σ a_eff·z: what the server's round delta rebuilds from the upload
    rebuilt = theta - lr * sum(a * _z(s) for s, a in zip(seeds, upload))
    assert torch.allclose(params.flat.double(), rebuilt, atol=1e-5)
    assert loss() < float(0.5 * ((theta - loss.target) ** 2).sum())


def test_adamezo_first_step_is_a_sign_step() -> None:
    params = _params(9)
    estimator = AdaMeZO()
    est = estimator.step(InPlace(params), Quadratic(params), seeds=[42], eps=1e-3, lr=0.1)
    assert estimator.upload() == (math.copysign(1.0, est.scalars[0]),)


def test_adamezo_skips_a_non_finite_step_without_moving_or_remembering_it() -> None:
    params = _params(10)
    estimator = AdaMeZO()
    estimator.step(InPlace(params), Quadratic(params), seeds=[1], eps=1e-3, lr=0.1)
    before = params.flat.clone()
    calls = iter([1.0, float("nan")])
    est = estimator.step(InPlace(params), lambda: next(calls), seeds=[2], eps=1e-3, lr=0.1)
    assert est.skipped and est.forwards == 2
    assert torch.allclose(params.flat, before, atol=1e-6)
    assert estimator.upload()[1] == 0.0 and abs(estimator.upload()[0]) == 1.0  # step 2 added nothing


def test_task_estimator_knows_every_estimator_and_refuses_others() -> None:
    for name in ("mezo", "fzoo", "adamezo"):
        assert task_estimator(name).upload() == ()
    with pytest.raises(ValueError, match="unknown estimator"):
        task_estimator("adam")
