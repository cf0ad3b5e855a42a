"""One federated round of each method `fedmezo simulate` compares, on one shared replica.

All three start every client from the canonical θ_r, use the same derived seed of (run, round, client,
step) to pick each local step's batch, and finish with the server's θ_{r+1}:

- `fedmezo`: what the daemons and the server run: `train_task` (τ MeZO steps, then back to θ_r bit for
  bit), `close_round` (the server's aggregation) and the fused `Replica.apply` of the seed-scalar delta.
- `fedmezo-full`: the same MeZO steps, but each local model is kept and the server averages the full
  tensors (float64 sum, rounded once): FedMeZO's reference implementation.
- `fedavg`: τ local backprop steps (SGD or AdamW, fresh state each round) on the same batches and
  loss, full tensors averaged.

Clients run one after the other; a round's federated wall-clock is the slowest client plus the server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from fedmezo.data import ClientDataset
from fedmezo.fl import wire
from fedmezo.fl.aggregation import WEIGHT_RULES
from fedmezo.fl.bounds import Scales
from fedmezo.fl.config import RunConfig
from fedmezo.fl.lr import schedule_factor
from fedmezo.fl.records import DeltaRecord, TaskRecord, UpdateRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import ClosedRound, close_round, task_for
from fedmezo.fl.train import TrainResult, train_task
from fedmezo.memory import PeakMemory
from fedmezo.sim.config import SimOptions
from fedmezo.sim.wire import full_state_round_bytes, seed_scalar_round_bytes
from fedmezo.v1 import federation_pb2 as fpb
from fedmezo.zo import Backend, Batch, TrainableParams, derive_seed
from fedmezo.zo.objective import response_cross_entropy
from fedmezo.zo.weights import Weights

if TYPE_CHECKING:
    from fedmezo.sim.ray_pool import TrainedClient

__all__ = [
    "METHOD_CLASSES",
    "ClientRound",
    "FedAvgBackprop",
    "FullStateFedMeZO",
    "RoundOutcome",
    "SeedScalarFedMeZO",
    "finite_mean",
]


@dataclass(frozen=True)
class ClientRound:
    client_id: str
    seconds: float  # local training wall time
    mean_loss: float  # mean training loss over the local steps (MeZO: (L+ + L-)/2)
    peak_memory_bytes: int
    bytes_up: int
    bytes_down: int
    lr: float
    forward_passes: int = 0  # the budget unit: a backward counts as two forwards


@dataclass(frozen=True)
class RoundOutcome:
    clients: tuple[ClientRound, ...]  # ascending client id
    server_seconds: float  # aggregation + update of the canonical model
    stats: tuple[tuple[str, float, float], ...]  # (client, mean loss, model diff): what lr strategies read
    fingerprint: bytes  # of θ_{r+1}: replicas of every method can be compared bit for bit
    bounded: tuple[str, ...] = ()  # clients the poisoning bounds scaled or ceiled (honest runs: none)
    rejected: tuple[str, ...] = ()  # clients the outlier rule rejected


class World(Protocol):
    """What a method needs from the simulation: the run, the shared replica and the clients' data."""

    config: RunConfig
    options: SimOptions
    replica: Replica
    datasets: Mapping[str, ClientDataset]
    backend: Backend | None
    scales: Scales  # the run's scalar scales: close_round's poisoning bounds read them
    loss_of: Callable[[Batch], float] | None  # on CUDA: the clients' CUDA-graph loss (fedmezo.zo.graphs)


def _submit(
    client_id: str, result: TrainResult, num_examples: int
) -> tuple[UpdateRecord, fpb.SubmitUpdateRequest]:
    """The upload as the server stores it (its scalars are fp32 already), and the message that carries it."""
    update = result.to_update(num_examples)
    return update.to_record(client_id, received_at=0.0), wire.update_to_pb(client_id, update)


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (NaN when none): skipped steps and missing signals do not count."""
    finite = [v for v in values if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


BACKPROP_FORWARDS_PER_STEP = 3  # one forward plus a backward, counted as two forwards

LocalModelHook = Callable[[str, Weights], None]


def _train_mezo(
    world: World, tasks: Mapping[str, TaskRecord], on_trained: LocalModelHook | None = None
) -> tuple[list[UpdateRecord], dict[str, fpb.SubmitUpdateRequest], dict[str, float]]:
    """Every selected client's τ MeZO steps from θ_r; the replica is back at θ_r afterwards.
    Returns the stored updates, the requests that carried them and each client's training seconds."""
    updates, requests, seconds = [], {}, {}
    for client_id, task in sorted(tasks.items()):
        dataset = world.datasets[client_id]
        hook: Callable[[Weights], None] | None = None
        if on_trained is not None:
            hook = lambda p, c=client_id: on_trained(c, p)  # noqa: E731
        start = time.perf_counter()
        result = train_task(
            world.replica.loaded_model(),
            world.replica.params,
            dataset,
            task_for(world.config, task),
            client_id,
            backend=world.backend,
            on_trained=hook,
            progress=False,
            loss_of=world.loss_of,
        )
        seconds[client_id] = time.perf_counter() - start
        stored, requests[client_id] = _submit(client_id, result, dataset.num_examples)
        updates.append(stored)
    return updates, requests, seconds


