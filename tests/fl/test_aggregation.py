"""Aggregation rules and personalized-LR strategies, table-driven (a new rule = a new row)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmezo.fl.aggregation import (
    WEIGHT_RULES,
    aggregate,
    clip_grads,
    outlier_clients,
    scalar_rms,
)
from fedmezo.fl.lr import STRATEGIES, LrContext, RoundStat, personalized_lrs
from fedmezo.fl.records import TaskRecord, UpdateRecord
from fedmezo.fl.seeds import SeedPlan
from fedmezo.zo import derive_round_seeds, derive_seed


def _update(client: str, grads: list[float], examples: int = 10) -> UpdateRecord:
    grads32 = tuple(float(np.float32(g)) for g in grads)
    return UpdateRecord(1, client, grads32, (1.0,) * len(grads), 0.1, 0, "cpu", examples, 0.0)


TASKS = {c: TaskRecord(1, c, 1e-3, 2) for c in ("a", "b", "c")}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("examples", {"a": 10 / 40, "b": 30 / 40}), ("equal", {"a": 0.5, "b": 0.5})],
)
def test_weight_rules(rule: str, expected: dict[str, float]) -> None:
    updates = [_update("a", [1.0, 2.0], 10), _update("b", [3.0, -1.0], 30)]
    agg = aggregate(1, updates, TASKS, seeds=SeedPlan(5), rule=rule)
    assert {o.client_id: o.weight for o in agg.outcomes} == pytest.approx(expected)
    # c_s = ω_i · (−η_i · g_{i,t}) for each seed, rounded once to fp32
    want = {}
    for u in updates:
        for t, g in enumerate(u.projected_grads):
            want[derive_seed(5, 1, u.client_id, t)] = expected[u.client_id] * (-1e-3 * g)
    got = dict(zip(agg.delta.seeds, agg.delta.coefficients))
    assert got.keys() == want.keys()
    assert all(got[s] == float(np.float32(want[s])) for s in want)
    assert agg.participants == (("a", 2), ("b", 2))
    assert derive_round_seeds(5, 1, agg.participants) == agg.delta.seeds


def test_every_weight_rule_is_tested() -> None:
    assert set(WEIGHT_RULES) == {"examples", "equal"}


def test_clip_and_rms() -> None:
    assert clip_grads([5.0, -7.0, 0.5], 1.0) == (1.0, -1.0, 0.5)
    assert clip_grads([5.0], 0.0) == (5.0,)
    assert scalar_rms([3.0, 4.0]) == pytest.approx(math.sqrt(12.5))
    agg = aggregate(1, [_update("a", [100.0, -100.0])], TASKS, seeds=SeedPlan(0), rule="equal", clip=2.0)
    assert sorted(abs(c) for c in agg.delta.coefficients) == [pytest.approx(2e-3)] * 2


def test_outlier_rejection() -> None:
    grads = {"a": [1.0, 1.0], "b": [1.2, 0.8], "c": [50.0, 50.0]}
    assert outlier_clients(grads, 5.0) == {"c"}
    assert outlier_clients(grads, 0.0) == set()
    assert outlier_clients({"a": [1.0], "c": [99.0]}, 2.0) == set()  # too few to judge
    agg = aggregate(
        1, [_update(c, g) for c, g in grads.items()], TASKS, seeds=SeedPlan(0), rule="equal", outlier_k=5.0
    )
    outcome = {o.client_id: o for o in agg.outcomes}
    assert (
        not outcome["c"].accepted and outcome["c"].rejected_reason == "outlier" and outcome["c"].weight == 0
    )
    assert [p for p, _ in agg.participants] == ["a", "b"]
    assert agg.delta.num_seeds == 4


def test_model_diff_signal_ranks_the_far_client_highest() -> None:
    updates = [_update("a", [1.0, 1.0]), _update("b", [1.1, 0.9]), _update("c", [8.0, -8.0])]
    agg = aggregate(1, updates, TASKS, seeds=SeedPlan(0), rule="equal")
    diffs = {o.client_id: o.model_diff for o in agg.outcomes}
    assert max(diffs, key=lambda c: diffs[c]) == "c" and all(d > 0 for d in diffs.values())


def test_model_diff_equals_its_definition_over_every_seed_of_the_round() -> None:
    """Parity for the O(tau)-per-client form: sqrt(Σ_s (a_s − c_s)²) over all seeds, a_s = 0 off own seeds."""
    rng = np.random.default_rng(7)
    clients = [f"k{i:03d}" for i in range(60)]
    tasks = {c: TaskRecord(1, c, float(np.float32(rng.uniform(1e-4, 1e-3))), 3) for c in clients}
    updates = [
        _update(c, list(rng.standard_normal(3) * rng.uniform(0.1, 5)), 10 + i) for i, c in enumerate(clients)
    ]
    agg = aggregate(1, updates, tasks, seeds=SeedPlan(11), rule="examples")
    coefficient = dict(zip(agg.delta.seeds, agg.delta.coefficients))
    for outcome, u in zip(agg.outcomes, updates):
        own: dict[int, float] = {}
        for t, g in enumerate(u.projected_grads):
            seed = derive_seed(11, 1, u.client_id, t)
            own[seed] = own.get(seed, 0.0) - tasks[u.client_id].lr * g
        direct = math.sqrt(math.fsum((own.get(s, 0.0) - c) ** 2 for s, c in coefficient.items()))
        assert outcome.model_diff == pytest.approx(direct, rel=1e-12), u.client_id


def _ctx(
    history: dict[str, list[RoundStat]], selected: tuple[str, ...] = ("a", "b", "c", "new")
) -> LrContext:
    return LrContext(round_id=4, run_seed=3, lr=1e-5, spread=5e-6, selected=selected, history=history)


HISTORY = {
    "a": [RoundStat(1, 3.0, 0.1), RoundStat(3, 2.0, 0.3)],  # skipped round 2
    "b": [RoundStat(2, 4.0, 0.2)],
    "c": [RoundStat(r, 1.0 + r, 0.5) for r in range(1, 8)],
}
F32 = lambda x: float(np.float32(x))  # noqa: E731


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("frozen", {"a": 1e-5, "b": 1e-5, "c": 1e-5, "new": 1e-5}),
        # x = last loss: a 2, b 4, c 8 → mean 14/3, max dev 10/3
        ("round-wise", {"a": 1e-5 + 5e-6 * (2 - 14 / 3) / (10 / 3),
                        "b": 1e-5 + 5e-6 * (4 - 14 / 3) / (10 / 3), "c": 1.5e-5, "new": 1e-5}),
        # x = mean of last five: a 2.5, b 4, c mean(4..8)=6 → mean 12.5/3
        ("five-round", {"a": 1e-5 + 5e-6 * (2.5 - 12.5 / 3) / (6 - 12.5 / 3),
                        "b": 1e-5 + 5e-6 * (4 - 12.5 / 3) / (6 - 12.5 / 3), "c": 1.5e-5, "new": 1e-5}),
        # x = last model diff: a .3, b .2, c .5 → mean 1/3, max dev 1/6
        ("model-diff", {"a": 1e-5 + 5e-6 * (0.3 - 1 / 3) * 6, "b": 1e-5 + 5e-6 * (0.2 - 1 / 3) * 6,
                        "c": 1.5e-5, "new": 1e-5}),
    ],
)  # fmt: skip
def test_lr_strategies(strategy: str, expected: dict[str, float]) -> None:
    got = personalized_lrs(strategy, _ctx(HISTORY))
    assert got == {c: F32(v) for c, v in expected.items()} or got == pytest.approx(expected, rel=1e-6)
    assert all(F32(v) == v for v in got.values())  # fp32-exact: the client trains with this value


def test_random_strategy_bounded_and_reproducible() -> None:
    ctx = _ctx(HISTORY, selected=tuple(f"c{i}" for i in range(50)))
    a, b = personalized_lrs("random", ctx), personalized_lrs("random", ctx)
    assert a == b and all(5e-6 <= v <= 1.5e-5 for v in a.values()) and len(set(a.values())) > 40


def test_strategy_table_complete_and_handles_equal_signals() -> None:
    assert set(STRATEGIES) == {"frozen", "random", "round-wise", "five-round", "model-diff"}
    same = {c: [RoundStat(1, 2.0, 0.1)] for c in ("a", "b")}
    for name in STRATEGIES:
        got = personalized_lrs(name, _ctx(same, ("a", "b")))
        if name != "random":
            assert got == {"a": F32(1e-5), "b": F32(1e-5)}, name
        assert personalized_lrs(name, _ctx({}, ())) == {}
