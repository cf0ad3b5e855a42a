"""Cross-device replicas (design §2): a CUDA client and CPU replicas end every round bit-identical.

The CUDA client's forwards differ from the CPU's in the last bits, so its scalars differ, but every
replica applies the same canonical (seed, coefficient) list with the same fp32 adds.
"""

from __future__ import annotations

import pytest
import torch

from fedmezo.models import load_model
from fedmezo.zo import (
    Batch,
    Contribution,
    TrainableParams,
    apply_round_delta,
    derive_seed,
    make_loss_fn,
    mezo_step,
    round_delta,
)

ROUNDS = 5
LOCAL_STEPS = 4


def replica(device: str) -> tuple[torch.nn.Module, TrainableParams]:
    model = load_model("tiny-random", device=device).model
    return model, TrainableParams.from_model(model)


def local_round(
    model: torch.nn.Module, params: TrainableParams, client_id: str, round_id: int
) -> Contribution:
    snapshot = params.snapshot()
    seeds, grads = [], []
    for t in range(LOCAL_STEPS):
        gen = torch.Generator().manual_seed(round_id * 100 + t)
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)
        batch = Batch(ids, torch.ones_like(ids), ids.clone()).to(params.device)
        seed = derive_seed(99, round_id, client_id, t)
        grads.append(
            mezo_step(params, make_loss_fn(model, batch), seed=seed, eps=1e-3, lr=1e-3).projected_grad
        )
        seeds.append(seed)
    params.restore(snapshot)
    return Contribution(client_id, 1.0, 1e-3, seeds, grads)


@pytest.mark.gpu
def test_cuda_and_cpu_replicas_bit_identical_over_rounds():
    _, server = replica("cpu")
    cuda_model, cuda_client = replica("cuda")
    cpu_model, cpu_client = replica("cpu")
    assert cuda_client.fingerprint() == server.fingerprint()
    for round_id in range(ROUNDS):
        updates = [
            local_round(cuda_model, cuda_client, "gpu-client", round_id),
            local_round(cpu_model, cpu_client, "cpu-client", round_id),
        ]
        delta = round_delta(updates)
        for params in (server, cuda_client, cpu_client):
            apply_round_delta(params, delta)
        assert cuda_client.fingerprint() == server.fingerprint() == cpu_client.fingerprint(), round_id
