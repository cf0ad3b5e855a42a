"""TrainableParams: one flat fp32 buffer the model reads through, manifest, snapshot, fingerprint."""

from __future__ import annotations

import pytest
import torch

from fedmezo.zo.params import TrainableParams


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.embed(ids)))


def test_model_reads_and_writes_the_flat_buffer():
    torch.manual_seed(0)
    model = Tied()
    ids = torch.tensor([1, 2, 3])
    before = model(ids).detach().clone()
    params = TrainableParams.from_model(model)
    assert torch.equal(model(ids), before)  # rebinding changes nothing
    params.flat.add_(0.5)
    assert not torch.equal(model(ids), before)
    assert model.embed.weight.data_ptr() == model.head.weight.data_ptr()


def test_manifest_sorted_unique_and_hash_sensitive():
    params = TrainableParams.from_model(Tied())
    assert params.names == ("embed.weight", "mid.bias", "mid.weight")  # sorted, tied weight once
    assert params.numel == 40 + 4 + 16
    assert params.manifest().numel == params.numel
    other = Tied()
    other.mid = torch.nn.Linear(4, 5)
    other.head = torch.nn.Linear(5, 10, bias=False)
    assert TrainableParams.from_model(other).manifest().sha256() != params.manifest().sha256()
    assert TrainableParams.from_model(Tied()).manifest().sha256() == params.manifest().sha256()


def test_frozen_parameters_are_excluded():
    model = Tied()
    model.mid.bias.requires_grad_(False)
    assert "mid.bias" not in TrainableParams.from_model(model).names


def test_snapshot_restore_is_exact_and_fingerprint_sees_one_bit():
    params = TrainableParams.from_model(Tied())
    snap = params.snapshot()
    fingerprint = params.fingerprint()
    params.flat.view(torch.int32)[7] ^= 1  # flip the lowest mantissa bit of one weight
    assert params.fingerprint() != fingerprint
    params.restore(snap)
    assert params.fingerprint() == fingerprint
    assert snap.data_ptr() != params.flat.data_ptr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_snapshot_is_pinned_host_memory_and_restores_exactly():
    params = TrainableParams.from_model(Tied().cuda())
    fingerprint = params.fingerprint()
    snap = params.snapshot()
    assert snap.device.type == "cpu" and snap.is_pinned()
    params.flat.add_(1.0)
    again = params.snapshot()  # a second snapshot is a separate buffer: the first stays valid
    assert again.data_ptr() != snap.data_ptr() and not torch.equal(again, snap)
    params.restore(snap)
    assert params.fingerprint() == fingerprint


def test_rejects_non_fp32_and_empty():
    with pytest.raises(ValueError, match="fp32"):
        TrainableParams.from_model(Tied().to(torch.float16))
    frozen = Tied().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        TrainableParams.from_model(frozen)
    params = TrainableParams.from_model(Tied())
    with pytest.raises(ValueError):
        params.restore(torch.zeros(3))
