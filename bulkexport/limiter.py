"""Pacing against a rate limit shared with other clients: one dispatcher decides every start.

Workers ask :meth:`RateController.acquire` for a start and queue up (FIFO). A single
dispatcher task grants starts one at a time, and decides each one *at that moment*, from the
current state. A change of pace (feedback from headers, a learnt limit or window, a pause, a
reset) therefore reaches every waiting worker within one request interval: nobody has
committed to an old pace, nobody owes the limiter a debt across a reset, and no waiter can be
stranded in a bucket that was replaced.

What the dispatcher checks before each start:

1. **Pauses.** A 429 pauses everyone (``Retry-After`` when the server sent one, else until
   ``X-RateLimit-Reset``); then exactly one *probe* request goes out, and the pool resumes
   only when it is answered without a 429. A 429 on the probe escalates to waiting for the
   reset. A budget that is used up (``Remaining`` gone, reserve kept) pauses everyone until
   the reset, after which the pace is full again at once.
2. **The window's budget.** Every answer's ``X-RateLimit-Remaining`` counts the requests that
   reached Braze before it, so ``Remaining + (our starts up to that request)`` is the budget
   measured in our own start counter, exact whatever the latency and the order of answers.
   What we may still spend is that, minus our starts since, minus the reserve, minus what
   other clients will spend until the reset at their observed pace; the pace spreads it over
   the time left.
3. **The ceiling.** ``share x limit / window``, capped by ``max_rate``, metered by an
   aiolimiter bucket (``AsyncLimiter(burst, burst / rate)``: ``rate`` a second with room for
   ``burst``, never an hour's budget at once). Below the ceiling, starts are spaced at the
   budget's pace.

The limit is learnt from ``X-RateLimit-Limit`` and the window from the first two distinct
resets. Until then a reset on the configured window's clock grid (Braze: the top of the hour)
is taken to confirm it; one off the grid means the window is something else, at least the
longest time-to-reset seen, so the pace never falls below what the answers already allow.

Time is injectable: waits use the event loop's clock, reset headers are compared with
``wall()`` (``time.time`` by default), so tests drive hours of Braze time in a fake-time loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from aiolimiter import AsyncLimiter

__all__ = ["RateController", "RateStats", "Ticket", "retry_after_seconds"]

log = logging.getLogger("bulkexport")

_MIN_TIME_LEFT = 0.05  # seconds; avoids dividing by ~0 just before a reset
_PROJECT_AFTER = 0.05  # share of the window observed before others' pace is projected
_TRAIL = 0.1  # share of the window over which others' recent pace is measured
_MARKS = 100  # samples of others' spend kept per window (one per 1% of it)


class Ticket(NamedTuple):
    """One granted start; hand it back to :meth:`RateController.finish`."""

    seq: int  # our starts before this one (in this controller's life)
    at: float  # loop time of the grant
    probe: bool  # the single request let through after a pause


@dataclass(slots=True)
class RateStats:
    """What the controller saw; copied into the run summary."""

    limit: int | None = None  # X-RateLimit-Limit last seen
    window: float | None = None  # window length learnt from successive resets
    rate_limited: int = 0  # 429 responses
    pauses: int = 0  # times the whole pool was paused (429 or budget used up)
    paused_seconds: float = 0.0  # time requests were really held back by a pause
    probes: int = 0  # probe requests sent after a 429 pause
    max_in_flight: int = 0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's CIMultiDict is case-insensitive already; plain dicts (tests, HTTP/2 proxies
    # that lower-case names) are handled by trying the lower-case form too.
    value = headers.get(name)
    return headers.get(name.lower()) if value is None else value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def retry_after_seconds(value: str | None, wall: float) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or HTTP date), if usable."""
    if not value:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(value.strip()).timestamp() - wall
        except (TypeError, ValueError):
            return None
    return seconds if seconds >= 0 else None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RateController:
    """Decides when each request may start. One per run, shared by all workers."""

    __slots__ = (
        "_anchor", "_broken", "_bucket", "_bucket_rate", "_burst", "_escalation", "_first_anchor",
        "_first_wall", "_idle", "_in_flight", "_last_grant", "_limit", "_marks", "_max_pause", "_max_rate",
        "_max_time_left", "_pause_started", "_paused_until", "_probe", "_probe_next", "_reserve", "_reset",
        "_seen_reset", "_seen_wall", "_sent_time_left", "_seq", "_share", "_task", "_waiters", "_wake", "_wall",
        "_window", "_window_learnt", "stats",
    )  # fmt: skip

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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._limit = limit  # requests per window, as configured or learnt
        self._window = window  # window length assumed until headers teach otherwise
        self._window_learnt: float | None = None  # from two distinct resets
        self._max_time_left = 0.0  # longest time-to-reset seen: the window is at least this
        self._sent_time_left = 0.0  # the same, counted from when requests went out (a guess)
        self._share = share  # fraction of the limit to pace at, at most
        self._reserve = reserve  # fraction of each window's budget never spent
        self._burst = burst  # bucket capacity
        self._max_rate = max_rate  # optional hard cap, requests per second
        self._max_pause = max_pause  # cap on any single pause (bad headers)
        self._wall = wall  # epoch seconds, for X-RateLimit-Reset
        # -- the current window's budget (None: not known)
        self._reset: float | None = None  # epoch seconds of its reset
        self._anchor = 0.0  # min over answers of Remaining + starts up to that request
        self._first_anchor = 0.0  # the anchor at the window's first answer
        self._first_wall = 0.0  # when that answer came
        self._marks: list[tuple[float, float]] = []  # (wall, others' spend so far) samples
        self._seen_reset: float | None = None  # latest distinct reset seen, to learn the window
        self._seen_wall = 0.0  # when an answer last carried it
        # -- dispatching
        self._seq = 0  # starts granted so far
        self._in_flight = 0  # granted and not finished
        self._waiters: deque[asyncio.Future[Ticket]] = deque()  # workers waiting, FIFO
        self._wake: asyncio.Future[None] | None = None  # what the dispatcher sleeps on
        self._idle = False  # the dispatcher waits for a waiter (not for the pace)
        self._task: asyncio.Task[None] | None = None  # the dispatcher
        self._broken: BaseException | None = None  # the dispatcher died of this (a bug)
        self._bucket: AsyncLimiter | None = None  # burst and leak at the ceiling pace
        self._bucket_rate = 0.0  # the pace the bucket was built for
        self._last_grant = -math.inf  # loop time of the latest start
        # -- pauses
        self._paused_until = 0.0  # loop time before which nobody starts
        self._pause_started = -math.inf  # loop time the latest pause began
        self._probe_next = False  # the next start is a probe
        self._probe: Ticket | None = None  # the probe in flight: nobody else starts
        self._escalation = 0  # 429s on consecutive probes
        self.stats = RateStats()

    # -- public view ----------------------------------------------------------------------------
    @property
    def base_rate(self) -> float:
        """The ceiling: ``share x limit / window``, capped by ``max_rate``."""
        rate = self._share * self._limit / self._window_estimate()
        return rate if self._max_rate is None else min(rate, self._max_rate)

    @property
    def target_rate(self) -> float:
        """Pace right now: 0 while paused, else the ceiling or what the budget allows."""
        if self.paused or self._probe is not None:
            return 0.0
        budget = self._budget_rate(self._wall())
        return self.base_rate if budget is None else min(self.base_rate, budget)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def paused(self) -> bool:
        return self._paused_until > asyncio.get_running_loop().time()

    # -- workers' side --------------------------------------------------------------------------
    async def acquire(self) -> Ticket:
        """Wait until a request may start; pass the ticket to :meth:`finish` when it ends."""
        if self._broken is not None:
            raise RuntimeError("the rate controller failed") from self._broken
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name="bulkexport-dispatcher")
        fut: asyncio.Future[Ticket] = loop.create_future()
        self._waiters.append(fut)
        if self._idle:
            self._poke()
        try:
            ticket = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._abandon(fut.result())  # granted, but the worker is gone
            fut.cancel()
            raise
        self._in_flight += 1
        if self._in_flight > self.stats.max_in_flight:
            self.stats.max_in_flight = self._in_flight
        return ticket

    def finish(self, ticket: Ticket, status: int | None, headers: Mapping[str, str] | None) -> None:
        """The request of ``ticket`` ended: with an HTTP status and its headers, or without an
        answer (``None``: timeout, reset, cancelled)."""
        self._in_flight -= 1
        # The dispatcher re-reads everything at least once a second and at every reset; it is
        # woken early only by news that can start a request sooner.
        news = headers is not None and self._observe(ticket, status, headers)
        if status == 429:
            self._on_429(ticket, headers or {})
        elif ticket is self._probe:
            self._probe = None
            news = True
            if status is None:
                self._probe_next = True  # no verdict: the next start probes again
            else:
                self._escalation = 0
        if news:
            self._poke()

    def _abandon(self, ticket: Ticket) -> None:
        if ticket is self._probe:
            self._probe, self._probe_next = None, True
            self._poke()

    async def aclose(self) -> None:
        """Stop the dispatcher; waiting workers are cancelled."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._waiters:
            self._waiters.popleft().cancel()

    async def __aenter__(self) -> RateController:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- what the answers say -------------------------------------------------------------------
    def _observe(self, ticket: Ticket, status: int | None, headers: Mapping[str, str]) -> bool:
        """Learn from one answer's headers; True when the limit, the window or a new window's
        budget became known (the pace may rise)."""
        news = False
        limit = _number(_header(headers, "X-RateLimit-Limit"))
        reset = _number(_header(headers, "X-RateLimit-Reset"))
        if limit is not None and limit >= 1:
            if int(limit) != self._limit:
                log.info("Braze reports a limit of %d requests per window (assumed %d); pacing to it",
                         int(limit), self._limit)  # fmt: skip
                self._limit = int(limit)
                # Remaining jumps with the limit, nobody spent it: measure the budget afresh.
                self._reset = None
                news = True
            self.stats.limit = self._limit
        if reset is None:
            return news
        wall = self._wall()
        # Time to the reset as seen when the request went out: an answer that comes after its
        # window's reset still tells how long that window had left.
        sent = wall - (asyncio.get_running_loop().time() - ticket.at)
        self._sent_time_left = max(self._sent_time_left, reset - sent)
        news = self._learn_window(reset, wall) or news
        # A 429's Remaining says nothing reliable about the budget (Braze may send 0 with a
        # Retry-After of a second): the 429 path decides what to do.
        remaining = None if status == 429 else _number(_header(headers, "X-RateLimit-Remaining"))
        if remaining is None or reset <= wall:
            return news
        anchor = remaining + ticket.seq + 1
        if self._reset is None or reset > self._reset + 0.5:  # the first answer of a window
            self._reset, self._anchor, self._first_anchor, self._first_wall = reset, anchor, anchor, wall
            self._marks = [(wall, 0.0)]
            news = True
        elif reset >= self._reset - 0.5 and anchor < self._anchor:
            self._anchor = anchor
            if wall - self._marks[-1][0] >= self._window_estimate() / _MARKS:
                self._marks.append((wall, self._first_anchor - anchor))
        return news

    def _learn_window(self, reset: float, wall: float) -> bool:
        """True when a reset not seen before arrives (a new window, or the first)."""
        self._max_time_left = max(self._max_time_left, reset - wall)
        seen = self._seen_reset
        if seen is not None and reset <= seen + 0.5:
            if reset >= seen - 0.5:
                self._seen_wall = wall
            return False
        if seen is not None:
            step = reset - seen
            # A window nobody saw in between (a pause, an idle spell) would make the step a
            # multiple of the window. It cannot have happened if the step is under twice a
            # time-to-reset already seen (the window is at least that), nor if the answers on
            # either side of the reset came less than half the step apart (skipping a window
            # puts a whole window between them). Even so, keep the least step ever seen.
            consecutive = step < 2 * self._max_time_left or wall - self._seen_wall < step / 2
            if consecutive and (self._window_learnt is None or step < self._window_learnt * 0.99):
                self._window_learnt = step
                self.stats.window = step
                log.info("rate-limit window learnt from Braze's resets: %gs", step)
        self._seen_reset, self._seen_wall = reset, wall
        return True

    def _window_estimate(self) -> float:
        if self._window_learnt is not None:
            return self._window_learnt
        seen, window = self._seen_reset, self._window
        # Answers that all came after their window's reset still say how long it had left
        # when the requests went out; better than an hour's assumption for a short window.
        time_left = self._max_time_left or self._sent_time_left
        if seen is not None and time_left > 0:
            off_grid = abs(seen / window - round(seen / window)) * window > 1.0
            if off_grid or time_left > window:
                return time_left
        return window

    def _others_rate(self, wall: float) -> float:
        """Requests per second other clients spend from this window's budget.

        The anchor only falls when somebody else spends (our own starts are counted apart), so
        its fall is their spend, give or take our requests that overtook one another on the
        way: a request can only be overtaken by requests started while it was in flight, so
        up to "most ever in flight" of the fall is noise (connection set-up at the start of a
        run scrambles a few dozen). Only projected after a short observation, from the larger
        of the window's average and the recent pace, so a client that starts mid-window is
        seen quickly.
        """
        window = self._window_estimate()
        elapsed = wall - self._first_wall
        spent = self._first_anchor - self._anchor
        noise = max(self._burst, self.stats.max_in_flight)
        if spent <= noise or elapsed < _PROJECT_AFTER * window:
            return 0.0
        rate = (spent - noise) / elapsed
        horizon = wall - _TRAIL * window
        for at, before in self._marks:
            if at >= horizon:
                span = wall - at
                if span >= _PROJECT_AFTER * window:
                    rate = max(rate, (spent - before - noise) / span)
                break
        return max(rate, 0.0)

    def _budget_rate(self, wall: float) -> float | None:
        """What the window's budget allows per second until its reset: ``None`` when no budget
        is known (the pace is the ceiling), ``0`` when it is used up."""
        if self._reset is None:
            return None
        time_left = self._reset - wall
        if time_left <= 0:
            return None  # that window is over; the next one's budget is fresh
        usable = (
            self._anchor
            - self._seq
            - self._reserve * self._limit
            - self._others_rate(wall) * time_left
        )
        if usable < 1:
            return 0.0
        return usable / max(time_left, _MIN_TIME_LEFT)

    # -- pauses ---------------------------------------------------------------------------------
    def _on_429(self, ticket: Ticket, headers: Mapping[str, str]) -> None:
        self.stats.rate_limited += 1
        loop = asyncio.get_running_loop()
        probe = ticket is self._probe
        if not probe and (ticket.at < self._pause_started or self._probe is not None):
            return  # sent before the pause began: the same episode, already handled
        wall = self._wall()
        retry_after = retry_after_seconds(_header(headers, "Retry-After"), wall)
        reset = _number(_header(headers, "X-RateLimit-Reset")) or self._reset
        if probe:
            self._probe = None
            self._escalation += 1
        to_reset = False
        if retry_after is not None and not probe:
            wait, why = retry_after, "Retry-After"
        elif reset is not None and reset > wall:
            wait, why, to_reset = reset - wall, "the rate-limit reset", True
        else:  # nothing to go by: back off, doubling while probes keep failing
            wait, why = min(1.0, self._window_estimate() / 10) * 2**self._escalation, "a back-off"
        if wait > self._max_pause:
            wait, why = self._max_pause, f"{why}, capped"
        jitter = self._reset_jitter() if to_reset else min(1.0, 0.1 * wait)
        log.warning("HTTP 429%s: pausing all requests %.1fs (%s), then one probe request",
                    " on the probe" if probe else "", wait, why)  # fmt: skip
        self._pause(loop.time(), wait, jitter=jitter, probe=True)

    def _reset_jitter(self) -> float:
        """Waking at a reset: within a quarter second of it (several exporters of one
        workspace should not all start at the same instant, nor lose the window's start)."""
        return min(0.25, 0.01 * self._window_estimate())

    def _pause(self, now: float, seconds: float, *, jitter: float, probe: bool) -> None:
        """Nobody starts for ``seconds`` plus up to ``jitter``."""
        until = now + seconds + random.uniform(0, jitter)
        if until > self._paused_until:
            if self._paused_until <= now:
                self._pause_started = now
                self.stats.pauses += 1
            self._paused_until = until
        self._probe_next = self._probe_next or probe

    # -- the dispatcher -------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep(self, seconds: float | None, until: asyncio.Future[None] | None = None) -> None:
        """Until ``seconds`` pass (None: no limit), ``until`` is done, or something changes
        (:meth:`_poke`)."""
        loop = asyncio.get_running_loop()
        fut = self._wake = loop.create_future()
        handle = None if seconds is None else loop.call_later(seconds, _resolve, fut)
        if until is not None:
            until.add_done_callback(lambda _: _resolve(fut))
        try:
            await fut
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()

    async def _dispatch(self) -> None:
        try:
            while True:
                while self._waiters and self._waiters[0].done():
                    self._waiters.popleft()  # cancelled while waiting
                if not self._waiters:
                    self._idle = True
                    try:
                        await self._sleep(None)
                    finally:
                        self._idle = False
                    continue
                await self._clear_to_start()
                while self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        fut.set_result(self._grant())
                        break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: fail loudly rather than stall every worker
            self._broken = exc
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(RuntimeError("the rate controller failed"))
            raise

    def _grant(self) -> Ticket:
        now = asyncio.get_running_loop().time()
        ticket = Ticket(self._seq, now, self._probe_next)
        self._seq += 1
        self._last_grant = now
        if ticket.probe:
            self._probe, self._probe_next = ticket, False
            self.stats.probes += 1
        return ticket

    async def _clear_to_start(self) -> None:
        """Return when a request may start now; every condition is re-read after any wait."""
        loop = asyncio.get_running_loop()
        held_since: float | None = None  # when a pause started holding requests back
        while True:
            now = loop.time()
            if self._paused_until > now or self._probe is not None:
                held_since = now if held_since is None else held_since
                await self._sleep(self._paused_until - now if self._probe is None else None)
                continue
            if held_since is not None:
                self.stats.paused_seconds += now - held_since
                held_since = None
            wall = self._wall()
            budget = self._budget_rate(wall)
            if budget == 0.0:
                assert self._reset is not None
                time_left = self._reset - wall
                log.info("rate budget for this window used up (reserve kept); waiting %.1fs for the reset",
                         time_left)  # fmt: skip
                self._pause(now, min(time_left, self._max_pause), jitter=self._reset_jitter(), probe=False)
                continue
            ceiling = self.base_rate
            if budget is not None and budget < ceiling:
                due = self._last_grant + 1.0 / budget
                if due > now:
                    # Re-read at least every second and at the reset: a slow pace set near the
                    # end of a window must not outlive it.
                    assert self._reset is not None
                    await self._sleep(min(due - now, 1.0, max(self._reset - wall, 0.0)))
                    continue
            bucket = self._bucket
            if bucket is None or abs(self._bucket_rate - ceiling) > 0.01 * ceiling:
                bucket = self._bucket = AsyncLimiter(self._burst, self._burst / ceiling)
                self._bucket_rate = ceiling
            if bucket.has_capacity():
                await bucket.acquire()  # there is room: no wait
                return
            # Wait for the bucket, but never blindly: any news (a learnt window, a pause, a
            # new pace) cancels the wait and everything is read again.
            token = asyncio.ensure_future(bucket.acquire())
            await self._sleep(1.0, until=token)
            if not token.done():
                token.cancel()
                continue
            if self._paused_until <= loop.time() and self._probe is None:
                return
            # Paused while waiting for the bucket: that token goes unused.
