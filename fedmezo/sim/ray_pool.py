"""`fedmezo simulate --ray`: the clients' local training on Ray actors, the server in the driver.

Flower's answer to "more clients than one process can hold" is a pool of Ray actors that take turns
being the clients; this is the same idea on fedmezo's terms. Each actor holds one model replica at the
canonical θ_r and trains whichever selected clients the driver hands it, one after the other, with the
daemons' own `train_task` (which returns θ to θ_r bit for bit). Only seeds and scalars cross the object
store: tasks and deltas go down, `TrainResult`s come up. The driver keeps the simulation's replica,
aggregates with the `fl` code (`close_round`) and evaluates; every actor applies the same seed-scalar
delta and reports its fingerprint, which must equal the driver's (a replica that drifted fails the
run at once, as a daemon's resync would).

Works against a local Ray instance (`ray="local"`) or a running cluster (`"auto"`, `HOST:PORT`,
`ray://HOST:10001`). The actors need this package importable where they run (same environment).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedmezo.data import ClientDataset, Example
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError, SyncFailed
from fedmezo.fl.records import TaskRecord
from fedmezo.fl.replica import Replica
from fedmezo.fl.rounds import task_for
from fedmezo.fl.train import TrainResult, train_task
from fedmezo.sim.config import SimOptions
from fedmezo.zo import RoundDelta, get_backend

__all__ = ["RayClientPool", "TrainedClient", "Worker"]


@dataclass(frozen=True)
class TrainedClient:
    """One client's round on an actor: the result it would upload and its local training seconds."""

    client_id: str
    result: TrainResult
    seconds: float


class Worker:
    """A Ray actor's state: one replica, the data of every client (tokenized on first use)."""

    def __init__(self, config: RunConfig, options: SimOptions, examples: Mapping[str, Sequence[Example]],
                 threads: int) -> None:  # fmt: skip
        torch.set_num_threads(max(1, threads))
        self.config = config
        self.replica = Replica.for_run(config, options.device)
        self.backend = get_backend(self.replica.params.device)
        self.examples = examples
        self.datasets: dict[str, ClientDataset] = {}

    def fingerprint(self) -> bytes:
        return self.replica.fingerprint()

    def load(self, flat: torch.Tensor, version: int, fingerprint: bytes) -> bytes:
        """Start from a resumed run's θ instead of θ_0 (refused when it misses the fingerprint)."""
        self.replica.load_flat(flat.to(self.replica.params.device), version, fingerprint)
        return self.replica.fingerprint()

    def train(self, round_id: int, tasks: Sequence[tuple[str, TaskRecord]]) -> list[TrainedClient]:
        if self.replica.version != round_id - 1:
            raise SyncFailed(f"actor at model version {self.replica.version} got round {round_id}'s tasks")
        trained = []
        for client_id, task in tasks:
            dataset = self.datasets.get(client_id)
            if dataset is None:
                dataset = ClientDataset.from_examples(
                    self.replica.tokenizer, list(self.examples[client_id]), self.config.max_length
                )
                self.datasets[client_id] = dataset
            start = time.perf_counter()
            result = train_task(
                self.replica.loaded_model(), self.replica.params, dataset, task_for(self.config, task),
                client_id, backend=self.backend, progress=False,
            )  # fmt: skip
            trained.append(TrainedClient(client_id, result, time.perf_counter() - start))
        return trained

    def apply(self, round_id: int, delta: RoundDelta) -> bytes:
        self.replica.apply_round(round_id, delta)
        return self.replica.fingerprint()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ConfigError("simulate --ray needs Ray: pip install 'fedmezo[ray]'") from exc
    return ray


class RayClientPool:
    """The actors and the driver's side of their protocol (train a round's tasks, apply its delta)."""

    def __init__(self, config: RunConfig, options: SimOptions, examples: Mapping[str, Sequence[Example]],
                 fingerprint: bytes, theta: tuple[torch.Tensor, int] | None = None) -> None:  # fmt: skip
        """`theta`: the driver's (θ, version) when it resumed a stored run; the actors start from it."""
        ray = self.ray = _import_ray()
        self._started = False
        if not ray.is_initialized():
            address = None if options.ray == "local" else options.ray
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and options.ray_object_store_mb:
                kwargs["object_store_memory"] = options.ray_object_store_mb * 1024 * 1024
            ray.init(address=address, **kwargs)
            self._started = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_round = max(1, round(config.clients_per_round or options.num_clients))
        workers = options.ray_workers or max(1, min(per_round, int(cpus // options.ray_cpus_per_worker)))
        actor = ray.remote(Worker).options(
            num_cpus=options.ray_cpus_per_worker, num_gpus=options.ray_gpus_per_worker
        )
        shared = ray.put(dict(examples))  # the clients' data once into the object store, not per actor
        threads = max(1, int(options.ray_cpus_per_worker))
        self.actors = [actor.remote(config, options, shared, threads) for _ in range(workers)]
        if theta is None:
            seen = ray.get([a.fingerprint.remote() for a in self.actors])
        else:
            flat = ray.put(theta[0].detach().cpu())
            seen = ray.get([a.load.remote(flat, theta[1], fingerprint) for a in self.actors])
        self._check(seen, fingerprint, "at start")

    def _check(self, seen: Sequence[bytes], expected: bytes, when: str) -> None:
        if any(f != expected for f in seen):
            raise SyncFailed(f"a Ray actor's model differs from the driver's {when}")

    def train(self, round_id: int, tasks: Mapping[str, TaskRecord]) -> list[TrainedClient]:
        """Every selected client's τ steps, clients dealt round-robin to the actors (ascending id)."""
        shares: list[list[tuple[str, TaskRecord]]] = [[] for _ in self.actors]
        for i, client_id in enumerate(sorted(tasks)):
            shares[i % len(self.actors)].append((client_id, tasks[client_id]))
        futures = [a.train.remote(round_id, share) for a, share in zip(self.actors, shares) if share]
        trained = [t for batch in self.ray.get(futures) for t in batch]
        return sorted(trained, key=lambda t: t.client_id)

    def apply(self, round_id: int, delta: RoundDelta, fingerprint: bytes) -> None:
        """Every actor applies the round's seed-scalar delta and must land on the driver's fingerprint."""
        seen = self.ray.get([a.apply.remote(round_id, delta) for a in self.actors])
        self._check(seen, fingerprint, f"after round {round_id}")

    @property
    def workers(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self._started:
            self.ray.shutdown()
