"""Design §3: the seed-scalar round equals FedAvg of the clients' full local models, and every replica
ends a round bit-identical whatever it did locally (issue #2, correctness tests a and b)."""

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

RUN_SEED = 2024
ROUND = 3
LOCAL_STEPS = 5
EPS = 1e-3
CLIENTS = {"client-a": (1e-3, 120.0), "client-b": (2e-3, 40.0), "client-c": (5e-4, 90.0)}  # lr, examples


def client_batch(client_id: str, step: int, vocab: int) -> Batch:
    gen = torch.Generator().manual_seed(hash((client_id, step)) % 2**31)
    ids = torch.randint(0, vocab, (2, 24), generator=gen)
    return Batch(ids, torch.ones_like(ids), ids.clone())


def replica() -> tuple[torch.nn.Module, TrainableParams]:
    model = load_model("tiny-random").model
    return model, TrainableParams.from_model(model)


def train_locally(model: torch.nn.Module, params: TrainableParams, client_id: str, lr: float) -> list[float]:
    grads = []
    for t in range(LOCAL_STEPS):
        loss_fn = make_loss_fn(model, client_batch(client_id, t, model.config.vocab_size))
        seed = derive_seed(RUN_SEED, ROUND, client_id, t)
        result = mezo_step(params, loss_fn, seed=seed, eps=EPS, lr=lr)
        assert not result.skipped
        grads.append(result.projected_grad)
    return grads


@pytest.fixture(scope="module")
def federated_round() -> dict[str, object]:
    _, server = replica()
    theta_r = server.snapshot()
    local_models: dict[str, torch.Tensor] = {}
    contributions = []
    client_replicas = {}
    for client_id, (lr, examples) in CLIENTS.items():
        model, params = replica()
        snapshot = params.snapshot()
        grads = train_locally(model, params, client_id, lr)
        local_models[client_id] = params.flat.clone()
        seeds = [derive_seed(RUN_SEED, ROUND, client_id, t) for t in range(LOCAL_STEPS)]
        contributions.append(Contribution(client_id, examples, lr, seeds, grads))
        params.restore(snapshot)
        client_replicas[client_id] = params
    delta = round_delta(contributions)
    apply_round_delta(server, delta)
    for params in client_replicas.values():
        apply_round_delta(params, delta)
    return {
        "theta_r": theta_r,
        "server": server,
        "local_models": local_models,
        "clients": client_replicas,
        "delta": delta,
    }


def test_seed_scalar_round_equals_fedavg_of_full_local_models(federated_round):
    theta_r = federated_round["theta_r"].double()
    total = sum(examples for _, examples in CLIENTS.values())
    fedavg = sum(
        (examples / total) * federated_round["local_models"][cid].double()
        for cid, (_, examples) in CLIENTS.items()
    )
    seed_scalar = federated_round["server"].flat.double()
    update_norm = float((fedavg - theta_r).norm())
    assert update_norm > 1e-4 * float(theta_r.norm())  # the round really moved the model
    error = float((seed_scalar - fedavg).norm())
    assert error <= 1e-6 * float(fedavg.norm())
    assert error <= 1e-2 * update_norm  # and the agreement is far tighter than the update itself
    assert federated_round["delta"].num_seeds == 3 * LOCAL_STEPS


def test_replicas_that_trained_differently_end_bit_identical(federated_round):
    server_fingerprint = federated_round["server"].fingerprint()
    for params in federated_round["clients"].values():
        assert params.fingerprint() == server_fingerprint
