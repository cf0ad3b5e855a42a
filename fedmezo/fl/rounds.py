"""One federated round as two plain functions: `plan_round` opens it, `close_round` turns its updates
into the delta. The server and `fedmezo simulate` both call them, so a simulation decides exactly what
a federation decides (selection, learning rates, the task each client trains, aggregation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedmezo.fl.aggregation import Aggregate, aggregate
from fedmezo.fl.bounds import LOSS_RANGE, Scales
from fedmezo.fl.errors import IncompatibleClient, InvalidUpdate
from fedmezo.fl.lr import LrContext, RoundStat, personalized_lrs, schedule_factor
from fedmezo.fl.records import JoinInfo, Task, TaskRecord, Update, UpdateOutcome, UpdateRecord
from fedmezo.fl.selection import sample_clients, sample_size
from fedmezo.zo import RNG_SPEC

if TYPE_CHECKING:
    from fedmezo.fl.config import RunConfig

__all__ = ["ClosedRound", "History", "close_round", "history_stats", "plan_round", "remember", "task_for"]

History = dict[str, list[RoundStat]]  # client id → its accepted rounds, ascending


def plan_round(
    config: RunConfig, round_id: int, online: Sequence[str], history: Mapping[str, Sequence[RoundStat]]
) -> dict[str, TaskRecord]:
    """Round r's selected clients (ascending id) and each one's task (its fp32 personalized lr, η_0 and
    the spread δ both scaled by the run's lr schedule)."""
    k = sample_size(len(online), config.clients_per_round, config.fraction)
    selected = sample_clients(online, k, config.run_seed, round_id)
    factor = schedule_factor(config.lr_schedule, round_id, config.rounds)
    ctx = LrContext(
        round_id, config.run_seed, config.lr * factor, config.lr_spread * factor, selected, history
    )
    lrs = personalized_lrs(config.lr_strategy, ctx)
    return {c: TaskRecord(round_id, c, lrs[c], config.local_steps) for c in selected}


def check_join(info: JoinInfo, manifest_sha256: bytes, config: RunConfig) -> None:
    """A client can join only with the same perturbation spec and the same trainable model."""
    if info.rng_spec != RNG_SPEC:
        raise IncompatibleClient(f"rng spec {info.rng_spec!r} differs from the server's {RNG_SPEC!r}")
    if info.manifest_sha256 != manifest_sha256:
        raise IncompatibleClient(
            f"model manifest {info.manifest_sha256.hex()[:16]} differs from the server's "
            f"{manifest_sha256.hex()[:16]} (model {config.model!r}, mode {config.mode})"
        )
    if info.num_examples < 0:
        raise InvalidUpdate("num_examples must be >= 0")


def check_update(update: Update, task: TaskRecord, perturbations: int = 1) -> None:
    """An update answers its task exactly: τ·P scalars, 0 or τ losses, finite scalars, losses that are
    cross-entropies (in LOSS_RANGE), a step time that is a duration (finite, >= 0: it is stored and
    shown)."""
    expected = task.local_steps * perturbations
    if len(update.projected_grads) != expected:
        got = len(update.projected_grads)
        raise InvalidUpdate(f"expected {expected} projected gradients, got {got}")
    if len(update.losses) not in (0, task.local_steps):
        raise InvalidUpdate(f"expected 0 or {task.local_steps} losses, got {len(update.losses)}")
    scalars = (*update.projected_grads, *update.losses, update.step_time_s)
    if not all(math.isfinite(x) for x in scalars):
        raise InvalidUpdate("non-finite scalar (NaN or inf) in the update")
    if update.step_time_s < 0:
        raise InvalidUpdate(f"step_time_s must be >= 0, got {update.step_time_s:g}")
    low, high = LOSS_RANGE
    bad = [x for x in update.losses if not low <= x <= high]
    if bad:
        raise InvalidUpdate(f"loss {bad[0]:g} is outside [{low:g}, {high:g}] (a cross-entropy)")


def _fp32(x: float) -> float:
    return float(np.float32(x))


def task_for(config: RunConfig, record: TaskRecord, deadline_s: float = 0.0) -> Task:
    """The task as the client trains it: lr, eps and clip as the fp32 values that travel."""
    return Task(
        round_id=record.round_id,
        local_steps=record.local_steps,
        lr=record.lr,
        eps=_fp32(config.eps),
        batch_size=config.batch_size,
        run_seed=config.run_seed,
        clip=_fp32(config.clip) or None,
        deadline_s=deadline_s,
        estimator=config.estimator,
        perturbations=config.perturbations,
        seed_scheme=config.seed_scheme,
    )


@dataclass(frozen=True)
class ClosedRound:
    """What a round's updates decide: the delta, each update's fate, the mean loss of the accepted."""

    aggregate: Aggregate
    mean_loss: float  # NaN when no accepted update had a finite loss

    @property
    def accepted(self) -> set[str]:
        return {o.client_id for o in self.aggregate.outcomes if o.accepted}

    @property
    def scale(self) -> float | None:
        """This round's scale for the run's `Scales` (None: it moved nothing)."""
        return self.aggregate.bounded.scale

    def history_stats(self, updates: Iterable[UpdateRecord]) -> tuple[tuple[str, float, float], ...]:
        """What `remember` adds to the history for this close's `updates` (see `history_stats`)."""
        return history_stats(updates, self.aggregate.outcomes)


def close_round(
    config: RunConfig,
    round_id: int,
    updates: Sequence[UpdateRecord],
    tasks: Mapping[str, TaskRecord],
    scales: Scales | None = None,
) -> ClosedRound:
    """Aggregate round r's updates under the run's rule, clip, outlier and poisoning-bound settings.

    `scales`: the run's scale history before round r (the caller adds `ClosedRound.scale` after a final
    close, in round order, so the server, its restarts and `fedmezo simulate` bound alike)."""
    agg = aggregate(
        round_id, updates, tasks, seeds=config.seeds, rule=config.aggregation,
        clip=config.clip, outlier_k=config.outlier_k, norm_k=config.norm_k, max_step=config.max_step,
        scales=scales,
    )  # fmt: skip
    accepted = {o.client_id for o in agg.outcomes if o.accepted}
    losses = [u.mean_loss for u in updates if u.client_id in accepted and math.isfinite(u.mean_loss)]
    return ClosedRound(agg, math.fsum(losses) / len(losses) if losses else float("nan"))


def history_stats(
    updates: Iterable[UpdateRecord], outcomes: Iterable[UpdateOutcome]
) -> tuple[tuple[str, float, float], ...]:
    """(client, mean loss, model diff) of each accepted update: what `remember` adds to the history,
    from a close's own outcomes or, after a restart, from the stored ones."""
    diffs = {o.client_id: o.model_diff for o in outcomes if o.accepted}
    return tuple((u.client_id, u.mean_loss, diffs[u.client_id]) for u in updates if u.client_id in diffs)


def remember(history: History, round_id: int, stats: Iterable[tuple[str, float, float]]) -> None:
    """Add (client, mean loss, model diff) of a closed round to the history the lr strategies read."""
    for client_id, loss, diff in stats:
        history.setdefault(client_id, []).append(RoundStat(round_id, loss, diff))
