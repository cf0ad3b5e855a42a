"""Perturbed forwards on bf16 weights through per-module hooks: the model sees bf16(θ ± v·z) as one
kernel makes it, θ is never written by a shift, and the estimators run on it unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from fedmezo.models import build_random_model, tiny_random_config
from fedmezo.zo import Batch, causal_lm_loss
from fedmezo.zo.bf16_shift import Bf16Shift
from fedmezo.zo.bf16_weights import Bf16Params
from fedmezo.zo.estimators import estimate_step
from fedmezo.zo.rounding import perturbed_bf16


def batch() -> Batch:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :4] = -100
    return Batch(ids, torch.ones_like(ids), labels)


def replica() -> tuple[torch.nn.Module, Bf16Params, Bf16Shift]:
    model = build_random_model(tiny_random_config())
    params = Bf16Params.from_model(model)
    return model, params, Bf16Shift(model, params)


def explicit_loss(params: Bf16Params, seed: int, value: float) -> float:
    """The loss of a separate model whose weights were set to perturbed_bf16 by hand."""
    model = build_random_model(tiny_random_config()).to(torch.bfloat16)
    with torch.no_grad():
        for tensor_id, (name, tensor) in enumerate(params.tensors()):
            model.get_parameter(name).copy_(perturbed_bf16(tensor, seed, value, tensor_id))
    return causal_lm_loss(model, batch())


def test_a_shift_is_seen_by_the_forward_and_leaves_theta() -> None:
    model, params, move = replica()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied: two hooks
    theta = params.snapshot()
    base = causal_lm_loss(model, batch())
    move.shift(99, 1e-2)
    shifted = causal_lm_loss(model, batch())
    assert shifted == explicit_loss(params, 99, 1e-2) and shifted != base
    assert torch.equal(params.flat.view(torch.int16), theta.view(torch.int16))
    for name, tensor in params.tensors():  # between forwards every tensor is bound to its canonical view
        assert model.get_parameter(name).data_ptr() == tensor.data_ptr()
    move.shift(99, -1e-2)  # a new shift replaces the old one
    assert causal_lm_loss(model, batch()) == explicit_loss(params, 99, -1e-2)
    move.reset()
    assert causal_lm_loss(model, batch()) == base


def test_each_tensor_is_derived_once_per_forward_the_tied_one_too() -> None:
    model, params, move = replica()
    made: list[int] = []
    kernel = params.kernels.perturbed

    def counting(w: torch.Tensor, seed: int, value: float, tensor_id: int) -> torch.Tensor:
        made.append(tensor_id)
        return kernel(w, seed, value, tensor_id)

    params.kernels.perturbed = counting
    for value, new_shift in ((1e-2, True), (-1e-2, True), (-1e-2, False)):  # also a shift's 2nd forward
        if new_shift:
            move.shift(5, value)
        made.clear()
        loss = causal_lm_loss(model, batch())
        assert sorted(made) == list(range(len(params.names)))  # once each, the tied embedding too
        assert not move._shared  # the tied copy went with its last user: nothing held between forwards
        assert loss == explicit_loss(params, 5, value)


def test_update_drops_the_shift_and_rounds_stochastically() -> None:
    model, params, move = replica()
    expected = Bf16Params.from_model(build_random_model(tiny_random_config()))
    expected.apply([5, 6], [1e-3, -2e-3])
    move.shift(5, 1e-2)
    move.update([5, 6], [1e-3, -2e-3])
    assert torch.equal(params.flat.view(torch.int16), expected.flat.view(torch.int16))
    assert causal_lm_loss(model, batch()) == explicit_loss(params, 1, 0.0)  # forwards read the new θ
    move.update([], [])  # nothing to add: θ unchanged
    assert torch.equal(params.flat.view(torch.int16), expected.flat.view(torch.int16))


def test_a_forward_that_raised_is_undone_by_reset() -> None:
    model, _, move = replica()
    base = causal_lm_loss(model, batch())
    move.shift(3, 1e-1)
    ones = torch.ones(1, 4, dtype=torch.long)
    bad = Batch(torch.full((1, 4), 10**6), ones, ones)
    with pytest.raises(IndexError):
        causal_lm_loss(model, bad)  # the embedding raises after its pre-hook bound a perturbed copy
    move.reset()
    assert causal_lm_loss(model, batch()) == base
    move.close()
    assert causal_lm_loss(model, batch()) == base  # no hooks left


@pytest.mark.parametrize("estimator", ["mezo", "fzoo"])
def test_estimators_run_on_bf16_weights(estimator: str) -> None:
    model, params, move = replica()
    theta = params.snapshot()
    result = estimate_step(
        estimator, move, lambda: causal_lm_loss(model, batch()), seeds=[11, 12], eps=1e-2, lr=1e-2
    )
    assert not result.skipped and all(math.isfinite(a) and a != 0 for a in result.scalars)
    expected = Bf16Params.from_model(build_random_model(tiny_random_config()))
    expected.restore(theta)
    expected.apply([11, 12], [-1e-2 * a for a in result.scalars])
    assert torch.equal(params.flat.view(torch.int16), expected.flat.view(torch.int16))
