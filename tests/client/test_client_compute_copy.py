"""A client training with bf16 forwards (compute copy of fp32 θ) stays bit-identical with the server.

The bf16 copy changes only the losses the client measures, never the canonical weights: every round's
fingerprint must still equal the fp32 CPU server replica's.
"""

from __future__ import annotations

import pytest
import torch
from helpers.client_fakes import ToyDataset, make_fake_server, toy_model

from fedmezo.client.daemon import Daemon, Outcome
from fedmezo.client.retry import RetryPolicy
from fedmezo.client.workload import Workload
from fedmezo.fl.train import device_label
from fedmezo.zo import TrainableParams, get_backend
from fedmezo.zo.mixed import ComputeCopy

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu]),
]


@pytest.mark.parametrize("device_name", DEVICES)
def test_bf16_client_matches_fp32_server_every_round(device_name: str) -> None:
    server = make_fake_server(rounds=3)  # CPU replica, numba backend, fp32
    device = torch.device(device_name)
    copies: list[ComputeCopy] = []

    def bf16_workload(_settings: object) -> Workload:
        model = toy_model().to(device)
        params = TrainableParams.from_model(model)
        copies.append(ComputeCopy(model, params))
        return Workload(
            model, params, ToyDataset(), ToyDataset.num_examples, device_label(device), get_backend(device)
        )

    daemon = Daemon(server, "me", bf16_workload, RetryPolicy(sleep=lambda _s: False), progress_bar=False)
    assert daemon.run() is Outcome.FINISHED
    assert [v for v, _ in server.fingerprints] == [0, 1, 2, 3]
    assert all(server.fingerprint_at(v) == fp for v, fp in server.fingerprints)
    params = daemon.replica.params if daemon.replica is not None else None
    assert params is not None and params.compute is copies[0]
    assert torch.equal(copies[0].copy, params.flat.to(torch.bfloat16))  # the copy followed every write
    assert all(torch.isfinite(torch.tensor(u.projected_grads)).all() for u in server.submitted)
