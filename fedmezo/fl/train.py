"""Local training for one task: snapshot θ_r → τ MeZO steps → restore θ_r (design §1 steps 2 and 5).

Pure computation, no I/O besides the progress bar: the caller uploads the τ projected gradients and
later applies the server's canonical round delta to the restored θ_r. The local trajectory (which
drifts by a few ulps, design §3) never reaches the canonical replica.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from fedmezo.fl.errors import Stopped
from fedmezo.fl.records import Task, Update
from fedmezo.fl.seeds import SeedPlan
from fedmezo.memory import PeakMemory
from fedmezo.zo import Backend, Batch, causal_lm_loss
from fedmezo.zo.estimators import task_estimator
from fedmezo.zo.weights import Weights, close_perturbation, perturbation

__all__ = [
    "StepDataset",
    "TrainResult",
    "device_label",
    "train_task",
]


class StepDataset(Protocol):
    """What training needs from the data: the batch chosen by a step's seed (fedmezo.data.ClientDataset)."""

    def batch_for_step(self, seed: int, batch_size: int) -> Batch: ...


@dataclass(frozen=True)
class TrainResult:
    round_id: int
    seeds: tuple[int, ...]  # τ·P, step-major
    projected_grads: tuple[float, ...]  # fp32 per-seed scalars a, same order as the seeds
    losses: tuple[float, ...]  # (loss₊ + loss₋)/2 per step, rounded to fp32 as they travel
    step_time_s: float  # mean wall time of one step, fp32 as it travels
    peak_memory_bytes: int
    device: str
    skipped_steps: int
    forward_passes: int = 0  # the budget unit across estimators (MeZO 2P, FZOO P + 1 per step)

    def to_update(self, num_examples: int = 0) -> Update:
        """The upload of this result (`num_examples` 0: the server keeps the count given at Join)."""
        return Update(
            round_id=self.round_id,
            projected_grads=self.projected_grads,
            losses=self.losses,
            step_time_s=self.step_time_s,
            peak_memory_bytes=self.peak_memory_bytes,
            device=self.device,
            num_examples=num_examples,
            forward_passes=self.forward_passes,
        )


def device_label(device: torch.device) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`: what the operator sees for this client."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def train_task(
    model: torch.nn.Module,
    params: Weights,
    dataset: StepDataset,
    task: Task,
    client_id: str,
    *,
    backend: Backend | None = None,
    stop: threading.Event | None = None,
    on_step: Callable[[int], None] | None = None,
    on_trained: Callable[[Weights], None] | None = None,
    progress: bool = True,
    loss_of: Callable[[Batch], float] | None = None,
) -> TrainResult:
    """Run the task's τ local steps from θ_r and return to θ_r exactly, whatever happens.

    Step t's P seeds come from the task's seed plan (fedmezo.fl.seeds); the first also picks the step's
    batch, so the server (and any replica) can name every direction without it travelling. Each step is
    the task's estimator (fedmezo.zo.estimators); its P scalars travel step-major.
    A stop request abandons the task between steps (raises `Stopped`) after restoring θ_r.
    `on_trained` sees the local model after the τ steps, before the restore: the full-state FedMeZO
    baseline of `fedmezo simulate` averages those local models (daemons never need it).
    `loss_of` evaluates a batch (default: the eager `causal_lm_loss` of `model`); a GPU client passes
    its CUDA-graph loss (fedmezo.zo.graphs.BucketedLoss).
    """
    device = params.device
    evaluate = loss_of if loss_of is not None else (lambda b: causal_lm_loss(model, b))
    snapshot = params.snapshot()  # θ_r, host fp32 copy
    plan = SeedPlan(task.run_seed, task.seed_scheme, task.perturbations)
    step_seeds = [plan.step_seeds(task.round_id, client_id, t) for t in range(task.local_steps)]
    move = perturbation(model, params, backend)  # in place, a compute copy, or bf16-sr's module hooks
    estimator = task_estimator(task.estimator)  # fresh per task: no state crosses a round
    forwards = 0
    losses: list[float] = []
    skipped = 0
    peak = PeakMemory(device)  # MeZO's training peak: what the dashboard puts next to inference
    peak.reset()
    start = time.perf_counter()
    try:
        bar = tqdm(
            step_seeds,
            desc=f"round {task.round_id}",
            unit="step",
            disable=None if progress else True,  # None: only on a terminal, never into log files
            leave=False,
            file=sys.stderr,
        )
        for t, seeds in enumerate(bar):
            if stop is not None and stop.is_set():
                raise Stopped(f"abandoned round {task.round_id} at step {t}")
            batch = dataset.batch_for_step(seeds[0], task.batch_size).to(device)
            result = estimator.step(
                move, partial(evaluate, batch), seeds=seeds, eps=task.eps, lr=task.lr, clip=task.clip
            )
            forwards += result.forwards
            losses.append(float(np.float32(result.loss)))  # fp32, as it travels and is stored
            skipped += result.skipped
            bar.set_postfix(loss=f"{result.loss:.4f}")
            if on_step is not None:
                on_step(t + 1)
        elapsed = time.perf_counter() - start
        if on_trained is not None:
            on_trained(params)
    finally:
        close_perturbation(move)
        params.restore(snapshot)  # back to θ_r bit for bit: drift never reaches the canonical state
    return TrainResult(
        round_id=task.round_id,
        seeds=tuple(s for seeds in step_seeds for s in seeds),
        projected_grads=estimator.upload(),
        losses=tuple(losses),
        step_time_s=float(np.float32(elapsed / max(task.local_steps, 1))),
        peak_memory_bytes=peak.peak_bytes(),
        device=device_label(device),
        skipped_steps=skipped,
        forward_passes=forwards,
    )
