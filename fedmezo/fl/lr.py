"""Personalized learning rates (design §4, FedMeZO's client-wise strategies), one function each.

    η_i = η_0 + δ · (x_i − mean_j x_j) / max_j |x_j − mean_j x_j|      (η_0 when all x_j are equal)

over the selected clients that have the signal x; a client without one (it never finished a round)
gets η_0. Every η_i is rounded to fp32 here, because the client trains with the fp32 value it
receives and the server must aggregate with exactly that value.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COSINE_FLOOR",
    "SCHEDULES",
    "STRATEGIES",
    "LrContext",
    "RoundStat",
    "personalize",
    "personalized_lrs",
    "schedule_factor",
]

FIVE_ROUNDS = 5
_RANDOM_DOMAIN = b"fedmezo/lr/v1"


@dataclass(frozen=True)
class RoundStat:
    """A client's accepted update in one past round, as the strategies see it."""

    round_id: int
    mean_loss: float
    model_diff: float


@dataclass(frozen=True)
class LrContext:
    round_id: int
    run_seed: int
    lr: float  # η_0
    spread: float  # δ
    selected: tuple[str, ...]
    history: Mapping[str, Sequence[RoundStat]]  # ascending round id; clients may skip rounds


def _fp32(x: float) -> float:
    return float(np.float32(x))


def personalize(ctx: LrContext, signals: Mapping[str, float | None]) -> dict[str, float]:
    """Apply the design §4 formula to per-client signals (None or NaN = no signal → η_0)."""
    known = {c: x for c, x in signals.items() if x is not None and math.isfinite(x)}
    mean = math.fsum(known.values()) / len(known) if known else 0.0
    spread_max = max((abs(x - mean) for x in known.values()), default=0.0)
    out = {}
    for client in ctx.selected:
        x = known.get(client)
        if x is None or spread_max == 0.0:
            out[client] = _fp32(ctx.lr)
        else:
            out[client] = _fp32(ctx.lr + ctx.spread * (x - mean) / spread_max)
    return out


def _last(stats: Sequence[RoundStat], n: int, attr: str) -> float | None:
    values = [getattr(s, attr) for s in stats[-n:] if math.isfinite(getattr(s, attr))]
    return math.fsum(values) / len(values) if values else None


def frozen(ctx: LrContext) -> dict[str, float]:
    return {c: _fp32(ctx.lr) for c in ctx.selected}


def random_uniform(ctx: LrContext) -> dict[str, float]:
    """Uniform in η_0 ± δ, drawn from a hash of (run seed, round, client): the same after a restart."""
    out = {}
    for client in ctx.selected:
        digest = hashlib.blake2b(digest_size=8, person=_RANDOM_DOMAIN)
        digest.update(struct.pack("<QQ", ctx.run_seed, ctx.round_id) + client.encode())
        u = int.from_bytes(digest.digest(), "little") / 2.0**64  # [0, 1)
        out[client] = _fp32(ctx.lr + ctx.spread * (2.0 * u - 1.0))
    return out


def round_wise(ctx: LrContext) -> dict[str, float]:
    return personalize(ctx, {c: _last(ctx.history.get(c, ()), 1, "mean_loss") for c in ctx.selected})


def five_round(ctx: LrContext) -> dict[str, float]:
    return personalize(
        ctx, {c: _last(ctx.history.get(c, ()), FIVE_ROUNDS, "mean_loss") for c in ctx.selected}
    )


def model_diff(ctx: LrContext) -> dict[str, float]:
    return personalize(ctx, {c: _last(ctx.history.get(c, ()), 1, "model_diff") for c in ctx.selected})


STRATEGIES: dict[str, Callable[[LrContext], dict[str, float]]] = {
    "frozen": frozen,
    "random": random_uniform,
    "round-wise": round_wise,
    "five-round": five_round,
    "model-diff": model_diff,
}


SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.1  # cosine ends at this fraction of η_0: the last round still learns


def schedule_factor(schedule: str, round_id: int, rounds: int) -> float:
    """η_0's multiplier in round r of R (rounds count from 1).

    constant: 1. cosine: f + (1 − f)·(1 + cos(π·(r − 1)/(R − 1)))/2 with f = COSINE_FLOOR, so round 1
    trains at η_0 and round R at f·η_0; rounds past R stay at f. A constant rate lets ZO noise undo what a
    long run learned (RESULTS.md, issue #13); decay keeps it. Only the server evaluates this: clients
    train with the fp32 η_i their task carries, and replicas apply recorded coefficients.
    """
    if schedule == "constant" or rounds <= 1:
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; one of {SCHEDULES}")
    t = min(max(round_id - 1, 0), rounds - 1) / (rounds - 1)
    return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))


def personalized_lrs(strategy: str, ctx: LrContext) -> dict[str, float]:
    """η_i for every selected client under the named strategy."""
    return STRATEGIES[strategy](ctx)
