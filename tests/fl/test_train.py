"""Local training: τ steps move θ locally, θ_r comes back exactly, and the scalars rebuild FedAvg."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers.client_fakes import toy_workload

from fedmezo.fl.errors import Stopped
from fedmezo.fl.records import Task
from fedmezo.fl.train import train_task
from fedmezo.memory import PeakMemory
from fedmezo.zo import Contribution, apply_round_delta, derive_seed, round_delta

RUN_SEED = 99


def _task(round_id: int = 1, steps: int = 5, lr: float = 1e-2) -> Task:
    return Task(round_id=round_id, local_steps=steps, lr=lr, eps=1e-3, batch_size=2, run_seed=RUN_SEED)


def test_steps_change_theta_locally_and_restore_is_exact() -> None:
    work = toy_workload()
    before = work.params.fingerprint()
    seen: list[str] = []
    result = train_task(
        work.model,
        work.params,
        work.dataset,
        _task(),
        "a",
        on_step=lambda _t: seen.append(work.params.fingerprint()),
        progress=False,
    )
    assert len(set(seen)) == 5 and before not in seen  # every step moved θ
    assert work.params.fingerprint() == before  # θ_r restored bit for bit
    assert len(result.projected_grads) == 5 and len(result.losses) == 5
    assert result.seeds == tuple(derive_seed(RUN_SEED, 1, "a", t) for t in range(5))
    assert all(np.float32(g) == g for g in result.projected_grads)  # fp32 scalars travel
    assert result.step_time_s > 0 and result.peak_memory_bytes > 0 and result.device == "cpu"


def test_training_is_deterministic_given_the_task() -> None:
    a, b = toy_workload(), toy_workload()
    ra = train_task(a.model, a.params, a.dataset, _task(), "a", progress=False)
    rb = train_task(b.model, b.params, b.dataset, _task(), "a", progress=False)
    assert ra.projected_grads == rb.projected_grads


def test_stop_abandons_between_steps_and_restores() -> None:
    work = toy_workload()
    before = work.params.fingerprint()
    stop = threading.Event()
    with pytest.raises(Stopped):
        train_task(
            work.model,
            work.params,
            work.dataset,
            _task(steps=10),
            "a",
            stop=stop,
            on_step=lambda t: stop.set() if t == 3 else None,
            progress=False,
        )
    assert work.params.fingerprint() == before


def test_scalars_and_round_delta_reproduce_fedavg_of_local_models() -> None:
    """Two clients' τ scalars → round_delta → apply on θ_r equals the mean of their local models."""
    server = toy_workload()
    theta_r = server.params.snapshot().double()
    contributions, local_models = [], []
    task = _task(steps=4)
    for client in ("a", "b"):
        work = toy_workload()
        last: list[torch.Tensor] = []
        result = train_task(
            work.model,
            work.params,
            work.dataset,
            task,
            client,
            on_step=lambda t, w=work, keep=last: keep.append(w.params.snapshot()) if t == 4 else None,
            progress=False,
        )
        local_models.append(last[0].double())
        contributions.append(Contribution(client, 1.0, task.lr, result.seeds, result.projected_grads))
    delta = round_delta(contributions)
    apply_round_delta(server.params, delta)
    client = toy_workload()  # a client applying the server's delta lands on the server's bits
    apply_round_delta(client.params, delta)
    assert client.params.fingerprint() == server.params.fingerprint()

    fedavg = (local_models[0] + local_models[1]) / 2
    got = server.params.snapshot().double()
    moved = (fedavg - theta_r).norm()
    assert moved > 0
    assert float((got - fedavg).norm() / fedavg.norm()) <= 1e-6


def test_peak_memory_on_cpu_is_the_process_rss() -> None:
    peak = PeakMemory(torch.device("cpu"))
    peak.reset()
    assert peak.peak_bytes() > 10 * 2**20  # the interpreter, torch and the toy model are resident
