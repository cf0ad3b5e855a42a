"""Poisoning-safe bounds on what one client's scalars can do to the model in one round.

A selected client's scalars a move every coordinate of θ by −ω·η·a per seed, so a client that sends
3.4e38 (malice, or an fp16 overflow) destroys the model unless something bounds it. Two bounds are on
by default (docs/protocol.md §11.2):

1. **Norm bound**, relative to the run's own statistics: a client's scalar RMS r_i (its contribution's
   norm ÷ sqrt(τ·P)) may be at most `norm_k` × R, where R is the run's reference scale (`Scales`); a
   client above it has all its scalars scaled down by the same factor (its direction kept, its length
   bounded, as in norm clipping of DP-FedAvg). Honest RMS spread between non-IID clients is a few × (6.5×
   measured on the demo data), so k = 10 leaves honest rounds untouched.
2. **Step ceiling**, absolute: |η_i·a| ≤ `max_step` for every scalar (the per-coordinate move one seed
   can cause), so θ stays finite and bounded even before the run has a reference scale.

Together, per round and per coordinate of θ: |Δθ_j| ≤ τ·P·min(max_step, η·norm_k·R) (Σ ω_i = 1 and
‖a_i‖₁ ≤ τ·P·r_i). Rounding: the bounded scalars are float64 and enter the float64 coefficient sums of
§11.3 unchanged; only the coefficients are rounded to fp32, as without bounds.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["LOSS_RANGE", "SCALE_WINDOW", "Bounded", "Scales", "bound_clients", "round_scale", "scalar_rms"]

SCALE_WINDOW = 5  # rounds whose scales make the reference: a minority of poisoned rounds cannot move it
# Uploaded training losses are cross-entropies: never negative, and far below 1e6 even for a diverged
# model (46,634 nats is the worst this project has seen). Outside it an update is refused, not bounded.
LOSS_RANGE = (0.0, 1e6)


def scalar_rms(grads: Sequence[float]) -> float:
    """sqrt(mean a²): a client's contribution norm per scalar (0 for no scalars)."""
    return math.sqrt(math.fsum(g * g for g in grads) / len(grads)) if grads else 0.0


def _lower_median(values: Iterable[float]) -> float | None:
    ordered = [v for v in values if v > 0 and math.isfinite(v)]
    return statistics.median_low(ordered) if ordered else None


def round_scale(rms_by_client: Mapping[str, float]) -> float | None:
    """A closed round's scale: the lower median of its accepted clients' (bounded) RMS; None when
    no client moved anything (every step skipped, an aborted round)."""
    return _lower_median(rms_by_client.values())


@dataclass
class Scales:
    """The scales of the run's last `SCALE_WINDOW` closed rounds that had one, oldest first.

    The server keeps one (rebuilt in round order at a restart), `fedmezo simulate` keeps one; both feed
    it the same closed rounds, so both bound exactly the same way.
    """

    window: deque[float] = field(default_factory=lambda: deque(maxlen=SCALE_WINDOW))

    def add(self, scale: float | None) -> None:
        if scale is not None:
            self.window.append(scale)

    def reference(self, current: Mapping[str, float]) -> float | None:
        """R for a round whose clients' raw RMS are `current`: the lower median of the window's scales;
        a run's first rounds (empty window) use the lower median of the current clients' RMS when at
        least 2 answered (one client cannot vouch for itself: only the step ceiling bounds it then)."""
        if self.window:
            return _lower_median(self.window)
        return _lower_median(current.values()) if len(current) >= 2 else None


@dataclass(frozen=True)
class Bounded:
    grads: dict[str, tuple[float, ...]]  # per client, the scalars that enter the coefficients
    scaled: dict[str, float]  # the clients the norm bound scaled, by their factor (< 1)
    ceiled: dict[str, int]  # the clients with scalars at the step ceiling, by how many
    scale: float | None  # this round's scale, for `Scales.add`


def bound_clients(
    grads_by_client: Mapping[str, Sequence[float]],
    lrs: Mapping[str, float],
    scales: Scales,
    *,
    norm_k: float,
    max_step: float,
) -> Bounded:
    """Apply the norm bound (norm_k > 0) and the step ceiling (max_step > 0) to every client."""
    rms = {c: scalar_rms(g) for c, g in grads_by_client.items()}
    reference = scales.reference(rms) if norm_k > 0 else None
    limit = norm_k * reference if reference is not None else math.inf
    out: dict[str, tuple[float, ...]] = {}
    scaled: dict[str, float] = {}
    ceiled: dict[str, int] = {}
    bounded_rms: dict[str, float] = {}
    for client, grads in grads_by_client.items():
        values = tuple(grads)
        if rms[client] > limit:
            factor = limit / rms[client]
            values = tuple(g * factor for g in values)
            scaled[client] = factor
        if max_step > 0:
            cap = max_step / lrs[client]
            hits = sum(1 for g in values if abs(g) > cap)
            if hits:
                values = tuple(max(-cap, min(cap, g)) for g in values)
                ceiled[client] = hits
        out[client] = values
        bounded_rms[client] = scalar_rms(values)
    return Bounded(out, scaled, ceiled, round_scale(bounded_rms))
