"""Pacing against a rate limit shared with other clients: a token bucket steered by the server.

Three layers, each simple:

1. **Token bucket** (aiolimiter): ``AsyncLimiter(burst, burst / rate)`` leaks ``rate`` tokens a
   second with room for ``burst`` -- not ``AsyncLimiter(limit, 3600)``, which would allow an
   hour's budget in one instant. A request costs ``base_rate / target_rate`` tokens, so one
   bucket serves any target pace at or below the base pace without being rebuilt.
2. **Feedback** (:meth:`RateController.observe`): every response's ``X-RateLimit-Limit``,
   ``-Remaining`` and ``-Reset`` tell how much of the window is left. The pace is capped so
   that the budget we may use (remaining, minus requests of ours still in flight, minus the
   reserve kept for other traffic) lasts until the reset; when it is gone, everyone waits for
   the reset. The limit is learnt from the header and the window length from successive
   resets, so a workspace whose limit Braze raised is used at its real size.
3. **429** (:meth:`RateController.on_rate_limited`): one pause for the whole pool until
   ``Retry-After`` or the reset (capped, with jitter), then a linear ramp from a quarter of the
   pace back to full, so waking workers do not arrive as a herd.

Concurrency is separate: workers only start a request after :meth:`acquire`, so requests in
flight settle at rate x latency (Little's law) up to the pool size, and slow responses do not
lower throughput while the pool is large enough.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

__all__ = ["RateController", "RateStats"]

log = logging.getLogger("bulkexport")

_RAMP_FLOOR = 0.25  # fraction of the pace right after a 429 pause
_MIN_TIME_LEFT = 0.05  # seconds; avoids dividing by ~0 just before a reset


@dataclass(slots=True)
class RateStats:
    """What the controller saw; copied into the run summary."""

    limit: int | None = None  # X-RateLimit-Limit last seen
    window: float | None = None  # window length learnt from successive resets
    rate_limited: int = 0  # 429 responses
    pauses: int = 0  # global pauses (429 or budget exhausted)
    paused_seconds: float = 0.0  # time the pool spent paused
    throttled: int = 0  # times feedback lowered the pace below the base pace
    max_in_flight: int = 0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's CIMultiDict is case-insensitive already; plain dicts (tests, HTTP/2 proxies
    # that lower-case names) are handled by trying the lower-case form too.
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class RateController:
    """Decides when the next request may start. One per run, shared by all workers."""

    __slots__ = (
        "_base_rate",
        "_bucket",
        "_burst",
        "_configured_rate",
        "_in_flight",
        "_limit",
        "_max_pause",
        "_max_rate",
        "_paused_until",
        "_ramp_from",
        "_ramp_seconds",
        "_remaining",
        "_reserve",
        "_reset",
        "_share",
        "_target",
        "_win_first",
        "_win_own",
        "_win_start",
        "_window",
        "stats",
    )

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        share: float = 1.0,
        reserve: float = 0.0,
        burst: int = 10,
        max_rate: float | None = None,
        max_pause: float = 3660.0,
    ) -> None:
        self._limit = limit  # requests per window, as configured or learnt
        self._window = window  # seconds per window, as configured or learnt
        self._share = share  # fraction of the limit this exporter paces at
        self._reserve = reserve  # fraction of each window's budget never spent
        self._burst = burst  # bucket capacity
        self._max_rate = max_rate  # optional hard cap, requests per second
        self._max_pause = max_pause  # cap on any single pause (bad headers)
        self._configured_rate = 0.0  # base pace, before feedback
        self._base_rate = 0.0  # rate the bucket leaks at
        self._bucket: AsyncLimiter | None = None  # built lazily inside the running loop
        self._target = 0.0  # pace allowed by feedback, requests per second
        self._reset: float | None = None  # epoch seconds of the current window's reset
        self._remaining: float | None = None  # lowest remaining seen in the current window
        self._win_first: float | None = None  # remaining at the first answer of this window
        self._win_start = 0.0  # epoch seconds of that first answer
        self._win_own = 0  # our answers seen in this window
        self._in_flight = 0  # requests started and not finished
        self._paused_until = 0.0  # loop time before which nobody starts
        self._ramp_from: float | None = None  # loop time a post-429 ramp started
        self._ramp_seconds = 0.0  # ramp duration
        self.stats = RateStats()
        self._set_base()

    # -- pace ---------------------------------------------------------------------------------
    @property
    def base_rate(self) -> float:
        """Pace before feedback: ``share x limit / window``, capped by ``max_rate``."""
        return self._configured_rate

    @property
    def target_rate(self) -> float:
        """Pace right now, after feedback and any post-429 ramp."""
        rate = self._target
        if self._ramp_from is not None:
            loop_now = asyncio.get_running_loop().time()
            progress = (loop_now - self._ramp_from) / self._ramp_seconds if self._ramp_seconds else 1
            if progress >= 1:
                self._ramp_from = None
            else:
                rate *= _RAMP_FLOOR + (1 - _RAMP_FLOOR) * max(progress, 0.0)
        return rate

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _set_base(self) -> None:
        rate = self._share * self._limit / self._window
        if self._max_rate is not None:
            rate = min(rate, self._max_rate)
        self._configured_rate = rate
        self._target = min(self._target, rate) if self._target else rate
        if rate != self._base_rate:
            self._base_rate = rate
            self._bucket = None  # rebuilt at the next acquire, at the new leak rate

    async def acquire(self) -> None:
        """Wait until a request may start; the caller must call :meth:`release` after it."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._paused_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            bucket = self._bucket
            if bucket is None:
                bucket = self._bucket = AsyncLimiter(self._burst, self._burst / self._base_rate)
            rate = self.target_rate
            cost = self._base_rate / rate if rate > 0 else float(self._burst)
            # A cost above the bucket's capacity is paid in instalments.
            while cost > self._burst:
                await bucket.acquire(self._burst)
                cost -= self._burst
            await bucket.acquire(max(cost, 1e-9))
            if self._paused_until <= loop.time():
                break
        self._in_flight += 1
        if self._in_flight > self.stats.max_in_flight:
            self.stats.max_in_flight = self._in_flight

    def release(self) -> None:
        self._in_flight -= 1

    # -- feedback -----------------------------------------------------------------------------
    def observe(self, headers: Mapping[str, str]) -> None:
        """Steer the pace from one response's rate-limit headers (any status)."""
        limit = _number(_header(headers, "X-RateLimit-Limit"))
        remaining = _number(_header(headers, "X-RateLimit-Remaining"))
        reset = _number(_header(headers, "X-RateLimit-Reset"))
        if limit is not None and limit >= 1 and int(limit) != self._limit:
            log.info(
                "Braze reports a limit of %d requests per window (configured %d); pacing to it",
                int(limit), self._limit,
            )
            self._limit = int(limit)
            self.stats.limit = self._limit
            self._set_base()
        elif limit is not None:
            self.stats.limit = int(limit)
        if remaining is None or reset is None:
            return
        if self._reset is None or reset > self._reset + 1e-6:
            if self._reset is not None:
                # Successive resets differ by one window length, or a multiple of it after an
                # idle spell: only a shorter step than we assumed teaches us something.
                step = reset - self._reset
                if step < self._window * 0.99:
                    self._window = step
                    self._set_base()
                self.stats.window = self._window
            self._reset = reset  # a new window: its budget replaces the old one's
            self._remaining = remaining
            self._win_first, self._win_start, self._win_own = remaining, time.time(), 1
        elif reset < self._reset - 1e-6:
            return  # a late answer from the previous window
        else:
            self._win_own += 1
            if self._remaining is None or remaining < self._remaining:
                self._remaining = remaining
        self._steer()

    def _others_rate(self, now: float) -> float:
        """Requests per second that other clients are spending from this window's budget.

        The drop in ``Remaining`` since the window's first answer, minus our own answers in
        between, is what others spent: every ``Remaining`` we see was computed when its
        request arrived, so it counts our requests answered by then, not those in flight.
        Only trusted after a short observation period.
        """
        if self._win_first is None or self._remaining is None:
            return 0.0
        elapsed = now - self._win_start
        # Answers arrive out of order, so up to "in flight" of our own requests can look like
        # someone else's for a while; over a twentieth of the window (3 minutes of Braze's
        # hour) that error is spread thin. Earlier, 64 slow requests in flight one second
        # into the hour would have read as 64 req/s of others and paused us for the hour.
        if elapsed < 0.05 * self._window:
            return 0.0
        others = (self._win_first - self._remaining) - (self._win_own - 1)
        return max(others, 0.0) / elapsed

    def _steer(self) -> None:
        assert self._reset is not None and self._remaining is not None
        now = time.time()
        time_left = self._reset - now
        loop = asyncio.get_running_loop()
        if time_left <= 0:
            self._target = self._configured_rate
            return
        # What we may still spend before the reset: what is left, minus our requests not yet
        # counted in it, minus the reserve, minus what others will spend meanwhile at their
        # current pace.
        usable = (
            self._remaining
            - self._in_flight
            - self._reserve * self._limit
            - self._others_rate(now) * time_left
        )
        if usable <= 0:
            if not self.paused:
                log.info("rate budget for this window used up (reserve kept); waiting %.1fs for the reset", time_left)
            self._pause(time_left, loop)
            return
        allowed = usable / max(time_left, _MIN_TIME_LEFT)
        if allowed < self._configured_rate:
            if self._target >= self._configured_rate:
                self.stats.throttled += 1
            self._target = allowed
        else:
            self._target = self._configured_rate

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: pause everyone until the server's hint or the reset, then ramp up."""
        self.stats.rate_limited += 1
        loop = asyncio.get_running_loop()
        wait = retry_after
        if wait is None and self._reset is not None:
            wait = self._reset - time.time()
        if wait is None or wait <= 0:
            wait = min(1.0, self._window / 10)
        if not self.paused:
            log.warning(
                "HTTP 429: pausing all requests for %.1fs%s", min(wait, self._max_pause),
                " (Retry-After capped)" if wait > self._max_pause else "",
            )
        self._pause(wait, loop, jitter_share=0.02)
        self._ramp_from = self._paused_until
        self._ramp_seconds = min(10.0, self._window / 4)

    def _pause(self, seconds: float, loop: asyncio.AbstractEventLoop, jitter_share: float = 0.005) -> None:
        """Nobody starts a request for ``seconds`` (capped) plus a little jitter, which keeps
        several exporters of one workspace from waking at the same instant."""
        seconds = min(seconds, self._max_pause)
        jitter = random.uniform(0, min(1.0, self._window * jitter_share))
        until = loop.time() + seconds + jitter
        if until > self._paused_until:
            start = max(loop.time(), self._paused_until)
            self.stats.paused_seconds += until - start
            if self._paused_until <= loop.time():
                self.stats.pauses += 1
            self._paused_until = until
        # After a pause the window has turned: forget its budget until the server says more.
        self._target = self._configured_rate
        self._remaining = None
        self._reset = None
        self._win_first = None

    @property
    def paused(self) -> bool:
        return self._paused_until > asyncio.get_running_loop().time()
