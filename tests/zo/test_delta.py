"""Round deltas: aggregation arithmetic, wire encoding, validation, and the fused application."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmezo.zo import cpu_kernel
from fedmezo.zo.backend import get_backend
from fedmezo.zo.delta import Contribution, RoundDelta, apply_round_delta, round_delta
from fedmezo.zo.params import TrainableParams


def test_coefficients_are_weighted_negative_lr_times_g():
    a = Contribution("a", weight=3.0, lr=1e-3, seeds=[10, 20], projected_grads=[2.0, -1.0])
    b = Contribution("b", weight=1.0, lr=2e-3, seeds=[30, 10], projected_grads=[4.0, 0.5])
    delta = round_delta([b, a])
    assert delta.seeds == (10, 20, 30)
    expected = {
        10: 0.75 * (-1e-3 * 2.0) + 0.25 * (-2e-3 * 0.5),  # shared seed: contributions summed
        20: 0.75 * (-1e-3 * -1.0),
        30: 0.25 * (-2e-3 * 4.0),
    }
    for seed, coef in zip(delta.seeds, delta.coefficients, strict=True):
        assert coef == float(np.float32(expected[seed]))


def test_seeds_sorted_as_unsigned_64_bit():
    delta = round_delta([Contribution("a", 1.0, 1.0, [2**64 - 1, 0, 2**63], [1.0, 1.0, 1.0])])
    assert delta.seeds == (0, 2**63, 2**64 - 1)


def test_bytes_round_trip_is_12_bytes_per_seed():
    delta = round_delta([Contribution("a", 1.0, 1e-6, [5, 2**64 - 2], [0.25, -3.0])])
    data = delta.to_bytes()
    assert len(data) == 24
    assert RoundDelta.from_bytes(data) == delta
    with pytest.raises(ValueError):
        RoundDelta.from_bytes(data[:-1])


@pytest.mark.parametrize(
    "bad",
    [
        {"weight": 0.0},
        {"weight": float("nan")},
        {"lr": float("inf")},
        {"projected_grads": [float("nan")]},
        {"projected_grads": [1.0, 2.0]},
    ],
)
def test_contribution_validation(bad):
    kwargs = {"client_id": "a", "weight": 1.0, "lr": 1.0, "seeds": [1], "projected_grads": [1.0]} | bad
    with pytest.raises(ValueError):
        Contribution(**kwargs)


def test_delta_validation_and_duplicates():
    with pytest.raises(ValueError):
        RoundDelta((2, 1), (0.5, 0.5))
    with pytest.raises(ValueError):
        RoundDelta((1,), (0.1,))  # 0.1 is not an fp32 value
    with pytest.raises(ValueError):
        round_delta([Contribution("a", 1.0, 1.0, [1], [1.0])] * 2)
    assert round_delta([]).num_seeds == 0


def test_apply_equals_one_seed_at_a_time_in_ascending_order():
    def fresh() -> TrainableParams:
        module = torch.nn.Linear(50, 40)
        torch.nn.init.normal_(module.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(module.bias)
        return TrainableParams.from_model(module)

    delta = round_delta([Contribution("a", 1.0, 1e-2, [9, 3, 7], [1.0, -2.0, 0.5])])
    fused = fresh()
    apply_round_delta(fused, delta)
    one_by_one = fresh()
    backend = get_backend("cpu", "reference")
    for seed, coef in sorted(zip(delta.seeds, delta.coefficients, strict=True)):
        backend.apply(one_by_one, [seed], [coef])
    assert torch.equal(fused.flat, one_by_one.flat)


def test_a_long_delta_runs_in_seed_batches_with_the_bits_of_one_call(monkeypatch):
    """apply_round_delta batches on CPU itself (256 seeds per kernel call); every element still gets its
    adds in ascending seed order, so the result equals the reference's seed-by-seed adds."""
    n = cpu_kernel.SEED_BATCH * 2 + cpu_kernel.SEED_BATCH // 2  # two full batches and a partial one
    gen = np.random.default_rng(0)
    seeds = tuple(sorted(int(s) for s in gen.choice(2**62, size=n, replace=False)))
    coefficients = tuple(float(c) for c in gen.normal(0, 1e-3, size=n).astype(np.float32))
    delta = RoundDelta(seeds, coefficients)
    calls: list[int] = []
    kernel = cpu_kernel._apply_kernel

    def counting(*args):
        calls.append(len(args[-1]))  # the sign tables: one per seed of the batch
        return kernel(*args)

    monkeypatch.setattr(cpu_kernel, "_apply_kernel", counting)
    batched = TrainableParams(torch.zeros(300), ("a", "b"), ((7,), (293,)))
    apply_round_delta(batched, delta, get_backend("cpu", "numba"))
    assert calls == [cpu_kernel.SEED_BATCH, cpu_kernel.SEED_BATCH, cpu_kernel.SEED_BATCH // 2]
    reference = TrainableParams(torch.zeros(300), ("a", "b"), ((7,), (293,)))
    apply_round_delta(reference, delta, get_backend("cpu", "reference"))
    assert torch.equal(batched.flat.view(torch.int32), reference.flat.view(torch.int32))
