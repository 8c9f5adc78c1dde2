"""The retry policy as pure functions and a loop with an injected sleep, the way tenacity
tests its own policies: no network, no real waiting."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bulkexport.errors import AttemptError, PermanentError, RateLimited, ServerError, TransportError
from bulkexport.retry import RetryPolicy, attempt_with_retries


class Script:
    """An attempt that raises the scripted errors in turn, then succeeds."""

    def __init__(self, *errors: AttemptError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def recorder() -> tuple[list[float], Callable[[float], object]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


async def test_429s_never_use_up_the_error_budget() -> None:
    slept, sleep = recorder()
    script = Script(*(RateLimited("slow down", 1.0) for _ in range(20)), ServerError("oops", 503))
    out = await attempt_with_retries(script, RetryPolicy(max_attempts=2), sleep=sleep, clock=lambda: 0.0)
    assert out.error is None and out.attempts == 22 == script.calls
    assert len(slept) == 1  # only the 5xx backs off: the controller's pause is a 429's wait


async def test_permanent_error_mid_retry_stops_at_once() -> None:
    slept, sleep = recorder()
    script = Script(ServerError("a", 500), TransportError("b"), PermanentError("bad id", 400), ServerError("c", 500))
    out = await attempt_with_retries(script, RetryPolicy(max_attempts=6), sleep=sleep, clock=lambda: 0.0)
    assert isinstance(out.error, PermanentError) and out.attempts == 3 == script.calls
    assert len(slept) == 2


async def test_retryable_errors_fail_the_pair_after_max_attempts_when_it_is_to_blame() -> None:
    slept, sleep = recorder()
    script = Script(*(ServerError("down", 503) for _ in range(10)))
    out = await attempt_with_retries(script, RetryPolicy(max_attempts=4), sleep=sleep, clock=lambda: 0.0)
    assert isinstance(out.error, ServerError) and out.attempts == 4 == script.calls
    assert len(slept) == 3  # no backoff after the last attempt


async def test_during_an_outage_the_pair_is_not_blamed_and_keeps_its_place() -> None:
    slept, sleep = recorder()
    seen: list[float] = []

    def blame(since: float) -> bool:
        seen.append(since)
        return False  # nothing else succeeds either

    script = Script(*(TransportError("refused") for _ in range(9)))
    out = await attempt_with_retries(script, RetryPolicy(max_attempts=3), blame=blame, sleep=sleep, clock=lambda: 7.0)
    assert out.error is None and out.attempts == 10
    assert seen == [7.0] * 7  # asked from the 3rd failure on, with the time of the first
    assert all(s <= RetryPolicy().backoff_initial * 4 for s in slept)  # the backoff stops growing


async def test_too_many_429s_for_one_pair_fail_it() -> None:
    script = Script(*(RateLimited("slow down", None) for _ in range(5)))
    out = await attempt_with_retries(script, RetryPolicy(max_rate_limited=3), clock=lambda: 0.0)
    assert isinstance(out.error, RateLimited) and out.attempts == 3


@pytest.mark.parametrize("errors", [1, 2, 3, 6, 7, 12])
def test_full_jitter_bounds(errors: int) -> None:
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=10.0)
    cap = min(10.0, 0.5 * 2 ** (errors - 1))
    assert policy.backoff(errors, lambda a, b: a) == 0.0
    assert policy.backoff(errors, lambda a, b: b) == cap
    rng = random.Random(errors)
    draws = [policy.backoff(errors, rng.uniform) for _ in range(2000)]
    assert all(0.0 <= d <= cap for d in draws)
    assert max(draws) > 0.9 * cap and min(draws) < 0.1 * cap  # the whole range, not a fixed step
