"""Mixed precision without drift: bf16 forwards from a compute copy, canonical fp32 θ untouched."""

from __future__ import annotations

import pytest
import torch

from fedmezo.zo import TrainableParams, get_backend
from fedmezo.zo.mixed import ComputeCopy, mezo_step_mixed


class Regression(torch.nn.Module):
    """A small two-layer model with edge sizes (partial Philox blocks) and an fp32 loss."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.hidden = torch.nn.Linear(33, 65)
        self.out = torch.nn.Linear(65, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3
        self.x = torch.randn(16, 33, generator=gen)
        self.y = torch.randn(16, 3, generator=gen)

    def loss(self) -> float:
        with torch.inference_mode():
            pred = self.out(torch.tanh(self.hidden(self.x.to(self.out.weight.dtype))))
            return float(((pred.float() - self.y) ** 2).mean())


def replica(device: str = "cpu") -> tuple[Regression, TrainableParams]:
    model = Regression().to(device)
    return model, TrainableParams.from_model(model)


def reference_after(theta: torch.Tensor, params: TrainableParams, seeds: list[int], values: list[float]):
    scratch = TrainableParams(theta.clone().cpu(), params.names, params.shapes)
    get_backend("cpu", "reference").apply(scratch, seeds, values)
    return scratch.flat


def test_derive_leaves_theta_and_rounds_theta_plus_eps_z_to_nearest():
    model, params = replica()
    theta = params.snapshot()
    compute = ComputeCopy(model, params)
    assert torch.equal(compute.copy, theta.to(torch.bfloat16))  # torch's round-to-nearest-even
    compute.derive([7], [1e-3])
    assert torch.equal(params.flat, theta)  # θ untouched
    assert torch.equal(compute.copy, reference_after(theta, params, [7], [1e-3]).to(torch.bfloat16))
    assert model.hidden.weight.dtype == torch.bfloat16


def test_update_is_the_canonical_fp32_add():
    model, params = replica()
    theta = params.snapshot()
    compute = ComputeCopy(model, params)
    compute.update([3, 9], [2e-3, -1e-3])
    expected = reference_after(theta, params, [3, 9], [2e-3, -1e-3])
    assert torch.equal(params.flat, expected)
    assert torch.equal(compute.copy, expected.to(torch.bfloat16))


def test_mixed_step_moves_theta_only_by_minus_lr_g_z_and_tracks_fp32_loss():
    fp32_model, _ = replica()
    fp32_loss = fp32_model.loss()
    model, params = replica()
    theta = params.snapshot()
    compute = ComputeCopy(model, params)
    result = mezo_step_mixed(compute, model.loss, seed=11, eps=1e-2, lr=1e-2)
    assert not result.skipped and result.projected_grad != 0.0
    assert torch.equal(params.flat, reference_after(theta, params, [11], [-1e-2 * result.projected_grad]))
    assert result.loss == pytest.approx(fp32_loss, rel=2e-2)  # bf16 forwards stay close to fp32


def test_skip_on_non_finite_loss_restores_the_copy():
    model, params = replica()
    theta = params.snapshot()
    compute = ComputeCopy(model, params)
    losses = iter([1.0, float("inf")])
    result = mezo_step_mixed(compute, lambda: next(losses), seed=1, eps=1e-3, lr=1.0)
    assert result.skipped
    assert torch.equal(params.flat, theta)
    assert torch.equal(compute.copy, theta.to(torch.bfloat16))


def test_rejects_other_dtypes():
    model, params = replica()
    with pytest.raises(ValueError):
        ComputeCopy(model, params, dtype=torch.float16)


@pytest.mark.gpu
def test_cuda_compute_copy_matches_cpu_bits():
    cpu_model, cpu_params = replica("cpu")
    cuda_model, cuda_params = replica("cuda")
    cpu_copy, cuda_copy = ComputeCopy(cpu_model, cpu_params), ComputeCopy(cuda_model, cuda_params)
    for compute in (cpu_copy, cuda_copy):
        compute.update([5, 6], [1e-3, -3e-4])
        compute.derive([8], [1e-3])
    assert torch.equal(cuda_params.flat.cpu(), cpu_params.flat)
    assert torch.equal(cuda_copy.copy.cpu(), cpu_copy.copy)


def test_cpu_path_without_triton_gives_the_same_bits(monkeypatch):
    model, params = replica()
    fused = ComputeCopy(model, params)
    fused.update([3], [2e-3])
    fused.derive([4], [1e-3])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the numba path a CPU-only client takes
    model2, params2 = replica()
    plain = ComputeCopy(model2, params2)
    plain.update([3], [2e-3])
    plain.derive([4], [1e-3])
    assert torch.equal(params.flat, params2.flat)
    assert torch.equal(fused.copy, plain.copy)


@pytest.mark.parametrize("triton", [True, False])
def test_every_write_to_theta_refreshes_the_copy(monkeypatch, triton):
    """Round deltas, checkpoint restores and snapshots all go through θ: the copy must follow."""
    from fedmezo.zo import Contribution, apply_round_delta, round_delta

    if not triton:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model, params = replica()
    compute = ComputeCopy(model, params)
    snapshot = params.snapshot()
    apply_round_delta(params, round_delta([Contribution("a", 1.0, 1e-2, [1, 2], [0.5, -0.25])]))
    assert not torch.equal(params.flat, snapshot)
    assert torch.equal(compute.copy, params.flat.to(torch.bfloat16))
    params.restore(snapshot)
    assert torch.equal(compute.copy, snapshot.to(torch.bfloat16))