def _collect(
    world: World, trained: Iterable[TrainedClient]
) -> tuple[list[UpdateRecord], dict[str, fpb.SubmitUpdateRequest], dict[str, float]]:
    """What `_train_mezo` returns, from results trained on Ray actors."""
    updates, requests, seconds = [], {}, {}
    for t in trained:
        examples = world.datasets[t.client_id].num_examples
        stored, requests[t.client_id] = _submit(t.client_id, t.result, examples)
        updates.append(stored)
        seconds[t.client_id] = t.seconds
    return updates, requests, seconds


class SeedScalarFedMeZO:
    """fedmezo itself: τ scalars up, participants + coefficients down, the fused seed-scalar apply."""

    name = "fedmezo"

    def run_round(self, world: World, round_id: int, tasks: Mapping[str, TaskRecord]) -> RoundOutcome:
        pool = getattr(world, "pool", None)
        if pool is not None:  # the clients on Ray actors: the same results, trained elsewhere
            updates, requests, seconds = _collect(world, pool.train(round_id, tasks))
        else:
            updates, requests, seconds = _train_mezo(world, tasks)
        start = time.perf_counter()
        closed = close_round(world.config, round_id, updates, tasks, world.scales)
        world.scales.add(closed.scale)
        agg = closed.aggregate
        world.replica.apply(agg.delta)
        fingerprint = world.replica.fingerprint()  # the server reports it with every delta
        server_seconds = time.perf_counter() - start
        if pool is not None:
            pool.apply(round_id, agg.delta, fingerprint)
        delta = DeltaRecord(round_id, agg.participants, agg.delta.coefficients, b"", fingerprint)
        clients = []
        for u in updates:
            up, down = seed_scalar_round_bytes(
                world.config, tasks[u.client_id], requests[u.client_id], delta, rounds_completed=round_id - 1
            )
            clients.append(
                ClientRound(
                    u.client_id, seconds[u.client_id], finite_mean(u.losses), u.peak_memory_bytes, up, down,
                    tasks[u.client_id].lr, u.forward_passes,
                )
            )  # fmt: skip
        stats = closed.history_stats(updates)
        rejected = tuple(sorted(c for c in tasks if c not in closed.accepted))
        return RoundOutcome(tuple(clients), server_seconds, stats, fingerprint, _bounded(closed), rejected)


def _bounded(closed: ClosedRound) -> tuple[str, ...]:
    bounded = closed.aggregate.bounded
    return tuple(sorted(set(bounded.scaled) | set(bounded.ceiled)))


class _FullStateAverage:
    """Σ_i ω_i θ_i / Σ_i ω_i in float64, rounded once to θ's format, fp32 or bf16 (to nearest): the most
    exact full-tensor FedAvg."""

    def __init__(self, params: Weights) -> None:
        self._sum = torch.zeros(params.flat.numel(), dtype=torch.float64, device=params.device)
        self._weight = 0.0

    def add(self, params: Weights, weight: float) -> None:
        self._sum.add_(params.flat.detach().double(), alpha=weight)
        self._weight += weight

    def write_into(self, params: Weights) -> None:
        params.flat.copy_((self._sum / self._weight).to(params.flat.dtype))
        if isinstance(params, TrainableParams):
            params.refresh_compute()


def _weights(world: World, tasks: Mapping[str, TaskRecord]) -> dict[str, float]:
    """The server's weighting rule (by example count or equal) for each selected client."""
    rule = WEIGHT_RULES[world.config.aggregation]
    return {c: rule(world.datasets[c].num_examples) for c in tasks}


def _full_state_clients(
    world: World, tasks: Mapping[str, TaskRecord], seconds: Mapping[str, float], losses: Mapping[str, float],
    peaks: Mapping[str, int], forwards: Mapping[str, int],
) -> tuple[ClientRound, ...]:  # fmt: skip
    up, down = full_state_round_bytes(world.replica.trainable_params)
    return tuple(
        ClientRound(c, seconds[c], losses[c], peaks[c], up, down, tasks[c].lr, forwards[c])
        for c in sorted(tasks)
    )


