"""The retry policy: full-jitter backoff with a cap, only `Unavailable` retried, never a real sleep."""

from __future__ import annotations

import pytest

from fedmezo.client.errors import AuthFailed, Refused, Stopped, Unavailable
from fedmezo.client.retry import RetryPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return False

    def clock(self) -> float:
        return self.now


def _policy(clock: FakeTime, **kwargs: object) -> RetryPolicy:
    return RetryPolicy(
        base_s=1.0, cap_s=8.0, sleep=clock.sleep, clock=clock.clock, uniform=lambda: 1.0, **kwargs
    )  # type: ignore[arg-type]


def _flaky(failures: list[Exception]) -> object:
    calls = []

    def fn() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_backoff_doubles_up_to_the_cap() -> None:
    clock = FakeTime()
    fn = _flaky([Unavailable("UNAVAILABLE")] * 6)
    assert _policy(clock).call(fn) == "ok"  # type: ignore[arg-type]
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_full_jitter_draws_below_the_exponential_bound() -> None:
    draws = iter([0.5, 0.25])
    policy = RetryPolicy(base_s=2.0, cap_s=100.0, uniform=lambda: next(draws))
    assert policy.delay(0) == 1.0  # 0.5 × 2
    assert policy.delay(3) == 4.0  # 0.25 × 16


@pytest.mark.parametrize("error", [AuthFailed("UNAUTHENTICATED"), Refused("INVALID_ARGUMENT")])
def test_final_answers_fail_fast(error: Exception) -> None:
    clock = FakeTime()
    fn = _flaky([error])
    with pytest.raises(type(error)):
        _policy(clock).call(fn)  # type: ignore[arg-type]
    assert clock.sleeps == [] and len(fn.calls) == 1  # type: ignore[attr-defined]


def test_gives_up_after_max_attempts_or_elapsed() -> None:
    clock = FakeTime()
    with pytest.raises(Unavailable):
        _policy(clock, max_attempts=3).call(_flaky([Unavailable("UNAVAILABLE")] * 5))  # type: ignore[arg-type]
    assert len(clock.sleeps) == 2
    clock = FakeTime()
    with pytest.raises(Unavailable):
        _policy(clock, max_elapsed_s=10.0).call(_flaky([Unavailable("UNAVAILABLE")] * 50))  # type: ignore[arg-type]
    assert clock.now >= 10.0 and len(clock.sleeps) < 6


def test_stop_during_backoff_raises_stopped() -> None:
    policy = RetryPolicy(sleep=lambda _s: True)  # an Event.wait that was woken by a stop
    with pytest.raises(Stopped):
        policy.call(_flaky([Unavailable("UNAVAILABLE")]))  # type: ignore[arg-type]
