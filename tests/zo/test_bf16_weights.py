"""bf16 canonical weights (§7.4): one flat bf16 buffer, stochastic-rounding updates bit for bit the
reference on every backend, a fingerprint of the raw bits, and a manifest that says so."""

from __future__ import annotations

import pytest
import torch

from fedmezo.models import build_random_model, tiny_random_config
from fedmezo.zo import TrainableParams
from fedmezo.zo.bf16_weights import BF16_SR, Bf16Params, bf16_kernels
from fedmezo.zo.rounding import sr_apply_bf16
from fedmezo.zo.triton_kernel import triton_available
from fedmezo.zo.weights import warm_up_weights

PAIRS = [(12345, 3e-4), (2**64 - 1, -1e-3), (7, 2e-6)]


def bf16_replica(kernels: str | None = None) -> tuple[torch.nn.Module, Bf16Params]:
    model = build_random_model(tiny_random_config())
    return model, Bf16Params.from_model(model, bf16_kernels("cpu", kernels))


def small_replica(kernels: str) -> Bf16Params:
    """Edge sizes (partial Philox and rounding blocks) that the Triton interpreter runs in seconds."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.Linear(65, 3))
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    return Bf16Params.from_model(model, bf16_kernels("cpu", kernels))


def test_the_model_reads_the_flat_bf16_buffer() -> None:
    model, params = bf16_replica()
    assert params.flat.dtype == torch.bfloat16 and params.flat.numel() % 2 == 0
    assert params.numel == sum(p.numel() for p in model.parameters())  # tied weights once
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    first_name, first = next(params.tensors())
    params.flat[0] = 0.5
    assert model.get_parameter(first_name).reshape(-1)[0].item() == 0.5 == first.reshape(-1)[0].item()
    assert params.names == tuple(sorted(params.names))


def test_an_odd_count_is_padded_with_a_zero_half_word() -> None:
    model = torch.nn.Linear(3, 1, bias=False)  # 3 weights
    params = Bf16Params.from_model(model)
    assert params.flat.numel() == 4 and params.flat[3].item() == 0.0
    with pytest.raises(ValueError, match="padded to even"):
        Bf16Params(torch.zeros(3, dtype=torch.bfloat16), params.names, params.shapes)


def test_the_manifest_names_the_weight_format() -> None:
    _, params = bf16_replica()
    fp32 = TrainableParams.from_model(build_random_model(tiny_random_config())).manifest()
    manifest = params.manifest()
    assert manifest.names == fp32.names and manifest.shapes == fp32.shapes
    assert f'"weights":"{BF16_SR}"' in manifest.to_json() and '"weights"' not in fp32.to_json()
    assert manifest.sha256() != fp32.sha256()  # a replica with the other format is refused at join


@pytest.mark.parametrize("kernels", ["reference", "numba", "triton"])
def test_apply_is_the_reference_per_tensor(kernels: str) -> None:
    if kernels == "triton" and not triton_available("cpu"):
        pytest.skip("Triton does not run on CPU tensors here (TRITON_INTERPRET unset)")
    params = small_replica(kernels)
    before = dict((name, t.clone()) for name, t in params.tensors())
    params.apply([s for s, _ in PAIRS], [c for _, c in PAIRS])
    for tensor_id, (name, tensor) in enumerate(params.tensors()):
        expected = sr_apply_bf16(before[name], PAIRS, tensor_id)
        assert torch.equal(tensor.view(torch.int16), expected.view(torch.int16)), name
    assert params.flat[params.numel :].eq(0).all()  # the padding never moves


def test_fingerprint_covers_every_bit_and_survives_snapshot_restore() -> None:
    _, params = bf16_replica()
    start = params.fingerprint()
    snapshot = params.snapshot()
    assert bf16_replica()[1].fingerprint() == start  # a second replica agrees
    params.flat[params.numel - 1] = (
        torch.tensor(-0.0, dtype=torch.bfloat16)
        if params.flat[params.numel - 1].item() == 0
        else -params.flat[params.numel - 1]
    )
    assert params.fingerprint() != start
    params.restore(snapshot)
    assert params.fingerprint() == start
    with pytest.raises(ValueError, match="snapshot"):
        params.restore(snapshot.float())


def test_bad_pairs_leave_theta_untouched() -> None:
    _, params = bf16_replica()
    before = params.snapshot()
    with pytest.raises(ValueError):
        params.apply([1, 2], [1e-3])
    with pytest.raises(ValueError):
        params.apply([-1], [1e-3])
    assert torch.equal(params.flat.view(torch.int16), before.view(torch.int16))


def test_warm_up_runs_both_kernels_and_leaves_theta_alone() -> None:
    calls: list[str] = []
    numba = bf16_kernels("cpu", "numba")
    seen = bf16_kernels("cpu", "numba")
    seen.sr_apply = lambda w, pairs, t: (calls.append("sr_apply"), numba.sr_apply(w, pairs, t))[1]
    seen.perturbed = lambda w, s, v, t: (calls.append("perturbed"), numba.perturbed(w, s, v, t))[1]
    model = build_random_model(tiny_random_config())
    params = Bf16Params.from_model(model, seen)
    before = params.fingerprint()
    warm_up_weights(params)
    assert calls == ["sr_apply", "perturbed"] and params.fingerprint() == before