class FullStateFedMeZO:
    """FedMeZO as its reference code runs it: the same MeZO steps, local models averaged as tensors."""

    name = "fedmezo-full"

    def run_round(self, world: World, round_id: int, tasks: Mapping[str, TaskRecord]) -> RoundOutcome:
        params = world.replica.params
        weights = _weights(world, tasks)
        average = _FullStateAverage(params)
        updates, _, seconds = _train_mezo(world, tasks, on_trained=lambda c, p: average.add(p, weights[c]))
        start = time.perf_counter()
        average.write_into(params)
        world.replica.version += 1
        server_seconds = time.perf_counter() - start
        # the personalized-lr signals come from the same scalars the seed-scalar server would see
        closed = close_round(world.config, round_id, updates, tasks, world.scales)
        world.scales.add(closed.scale)
        losses = {u.client_id: finite_mean(u.losses) for u in updates}
        peaks = {u.client_id: u.peak_memory_bytes for u in updates}
        forwards = {u.client_id: u.forward_passes for u in updates}
        clients = _full_state_clients(world, tasks, seconds, losses, peaks, forwards)
        stats = closed.history_stats(updates)
        return RoundOutcome(clients, server_seconds, stats, world.replica.fingerprint(), _bounded(closed))


class FedAvgBackprop:
    """First-order FedAvg: τ backprop steps per client on the same batches and loss, tensors averaged."""

    name = "fedavg"

    def _optimizer(
        self, world: World, trainable: list[torch.nn.Parameter], round_id: int
    ) -> torch.optim.Optimizer:
        """A fresh optimizer per client and round, at the run's scheduled rate (as the ZO methods get)."""
        config = world.config
        lr = world.options.fedavg_lr * schedule_factor(config.lr_schedule, round_id, config.rounds)
        if world.options.optimizer == "sgd":
            return torch.optim.SGD(trainable, lr=lr)
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)  # no decay: MeZO has none either

    def _local_steps(self, world: World, client_id: str, task: TaskRecord) -> tuple[float, int]:
        model, config = world.replica.loaded_model(), world.config
        device = world.replica.params.device
        trainable = [p for p in model.parameters() if p.requires_grad]  # tied weights come once
        optimizer = self._optimizer(world, trainable, task.round_id)
        peak = PeakMemory(device)
        peak.reset()
        losses = []
        for t in range(task.local_steps):
            seed = derive_seed(config.run_seed, task.round_id, client_id, t)
            batch = world.datasets[client_id].batch_for_step(seed, config.batch_size).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = response_cross_entropy(logits, batch.labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        del optimizer
        return finite_mean(tuple(losses)), peak.peak_bytes()

    def run_round(self, world: World, round_id: int, tasks: Mapping[str, TaskRecord]) -> RoundOutcome:
        params = world.replica.params
        weights = _weights(world, tasks)
        average = _FullStateAverage(params)
        snapshot = params.snapshot()
        seconds, losses, peaks = {}, {}, {}
        model = world.replica.loaded_model()
        was_training = model.training
        model.eval()  # same mode as MeZO's losses (dropout off); autograd still runs
        try:
            for client_id, task in sorted(tasks.items()):
                start = time.perf_counter()
                losses[client_id], peaks[client_id] = self._local_steps(world, client_id, task)
                seconds[client_id] = time.perf_counter() - start
                average.add(params, weights[client_id])
                params.restore(snapshot)
        finally:
            params.restore(snapshot)
            model.train(was_training)
        start = time.perf_counter()
        average.write_into(params)
        world.replica.version += 1
        server_seconds = time.perf_counter() - start
        forwards = {c: BACKPROP_FORWARDS_PER_STEP * t.local_steps for c, t in tasks.items()}
        clients = _full_state_clients(world, tasks, seconds, losses, peaks, forwards)
        stats = tuple((c.client_id, c.mean_loss, math.nan) for c in clients)
        return RoundOutcome(clients, server_seconds, stats, world.replica.fingerprint())


METHOD_CLASSES: dict[str, type[SeedScalarFedMeZO] | type[FullStateFedMeZO] | type[FedAvgBackprop]] = {
    SeedScalarFedMeZO.name: SeedScalarFedMeZO,
    FullStateFedMeZO.name: FullStateFedMeZO,
    FedAvgBackprop.name: FedAvgBackprop,
}
