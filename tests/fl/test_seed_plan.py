"""fedmezo.fl.seeds: a task's seeds are derived, in the order its scalars travel."""

from __future__ import annotations

import pytest

from fedmezo.fl.seeds import PER_CLIENT, SHARED, SeedPlan
from fedmezo.zo import derive_shared_seed


@pytest.mark.parametrize(("local_steps", "perturbations"), [(1, 1), (4, 1), (3, 8), (20, 2)])
def test_shared_task_seeds_are_each_steps_seeds_step_major(local_steps: int, perturbations: int) -> None:
    # the cached task list must be exactly what the client derives step by step (§ seeds, shared scheme)
    plan = SeedPlan(11, SHARED, perturbations)
    expected = [derive_shared_seed(11, 6, t, k) for t in range(local_steps) for k in range(perturbations)]
    assert plan.client_seeds(6, "any", local_steps) == expected
    assert [s for t in range(local_steps) for s in plan.step_seeds(6, "other", t)] == expected
    assert SeedPlan(12, SHARED, perturbations).client_seeds(6, "any", local_steps) != expected
    assert plan.client_seeds(7, "any", local_steps) != expected


def test_task_seeds_are_a_fresh_list_each_time() -> None:
    # aggregation and clients may keep or change the list they get; the next caller must not see it
    for scheme in (SHARED, PER_CLIENT):
        plan = SeedPlan(3, scheme, 2)
        first = plan.client_seeds(1, "a", 3)
        first.append(-1)
        first[0] = 0
        assert plan.client_seeds(1, "a", 3) == [s for t in range(3) for s in plan.step_seeds(1, "a", t)]
