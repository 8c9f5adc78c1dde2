"""One pair's attempts: what is retried, how long to wait, when to give up. One path, a loop.

Errors are counted by kind, because they mean different things:

* a **429** says nothing about the pair: the rate controller pauses everyone, and the pair
  retries at once, up to ``max_rate_limited`` times (a safety net, not a budget);
* a **retryable error** (5xx, timeout, reset, bad body) may be the pair's own: it retries after
  a full-jitter backoff, uniform in ``[0, min(backoff_max, backoff_initial x 2^(n-1))]``, up to
  ``max_attempts`` in all; when they run out the pair fails for good only if ``blame`` says the
  failures are its own (other pairs were answered meanwhile). During an outage it keeps
  trying at the controller's pace, and the controller stops the run if the outage lasts;
* a **permanent error** (400, 404) stops at once.

A plain loop reads better than tenacity's machinery here and costs nothing on the common path
(a first attempt that works); the policy is a value, tested like tenacity tests its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import AttemptError, PermanentError, RateLimited, RetryableError

__all__ = ["Outcome", "RetryPolicy", "attempt_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one pair's request is retried."""

    max_attempts: int = 6  # attempts that may fail for the pair's own reasons
    max_rate_limited: int = 50  # 429s tolerated for one pair
    backoff_initial: float = 1.0  # seconds: the first backoff's upper bound
    backoff_max: float = 60.0  # seconds: no backoff is longer

    def backoff(self, errors: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Full jitter after the ``errors``-th failure: spreads the retries of many pairs that
        failed together (a blip on Braze's side) instead of sending them back as a herd."""
        return rng(0.0, min(self.backoff_max, self.backoff_initial * 2 ** max(errors - 1, 0)))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of a pair's attempts: a result, or the error it failed with for good."""

    attempts: int  # requests sent for the pair, 429s included
    error: AttemptError | None = None


async def attempt_with_retries(
    attempt: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    *,
    blame: Callable[[float], bool | Awaitable[bool]] = lambda since: True,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Outcome:
    """Call ``attempt`` until it succeeds or the pair fails for good.

    ``blame(since)``, asked once the attempts are used up, tells whether failures since
    clock time ``since`` are the pair's own (it may be a coroutine: the fetch asks Braze);
    ``clock`` defaults to the running loop's time (the rate controller's clock).
    """
    now = clock or asyncio.get_running_loop().time
    errors = limited = 0
    first_failure: float | None = None
    while True:
        try:
            await attempt()
            return Outcome(errors + limited + 1)
        except RateLimited as exc:
            limited += 1
            if limited >= policy.max_rate_limited:
                return Outcome(errors + limited, exc)
        except RetryableError as exc:
            errors += 1
            if first_failure is None:
                first_failure = now()
            if errors >= policy.max_attempts:
                own = blame(first_failure)
                if own if isinstance(own, bool) else await own:
                    return Outcome(errors + limited, exc)
            await sleep(policy.backoff(min(errors, policy.max_attempts)))
        except PermanentError as exc:
            return Outcome(errors + limited + 1, exc)
