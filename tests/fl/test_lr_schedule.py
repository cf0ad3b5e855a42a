"""The learning-rate schedule: η_0 per round, evaluated by the server only (clients get fp32 η_i)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedmezo.fl.config import RunConfig
from fedmezo.fl.lr import COSINE_FLOOR, SCHEDULES, schedule_factor
from fedmezo.fl.rounds import plan_round


def test_constant_is_one_every_round() -> None:
    assert {schedule_factor("constant", r, 10) for r in range(0, 15)} == {1.0}


def test_cosine_runs_from_one_to_the_floor() -> None:
    rounds = 9
    factors = [schedule_factor("cosine", r, rounds) for r in range(1, rounds + 1)]
    assert factors[0] == 1.0 and math.isclose(factors[-1], COSINE_FLOOR)
    assert math.isclose(factors[4], (1 + COSINE_FLOOR) / 2)  # the middle round of nine: cos(π/2) = 0
    assert all(a > b for a, b in itertools.pairwise(factors))  # strictly decaying
    assert math.isclose(schedule_factor("cosine", rounds + 5, rounds), COSINE_FLOOR)  # extra rounds: floor
    assert schedule_factor("cosine", 1, 1) == 1.0  # one round: nothing to decay


def test_unknown_schedule_is_refused() -> None:
    assert SCHEDULES == ("constant", "cosine")
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        schedule_factor("step", 2, 10)


@pytest.mark.parametrize("strategy", ["frozen", "random"])
def test_a_round_task_carries_the_scheduled_fp32_lr(strategy: str) -> None:
    config = RunConfig(lr=1e-3, lr_spread=4e-4, lr_strategy=strategy, lr_schedule="cosine", rounds=5)
    config.validate()
    online = ["a", "b", "c"]
    for round_id in range(1, 6):
        factor = schedule_factor("cosine", round_id, 5)
        tasks = plan_round(config, round_id, online, {})
        for task in tasks.values():
            assert task.lr == float(np.float32(task.lr))  # what the client trains with, exactly
            if strategy == "frozen":
                assert task.lr == float(np.float32(1e-3 * factor))
            else:  # the spread shrinks with η_0: every η_i stays positive and inside η_0 ± δ
                assert abs(task.lr - 1e-3 * factor) <= 4e-4 * factor * (1 + 1e-6) and task.lr > 0
    constant = plan_round(RunConfig(lr=1e-3, lr_spread=0.0, rounds=5, lr_schedule="constant"), 5, online, {})
    decayed = plan_round(RunConfig(lr=1e-3, lr_spread=0.0, rounds=5, lr_schedule="cosine"), 5, online, {})
    assert {t.lr for t in constant.values()} == {float(np.float32(1e-3))}
    assert {t.lr for t in decayed.values()} == {float(np.float32(1e-3 * COSINE_FLOOR))}
