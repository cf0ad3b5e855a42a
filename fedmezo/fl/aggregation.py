"""Turn a round's accepted updates into its delta (design §1 step 3).

Order of decisions: optional |g| clip → optional outlier rejection (scalar RMS > k × the round's
median) → the poisoning bounds on the accepted clients (`fedmezo.fl.bounds`: norm bound relative to
the run's scale, step ceiling) → weights (by example count or equal; normalised inside `round_delta`)
→ `round_delta`. Non-finite scalars never get here: they are refused at submission.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedmezo.fl.bounds import Bounded, Scales, bound_clients, scalar_rms
from fedmezo.fl.errors import SyncFailed
from fedmezo.fl.records import TaskRecord, UpdateOutcome, UpdateRecord
from fedmezo.fl.seeds import SeedPlan
from fedmezo.zo import Contribution, RoundDelta, round_delta

__all__ = [
    "WEIGHT_RULES",
    "Aggregate",
    "aggregate",
    "clip_grads",
    "delta_from_participants",
    "outlier_clients",
    "scalar_rms",
]

# One small function of a client's example count per weighting rule; a new rule is one row (and one
# row in the test table).
WEIGHT_RULES: dict[str, Callable[[int], float]] = {
    "examples": lambda num_examples: float(max(num_examples, 1)),
    "equal": lambda num_examples: 1.0,
}


@dataclass(frozen=True)
class Aggregate:
    delta: RoundDelta
    outcomes: tuple[UpdateOutcome, ...]  # one per update, ascending client id
    participants: tuple[tuple[str, int], ...]  # accepted (client id, local steps), ascending id
    bounded: Bounded  # what the poisoning bounds did (scaled / ceiled clients, the round's scale)


def delta_from_participants(
    seeds: SeedPlan,
    round_id: int,
    participants: Sequence[tuple[str, int]],
    coefficients: Sequence[float],
    local_steps: int,
) -> RoundDelta:
    """A round's (seed, coefficient) list from its wire form: participants (per-client seeds; shared
    seeds need only τ = `local_steps`) and the coefficients in ascending-seed order. No coefficients
    is an aborted round's empty delta."""
    if not coefficients:
        return RoundDelta((), ())
    round_seeds = seeds.round_seeds(round_id, participants, local_steps)
    if len(round_seeds) != len(coefficients):
        raise SyncFailed(
            f"round {round_id}: {len(round_seeds)} derived seeds, {len(coefficients)} coefficients"
        )
    return RoundDelta(round_seeds, tuple(coefficients))


def clip_grads(grads: Sequence[float], clip: float) -> tuple[float, ...]:
    """Clamp each projected gradient to [-clip, clip]; clip=0 leaves them alone."""
    if clip <= 0:
        return tuple(grads)
    return tuple(max(-clip, min(clip, g)) for g in grads)


def outlier_clients(grads_by_client: Mapping[str, Sequence[float]], k: float) -> set[str]:
    """Clients whose scalar RMS exceeds k × the median RMS of the round (k=0: none)."""
    if k <= 0 or len(grads_by_client) < 3:  # a median of fewer than 3 cannot single out anyone
        return set()
    rms = {c: scalar_rms(g) for c, g in grads_by_client.items()}
    median = statistics.median(rms.values())
    return {c for c, r in rms.items() if r > k * median}


def _model_diff(own: Mapping[int, float], coefficients: Mapping[int, float], sum_sq: float) -> float:
    """‖Δ_i − Δ̄‖ / sqrt(d) from scalars alone (design §4 model-diff).

    Rademacher directions of distinct seeds are orthogonal in expectation and ‖z‖² = d, so the
    distance between client i's update Σ a_s z(s) and the mean Σ c_s z(s) is sqrt(d · Σ_s (a_s − c_s)²).
    The constant sqrt(d) cancels in the strategy's normalisation. a_s is 0 off client i's own seeds, so
    the sum is `sum_sq` = Σ_s c_s² (one per round) plus (a_s − c_s)² − c_s² over its own seeds: O(tau)
    per client, not O(all seeds of the round) (quadratic in the clients: most of a 1,000-client close).
    """
    terms = [sum_sq]
    for seed, a in own.items():
        c = coefficients.get(seed, 0.0)
        terms += ((a - c) ** 2, -(c * c))
    return math.sqrt(max(0.0, math.fsum(terms)))


def aggregate(
    round_id: int,
    updates: Sequence[UpdateRecord],
    tasks: Mapping[str, TaskRecord],
    *,
    seeds: SeedPlan,
    rule: str,
    clip: float = 0.0,
    outlier_k: float = 0.0,
    norm_k: float = 0.0,
    max_step: float = 0.0,
    scales: Scales | None = None,
) -> Aggregate:
    """The round delta over the accepted updates, and the fate of every update.

    `scales` is the run's scale history (read, not changed: the caller adds this round's scale once the
    close is final); None is a run without history."""
    weight_of = WEIGHT_RULES[rule]
    clipped = {u.client_id: clip_grads(u.projected_grads, clip) for u in updates}
    rejected = outlier_clients(clipped, outlier_k)
    accepted = sorted((u for u in updates if u.client_id not in rejected), key=lambda u: u.client_id)
    bounded = bound_clients(
        {u.client_id: clipped[u.client_id] for u in accepted},
        {u.client_id: tasks[u.client_id].lr for u in accepted},
        scales if scales is not None else Scales(),
        norm_k=norm_k,
        max_step=max_step,
    )
    contributions = [
        Contribution(
            client_id=u.client_id,
            weight=weight_of(u.num_examples),
            lr=tasks[u.client_id].lr,
            seeds=seeds.client_seeds(round_id, u.client_id, len(u.projected_grads) // seeds.perturbations),
            projected_grads=bounded.grads[u.client_id],
        )
        for u in accepted
    ]
    delta = round_delta(contributions)
    total = math.fsum(c.weight for c in contributions)
    outcomes = []
    by_id = {c.client_id: c for c in contributions}
    coefficients = dict(zip(delta.seeds, delta.coefficients))
    sum_sq = math.fsum(c * c for c in delta.coefficients)
    for u in sorted(updates, key=lambda u: u.client_id):
        c = by_id.get(u.client_id)
        if c is None:
            outcomes.append(UpdateOutcome(u.client_id, False, 0.0, rejected_reason="outlier"))
            continue
        own: dict[int, float] = {}
        for seed, g in zip(c.seeds, c.projected_grads):
            own[seed] = own.get(seed, 0.0) - c.lr * g
        outcomes.append(
            UpdateOutcome(
                u.client_id, True, c.weight / total, model_diff=_model_diff(own, coefficients, sum_sq)
            )
        )
    participants = tuple((u.client_id, len(u.projected_grads) // seeds.perturbations) for u in accepted)
    return Aggregate(delta, tuple(outcomes), participants, bounded)
