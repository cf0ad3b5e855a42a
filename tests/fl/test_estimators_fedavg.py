"""For every estimator and seed scheme: a round through the protocol code (train_task, close_round, the
wire form of the delta, ReplicaSync) equals FedAvg of the clients' full local models, every replica
ends bit-identical, and a shared-seed delta has τ·P coefficients whatever the number of clients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmezo.client.sync import ReplicaSync
from fedmezo.data import ClientDataset, generate_demo_dataset
from fedmezo.fl.config import RunConfig
from fedmezo.fl.records import DeltaRecord, TaskRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import close_round, task_for
from fedmezo.fl.train import train_task
from fedmezo.fl.wire import delta_from_pb, delta_to_pb
from fedmezo.zo.estimators import forwards_per_step

ROUND = 2
STEPS = 3
CLIENTS = {"client-a": 1e-3, "client-b": 2e-3, "client-c": 5e-4}  # personalized lr


@pytest.fixture(scope="module")
def base() -> tuple[Replica, torch.Tensor, dict[str, ClientDataset]]:
    replica = Replica.load("tiny-random")
    train, _ = generate_demo_dataset(seed=0)
    datasets = {
        c: ClientDataset.from_examples(replica.tokenizer, train[i * 20 : i * 20 + 20 + 10 * i], 48)
        for i, c in enumerate(CLIENTS)
    }
    return replica, replica.params.snapshot(), datasets


CASES = [
    ("mezo", 3, "per-client"),
    ("mezo", 2, "shared"),
    ("fzoo", 4, "per-client"),
    ("fzoo", 4, "shared"),
    ("adamezo", 1, "per-client"),
    ("adamezo", 2, "shared"),
]


@pytest.mark.parametrize(("estimator", "perturbations", "scheme"), CASES)
def test_round_equals_fedavg_and_replicas_agree(
    base: tuple[Replica, torch.Tensor, dict[str, ClientDataset]],
    estimator: str,
    perturbations: int,
    scheme: str,
) -> None:
    replica, theta_r, datasets = base
    config = RunConfig(
        local_steps=STEPS, batch_size=2, run_seed=77, estimator=estimator, perturbations=perturbations,
        seed_scheme=scheme, lr=1e-3, lr_spread=0.0,
    ).validate()  # fmt: skip
    replica.params.restore(theta_r)
    replica.version = ROUND - 1
    tasks = {c: TaskRecord(ROUND, c, lr, STEPS) for c, lr in CLIENTS.items()}
    local: dict[str, torch.Tensor] = {}
    updates = []
    for client_id, record in tasks.items():
        result = train_task(
            replica.loaded_model(), replica.params, datasets[client_id], task_for(config, record), client_id,
            on_trained=lambda p, c=client_id: local.__setitem__(c, p.flat.detach().clone()), progress=False,
        )  # fmt: skip
        assert torch.equal(replica.params.flat, theta_r)  # back to θ_r bit for bit
        assert len(result.projected_grads) == STEPS * perturbations
        assert result.forward_passes == STEPS * forwards_per_step(estimator, perturbations)
        assert result.skipped_steps == 0
        updates.append(
            result.to_update(datasets[client_id].num_examples).to_record(client_id, received_at=0.0)
        )
    closed = close_round(config, ROUND, updates, tasks)
    delta = closed.aggregate.delta
    expected_seeds = STEPS * perturbations * (1 if scheme == "shared" else len(CLIENTS))
    assert delta.num_seeds == expected_seeds

    # every client rebuilds the delta from its wire form (shared: no participant list at all)
    record = DeltaRecord(ROUND, closed.aggregate.participants, delta.coefficients, b"", b"")
    message = delta_to_pb(record, seed_scheme=scheme)
    assert (len(message.participants) == 0) == (scheme == "shared")
    clients = {}
    for client_id in CLIENTS:
        follower = Replica(
            replica.params.__class__(theta_r.clone(), replica.params.names, replica.params.shapes)
        )
        follower.version = ROUND - 1
        ReplicaSync(follower, config.seeds, STEPS).apply(delta_from_pb(message))
        clients[client_id] = follower

    replica.apply(delta)
    total = sum(float(d.num_examples) for d in datasets.values())
    fedavg = sum((datasets[c].num_examples / total) * local[c].double() for c in CLIENTS)
    seed_scalar = replica.params.flat.double()
    update_norm = float((fedavg - theta_r.double()).norm())
    assert update_norm > 1e-5 * float(theta_r.norm())  # the round really moved the model
    error = float((seed_scalar - fedavg).norm())
    assert error <= 1e-6 * float(fedavg.norm())
    assert error <= 1e-2 * update_norm
    for follower in clients.values():
        assert follower.fingerprint() == replica.fingerprint()


def test_shared_seeds_do_not_depend_on_the_client() -> None:
    plan = dataclasses.replace(RunConfig(perturbations=3, seed_scheme="shared"), run_seed=5).seeds
    assert plan.client_seeds(4, "a", 2) == plan.client_seeds(4, "b", 2)
    assert plan.round_seeds(4, [("a", 2), ("b", 2), ("c", 2)], 2) == plan.round_seeds(4, [], 2)
    assert len(plan.round_seeds(4, [], 2)) == 6
    assert plan.client_seeds(5, "a", 2) != plan.client_seeds(4, "a", 2)


def test_per_client_seeds_with_one_perturbation_are_the_original_seeds() -> None:
    from fedmezo.zo import derive_seed

    plan = RunConfig(run_seed=9, perturbations=1, seed_scheme="per-client").seeds
    assert plan.client_seeds(3, "x", 4) == [derive_seed(9, 3, "x", t) for t in range(4)]
    p3 = RunConfig(run_seed=9, perturbations=3, seed_scheme="per-client").seeds
    assert p3.step_seeds(3, "x", 1) == [derive_seed(9, 3, "x", k) for k in (3, 4, 5)]
