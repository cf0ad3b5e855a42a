"""fedmezo.zo.weights: the two formats of θ behind one set of calls."""

from __future__ import annotations

import pytest
import torch

from fedmezo.zo import TrainableParams, get_backend
from fedmezo.zo.bf16_shift import Bf16Shift
from fedmezo.zo.bf16_weights import Bf16Params
from fedmezo.zo.estimators import InPlace
from fedmezo.zo.weights import add_pairs, close_perturbation, graph_safe, perturbation, weights_of


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 2))


def test_each_format_gets_its_own_adds_and_perturbations() -> None:
    fp32, bf16 = weights_of(model()), weights_of(model(), "bf16-sr")
    assert isinstance(fp32, TrainableParams) and isinstance(bf16, Bf16Params)
    expected32 = TrainableParams(fp32.flat.clone(), fp32.names, fp32.shapes)
    get_backend("cpu", "reference").apply(expected32, [4], [1e-2])
    add_pairs(fp32, [4], [1e-2])
    assert torch.equal(fp32.flat, expected32.flat)
    before = bf16.snapshot()
    add_pairs(bf16, [4], [1e-2])
    assert not torch.equal(bf16.flat.view(torch.int16), before.view(torch.int16))  # moved, by §7.4
    m = model()
    hooked = perturbation(m, weights_of(m, "bf16-sr"))
    assert isinstance(hooked, Bf16Shift) and isinstance(perturbation(model(), fp32), InPlace)
    close_perturbation(hooked)
    with pytest.raises(ValueError, match="unknown weight format"):
        weights_of(model(), "int4")


def test_cuda_graphs_are_refused_for_per_forward_weights() -> None:
    assert graph_safe(weights_of(model())) and not graph_safe(weights_of(model(), "bf16-sr"))
