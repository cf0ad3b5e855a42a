"""Round deltas: the FedAvg of local MeZO models, expressed as (seed, coefficient) pairs (design §1–2).

Client i's local model is θ_r − η_i Σ_t g_{i,t} z(s_{i,t}), so the weighted average of the local models
is θ_r + Σ_s c_s z(s) with c_s = Σ_i ω_i·(−η_i·g_{i,t}) over every (i, t) that used seed s. The server
sums in float64 in (client id, step) order and rounds each c_s once to fp32; everyone applies the same
list in ascending seed order, so every replica ends bit-identical.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from fedmezo.zo.backend import get_backend
from fedmezo.zo.interface import Backend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.values import to_fp32

__all__ = ["Contribution", "RoundDelta", "apply_round_delta", "round_delta"]

_PAIR = struct.Struct("<Qf")  # one (seed, coefficient) pair on the wire: 12 bytes


@dataclass(frozen=True)
class Contribution:
    """One client's accepted update in a round: its weight, learning rate, seeds and scalars."""

    client_id: str
    weight: float  # unnormalised aggregation weight (example count, or 1.0 for equal weights)
    lr: float  # η_i used by the client this round
    seeds: Sequence[int]
    projected_grads: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.projected_grads):
            raise ValueError(
                f"client {self.client_id}: {len(self.seeds)} seeds, {len(self.projected_grads)} scalars"
            )
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"client {self.client_id}: weight must be positive and finite")
        if not math.isfinite(self.lr):
            raise ValueError(f"client {self.client_id}: non-finite learning rate")
        if not all(math.isfinite(g) for g in self.projected_grads):
            raise ValueError(f"client {self.client_id}: non-finite projected gradient")


@dataclass(frozen=True)
class RoundDelta:
    """The round's update: distinct seeds in ascending unsigned order, fp32-rounded coefficients."""

    seeds: tuple[int, ...]
    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.coefficients):
            raise ValueError("seeds and coefficients differ in length")
        if any(b <= a for a, b in zip(self.seeds, self.seeds[1:])):
            raise ValueError("seeds must be distinct and ascending")
        if any(not 0 <= s < 2**64 for s in self.seeds):
            raise ValueError("seeds must be unsigned 64-bit integers")
        if any(not math.isfinite(c) or to_fp32(c) != c for c in self.coefficients):
            raise ValueError("coefficients must be finite fp32 values")

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    def to_bytes(self) -> bytes:
        return b"".join(_PAIR.pack(s, c) for s, c in zip(self.seeds, self.coefficients))

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundDelta:
        if len(data) % _PAIR.size:
            raise ValueError(f"round delta bytes must be a multiple of {_PAIR.size}, got {len(data)}")
        pairs = [_PAIR.unpack_from(data, i) for i in range(0, len(data), _PAIR.size)]
        return cls(tuple(s for s, _ in pairs), tuple(float(c) for _, c in pairs))


def round_delta(contributions: Sequence[Contribution]) -> RoundDelta:
    """Aggregate the round's accepted updates into one (seed, c_s) list; weights normalised here."""
    if not contributions:
        return RoundDelta((), ())
    ids = [c.client_id for c in contributions]
    if len(set(ids)) != len(ids):
        raise ValueError("each client may contribute once per round")
    total_weight = math.fsum(c.weight for c in contributions)
    sums: dict[int, float] = {}
    for contribution in sorted(contributions, key=lambda c: c.client_id):
        omega = contribution.weight / total_weight
        for seed, g in zip(contribution.seeds, contribution.projected_grads):
            sums[seed] = sums.get(seed, 0.0) + omega * (-contribution.lr * g)  # float64
    ordered = sorted(sums)
    return RoundDelta(tuple(ordered), tuple(to_fp32(sums[s]) for s in ordered))


def apply_round_delta(params: TrainableParams, delta: RoundDelta, backend: Backend | None = None) -> None:
    """θ ← θ + Σ_s c_s·z(s): one fp32 add per seed in ascending seed order, in one call.

    The backend cuts a long delta into the seed batches its kernel runs fastest (numba on CPU: 256
    seeds per fused pass; Triton: all at once), so callers never batch; the bits do not depend on it.
    """
    if delta.num_seeds == 0:
        return
    (backend or get_backend(params.device)).apply(params, delta.seeds, delta.coefficients)
