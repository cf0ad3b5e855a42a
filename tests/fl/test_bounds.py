"""The poisoning bounds (fedmezo.fl.bounds): what one client's scalars can do to a round, with defaults."""

from __future__ import annotations

import math

import pytest

from fedmezo.fl.aggregation import aggregate
from fedmezo.fl.bounds import SCALE_WINDOW, Scales, bound_clients, scalar_rms
from fedmezo.fl.config import RunConfig
from fedmezo.fl.errors import ConfigError, InvalidUpdate
from fedmezo.fl.records import TaskRecord, Update, UpdateRecord
from fedmezo.fl.rounds import check_update, close_round
from fedmezo.fl.seeds import SeedPlan

ATTACK = (3.4028235e38, -3.4028235e38, 3.4028235e38, 1e30)  # the outside client's update (issue #17)
HONEST = (0.25, -0.5, 0.75, -1.0)
DEFAULTS = RunConfig(perturbations=1)  # the poisoning defaults; P = 1: one scalar per step as below


def _scales(*values: float) -> Scales:
    scales = Scales()
    for v in values:
        scales.add(v)
    return scales


def test_an_honest_round_is_untouched() -> None:
    grads = {"a": HONEST, "b": tuple(3 * g for g in HONEST)}  # 3x apart: non-IID clients differ so
    out = bound_clients(grads, {"a": 1e-3, "b": 1e-3}, _scales(0.5), norm_k=10.0, max_step=0.1)
    assert out.grads == grads and not out.scaled and not out.ceiled


def test_the_norm_bound_keeps_the_direction_and_bounds_the_length() -> None:
    reference = scalar_rms(HONEST)
    big = tuple(1e6 * g for g in HONEST)
    out = bound_clients({"m": big}, {"m": 1e-3}, _scales(reference), norm_k=10.0, max_step=0.0)
    assert scalar_rms(out.grads["m"]) == pytest.approx(10.0 * reference, rel=1e-12)
    ratios = {g / h for g, h in zip(out.grads["m"], HONEST, strict=True)}
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)  # every scalar by the same factor
    assert out.scaled["m"] == pytest.approx(1e-5, rel=1e-9)


def test_the_step_ceiling_bounds_every_scalar_without_a_reference() -> None:
    """A single client in the run's first round has nothing to be compared with: only the ceiling."""
    out = bound_clients({"m": ATTACK}, {"m": 1e-3}, Scales(), norm_k=10.0, max_step=0.1)
    assert not out.scaled and out.ceiled == {"m": 4}
    assert all(abs(1e-3 * g) <= 0.1 * (1 + 1e-15) for g in out.grads["m"])
    assert [math.copysign(1, g) for g in out.grads["m"]] == [1, -1, 1, 1]


def test_the_first_round_of_two_clients_uses_the_smaller_one() -> None:
    grads = {"honest": HONEST, "m": ATTACK}
    out = bound_clients(grads, {"honest": 1e-3, "m": 1e-3}, Scales(), norm_k=10.0, max_step=0.0)
    assert out.grads["honest"] == HONEST
    assert scalar_rms(out.grads["m"]) == pytest.approx(10.0 * scalar_rms(HONEST))


def test_a_minority_of_poisoned_rounds_does_not_move_the_reference() -> None:
    scales = _scales(1.0, 1e30, 1.2, 1e30, 0.9)
    assert scales.reference({}) == 1.2  # lower median of 0.9, 1.0, 1.2, 1e30, 1e30
    scales.add(2.0)  # the window slides: the oldest scale leaves
    assert len(scales.window) == SCALE_WINDOW and scales.reference({}) == 2.0
    scales.add(None)  # a round that moved nothing adds nothing
    assert len(scales.window) == SCALE_WINDOW


def _updates(grads: dict[str, tuple[float, ...]], round_id: int = 1) -> list[UpdateRecord]:
    return [
        Update(round_id, g, losses=(2.0,) * len(g)).to_record(c, received_at=0.0)
        for c, g in sorted(grads.items())
    ]


def test_with_the_defaults_one_client_moves_each_weight_at_most_the_documented_bound() -> None:
    """Per round and coordinate: |Δθ_j| ≤ Σ_s |c_s| ≤ τ·P·min(max_step, η·norm_k·R)."""
    tau, lr = len(ATTACK), 1e-3
    tasks = {c: TaskRecord(3, c, lr, tau) for c in ("a", "b", "m")}
    history = _scales(scalar_rms(HONEST), scalar_rms(HONEST))
    updates = _updates({"a": HONEST, "b": HONEST, "m": ATTACK}, 3)
    agg = aggregate(
        3, updates, tasks, seeds=SeedPlan(0), rule="equal",
        norm_k=DEFAULTS.norm_k, max_step=DEFAULTS.max_step, scales=history,
    )  # fmt: skip
    assert all(o.accepted for o in agg.outcomes) and set(agg.bounded.scaled) == {"m"}
    bound = tau * min(DEFAULTS.max_step, lr * DEFAULTS.norm_k * scalar_rms(HONEST))
    moved = math.fsum(abs(c) for c in agg.delta.coefficients)
    assert moved <= bound
    unbounded = aggregate(3, updates, tasks, seeds=SeedPlan(0), rule="equal")
    assert math.fsum(abs(c) for c in unbounded.delta.coefficients) > 1e30  # what the defaults prevent


def test_with_the_defaults_and_three_clients_the_blatant_attacker_is_rejected() -> None:
    tasks = {c: TaskRecord(1, c, 1e-3, 4) for c in ("a", "b", "m")}
    closed = close_round(DEFAULTS, 1, _updates({"a": HONEST, "b": HONEST, "m": ATTACK}), tasks, Scales())
    outcomes = {o.client_id: o for o in closed.aggregate.outcomes}
    assert not outcomes["m"].accepted and outcomes["m"].rejected_reason == "outlier"
    assert outcomes["a"].accepted and outcomes["b"].accepted and not closed.aggregate.bounded.scaled


@pytest.mark.parametrize("scheme", ["per-client", "shared"])
def test_close_round_reports_the_bounded_scale(scheme: str) -> None:
    config = RunConfig(seed_scheme=scheme, local_steps=4, perturbations=1, outlier_k=0.0)
    tasks = {c: TaskRecord(1, c, 1e-3, 4) for c in ("a", "b", "c")}
    updates = _updates({"a": HONEST, "b": HONEST, "c": ATTACK})
    closed = close_round(config, 1, updates, tasks, Scales())
    assert closed.scale == pytest.approx(scalar_rms(HONEST))  # lower median of a, b and bounded c
    assert set(closed.aggregate.bounded.scaled) == {"c"}


def test_the_bounds_are_validated() -> None:
    with pytest.raises(ConfigError, match="norm_k"):
        RunConfig(norm_k=0.5).validate()
    with pytest.raises(ConfigError, match="max_step"):
        RunConfig(max_step=-1.0).validate()
    with pytest.raises(ConfigError, match="max_step"):
        RunConfig(max_step=math.inf).validate()
    RunConfig(norm_k=0.0, max_step=0.0).validate()  # both off is a choice


@pytest.mark.parametrize("loss", [-0.5, 3.4028235e38, 2e6])
def test_a_loss_that_is_no_cross_entropy_is_refused(loss: float) -> None:
    task = TaskRecord(1, "m", 1e-3, 4)
    with pytest.raises(InvalidUpdate, match="outside"):
        check_update(Update(1, HONEST, losses=(2.0, 2.0, 2.0, loss)), task)
    check_update(Update(1, HONEST, losses=(0.0, 46634.0, 2.0, 2.0)), task)
