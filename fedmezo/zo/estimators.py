"""Zeroth-order gradient estimators that stay linear in seeded directions.

Every estimator here turns one local step into P (seed, scalar) pairs: the step moves θ by
−η·Σ_p a_p·z(s_p), so a round is still Σ_s c_s·z(s) on every replica (exactly FedAvg, bit-identical)
whatever the estimator. The scalars a_p are rounded to fp32 here, as they travel.

- `mezo` (Malladi et al., 2023), P two-point estimates averaged:
      g_p = (L(θ+εz_p) − L(θ−εz_p)) / 2ε   (clipped to ±clip when set),   a_p = g_p / P
  2P forwards. P = 1 is the original MeZO step, bit for bit (`mezo_step`).
- `fzoo` (FZOO, ICLR 2026), P one-sided estimates normalised by the spread of the losses:
      L_0 = L(θ),  L_p = L(θ+εz_p),  σ = population std of L_1..L_P,
      a_p = (L_p − L_0) / (P·σ)   (clipped to ±clip when set)
  P + 1 forwards. ε cancels (σ ≈ ε‖∇L‖), so the step is a normalised ZO-SGD step and its learning
  rate is on another scale than MeZO's. σ = 0 (all perturbed losses equal) carries no direction:
  the step is skipped, as is any step with a non-finite loss.

- `adamezo` (AdaMeZO, Cai et al., 2026: Adam-style moments rebuilt from the last h (seed, scalar)
  pairs instead of stored): the step's estimate is MeZO's (a_p as above), then θ moves by
      −η · m̂_t / sqrt(v̂_t),  m̂_t = Σ_k w_k Σ_p a_{t−k,p} z(s_{t−k,p}),  v̂_t = Σ_k u_k Σ_p a²_{t−k,p}
  over the task's last h non-skipped steps (k = 0 newest), with w_k ∝ β1^k and u_k ∝ β2^k normalised
  to sum 1 (the bias-corrected truncated EMAs). With ±1 directions z² = 1, so Adam's second moment is
  one scalar for all coordinates (the per-coordinate curvature AdaMeZO gets from Gaussian z does not
  exist here): this is momentum over seeded directions with a normalised step, still linear in z. The
  task's upload is each seed's summed coefficient a_eff(s) = Σ_t w·a/sqrt(v̂_t) over the steps that
  moved along it, so the round delta is the clients' local models averaged, as for every estimator.
  2P forwards per step, plus up to h·P regenerate-and-add passes.

A skipped step uploads zeros (its directions do not move θ) and its forwards still count.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedmezo.zo.backend import get_backend
from fedmezo.zo.interface import Backend
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.values import to_fp32

__all__ = [
    "ADAMEZO_BETAS",
    "ADAMEZO_HORIZON",
    "ESTIMATORS",
    "AdaMeZO",
    "InPlace",
    "Perturbation",
    "StepEstimate",
    "TaskEstimator",
    "estimate_step",
    "forwards_per_step",
    "task_estimator",
]

ADAMEZO_HORIZON = 8  # h: steps whose directions a step moves along again (β1^8 ≈ 0.43 of the weight)
ADAMEZO_BETAS = (0.9, 0.99)  # Adam's defaults


class Perturbation(Protocol):
    """How the forwards see θ + v·z(s) and how θ itself moves (in place, or through a compute copy)."""

    def shift(self, seed: int, value: float) -> None:
        """Make the forwards see θ + value·z(seed) (replacing any earlier shift)."""
        ...

    def reset(self) -> None:
        """Make the forwards see θ again."""
        ...

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        """Drop any shift, then θ ← θ + Σ value·z(seed) (the canonical fp32 adds)."""
        ...


class InPlace:
    """Shifts θ itself (MeZO's in-place trick: no second copy of the weights).

    Undoing +v then adding −v is not exact in fp32, so a local trajectory drifts by a few ulps; the
    round protocol restores θ_r from a snapshot (design §3). Consecutive shifts of one seed are one add
    (+ε then −2ε) and the final undo shares the update's pass, exactly as `mezo_step` does.
    """

    def __init__(self, params: TrainableParams, backend: Backend | None = None) -> None:
        self.params = params
        self.backend = backend or get_backend(params.device)
        self._shift: tuple[int, float] | None = None

    def shift(self, seed: int, value: float) -> None:
        if self._shift is not None and self._shift[0] == seed:
            self.backend.apply(self.params, [seed], [value - self._shift[1]])
        elif self._shift is not None:
            self.backend.apply(self.params, [self._shift[0], seed], [-self._shift[1], value])
        else:
            self.backend.apply(self.params, [seed], [value])
        self._shift = (seed, value)

    def reset(self) -> None:
        if self._shift is not None:
            self.backend.apply(self.params, [self._shift[0]], [-self._shift[1]])
            self._shift = None

    def update(self, seeds: Sequence[int], values: Sequence[float]) -> None:
        undo_seeds, undo_values = ([self._shift[0]], [-self._shift[1]]) if self._shift else ([], [])
        self._shift = None
        if undo_seeds or seeds:
            self.backend.apply(self.params, [*undo_seeds, *seeds], [*undo_values, *values])


@dataclass(frozen=True)
class StepEstimate:
    seeds: tuple[int, ...]
    scalars: tuple[float, ...]  # a_p (fp32): the step moved θ by −η·Σ a_p·z(s_p); zeros when skipped
    loss: float  # the step's training loss: MeZO the mean of its L±, FZOO L(θ)
    forwards: int
    skipped: bool
    clipped: bool


def _clip(x: float, clip: float | None) -> tuple[float, bool]:
    if clip is not None and abs(x) > clip:
        return math.copysign(clip, x), True
    return x, False


def _mezo(
    move: Perturbation, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float, clip: float | None
) -> tuple[list[float] | None, float, bool]:
    grads, losses, clipped = [], [], False
    for seed in seeds:
        move.shift(seed, eps)
        loss_plus = loss_fn()
        move.shift(seed, -eps)
        loss_minus = loss_fn()
        losses += [loss_plus, loss_minus]
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            return None, math.fsum(losses) / len(losses), False
        g, was_clipped = _clip((loss_plus - loss_minus) / (2.0 * eps), clip)
        grads.append(to_fp32(g))
        clipped |= was_clipped
    scale = len(seeds)
    scalars = grads if scale == 1 else [to_fp32(g / scale) for g in grads]
    return scalars, math.fsum(losses) / len(losses), clipped


def _fzoo(
    move: Perturbation, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float, clip: float | None
) -> tuple[list[float] | None, float, bool]:
    move.reset()
    loss_0 = loss_fn()
    losses = []
    for seed in seeds:
        move.shift(seed, eps)
        losses.append(loss_fn())
    if not all(math.isfinite(x) for x in (loss_0, *losses)):
        return None, loss_0, False
    mean = math.fsum(losses) / len(losses)
    sigma = math.sqrt(math.fsum((x - mean) ** 2 for x in losses) / len(losses))
    if not sigma > 0.0:
        return None, loss_0, False
    scalars, clipped = [], False
    for x in losses:
        a, was_clipped = _clip((x - loss_0) / (len(losses) * sigma), clip)
        scalars.append(to_fp32(a))
        clipped |= was_clipped
    return scalars, loss_0, clipped


_Rule = Callable[
    [Perturbation, Callable[[], float], Sequence[int], float, "float | None"],
    "tuple[list[float] | None, float, bool]",
]
ESTIMATORS: dict[str, _Rule] = {"mezo": _mezo, "fzoo": _fzoo, "adamezo": _mezo}  # adamezo: + AdaMeZO
_FORWARDS: dict[str, Callable[[int], int]] = {
    "mezo": lambda p: 2 * p,
    "fzoo": lambda p: p + 1,
    "adamezo": lambda p: 2 * p,
}


def forwards_per_step(estimator: str, perturbations: int) -> int:
    """Forward passes one step of `estimator` with P perturbations costs (the budget unit)."""
    return _FORWARDS[estimator](perturbations)


def _check_step(seeds: Sequence[int], eps: float, lr: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    if not seeds:
        raise ValueError("a step needs at least one perturbation seed")


def estimate_step(
    estimator: str,
    move: Perturbation,
    loss_fn: Callable[[], float],
    *,
    seeds: Sequence[int],
    eps: float,
    lr: float,
    clip: float | None = None,
) -> StepEstimate:
    """One local step: estimate along `seeds` (one per perturbation), then θ ← θ − η·Σ a_p·z(s_p)."""
    _check_step(seeds, eps, lr)
    scalars, loss, clipped = ESTIMATORS[estimator](move, loss_fn, seeds, eps, clip)
    forwards = forwards_per_step(estimator, len(seeds))
    if scalars is None:
        move.update([], [])
        return StepEstimate(tuple(seeds), (0.0,) * len(seeds), loss, forwards, True, False)
    move.update(list(seeds), [-lr * a for a in scalars])
    return StepEstimate(tuple(seeds), tuple(scalars), loss, forwards, False, clipped)


class TaskEstimator(Protocol):
    """One task's local steps and what it uploads (τ·P scalars, step-major)."""

    def step(
        self,
        move: Perturbation,
        loss_fn: Callable[[], float],
        *,
        seeds: Sequence[int],
        eps: float,
        lr: float,
        clip: float | None = None,
    ) -> StepEstimate: ...

    def upload(self) -> tuple[float, ...]: ...


class _Stateless:
    """mezo and fzoo: each step's scalars are its upload."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        self._scalars: list[float] = []

    def step(
        self,
        move: Perturbation,
        loss_fn: Callable[[], float],
        *,
        seeds: Sequence[int],
        eps: float,
        lr: float,
        clip: float | None = None,
    ) -> StepEstimate:
        result = estimate_step(self.estimator, move, loss_fn, seeds=seeds, eps=eps, lr=lr, clip=clip)
        self._scalars.extend(result.scalars)
        return result

    def upload(self) -> tuple[float, ...]:
        return tuple(self._scalars)


class AdaMeZO:
    """`adamezo`: MeZO estimates, moved along the last h steps' directions with a normalised step.

    The window holds (slots, scalars, Σ_p a²) of the last h steps that were not skipped; `_coef[slot]`
    sums, in float64, the coefficient each step gave that slot's direction (in units of a: the step
    moved θ by −η·coef·z), which is what the slot uploads (rounded to fp32 once, at the end).
    """

    def __init__(self, horizon: int = ADAMEZO_HORIZON, betas: tuple[float, float] = ADAMEZO_BETAS) -> None:
        self.beta1, self.beta2 = betas
        self._window: deque[tuple[tuple[int, ...], tuple[float, ...], float]] = deque(maxlen=horizon)
        self._seeds: list[int] = []
        self._coef: list[float] = []

    def step(
        self,
        move: Perturbation,
        loss_fn: Callable[[], float],
        *,
        seeds: Sequence[int],
        eps: float,
        lr: float,
        clip: float | None = None,
    ) -> StepEstimate:
        _check_step(seeds, eps, lr)
        scalars, loss, clipped = _mezo(move, loss_fn, seeds, eps, clip)
        forwards = forwards_per_step("adamezo", len(seeds))
        first = len(self._seeds)
        self._seeds.extend(seeds)
        self._coef.extend([0.0] * len(seeds))
        if scalars is None:
            move.update([], [])
            return StepEstimate(tuple(seeds), (0.0,) * len(seeds), loss, forwards, True, False)
        slots = tuple(range(first, first + len(seeds)))
        self._window.append((slots, tuple(scalars), math.fsum(a * a for a in scalars)))
        entries = list(self._window)  # oldest first; k = len − 1 − index
        n = len(entries)
        w = [self.beta1 ** (n - 1 - i) for i in range(n)]
        u = [self.beta2 ** (n - 1 - i) for i in range(n)]
        v_hat = math.fsum(ui * sq for ui, (_, _, sq) in zip(u, entries, strict=True)) / math.fsum(u)
        if not v_hat > 0.0:  # every estimate in the window is 0: no direction to move along
            move.update([], [])
            return StepEstimate(tuple(seeds), tuple(scalars), loss, forwards, False, clipped)
        scale = 1.0 / (math.fsum(w) * math.sqrt(v_hat))
        move_seeds, values = [], []
        for wi, (entry_slots, entry_scalars, _) in zip(w, entries, strict=True):
            for slot, a in zip(entry_slots, entry_scalars, strict=True):
                coef = wi * scale * a
                self._coef[slot] += coef
                move_seeds.append(self._seeds[slot])
                values.append(-lr * coef)
        move.update(move_seeds, values)
        return StepEstimate(tuple(seeds), tuple(scalars), loss, forwards, False, clipped)

    def upload(self) -> tuple[float, ...]:
        return tuple(to_fp32(c) for c in self._coef)


def task_estimator(estimator: str) -> TaskEstimator:
    """The estimator of one task (fresh state: momentum never crosses a round)."""
    if estimator == "adamezo":
        return AdaMeZO()
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}")
    return _Stateless(estimator)
