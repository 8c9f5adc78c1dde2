"""When each request may start: one dispatcher, deciding every start at that moment.

Workers ask :meth:`RateController.acquire` for a start and queue up (FIFO). A single
dispatcher grants starts from the *current* state, a batch at a time (a second of the pace:
69 at once every second at Braze's default, rather than one every 14 ms, which woke the
process for each request), so a change of pace (feedback from headers, a learnt limit or
window, a pause, a reset) reaches every waiting worker within one batch: nobody has committed
to an old pace, nobody owes a debt across a reset, no waiter is stranded. Its waits are cut
short by news (a learnt window, a new window's budget, a probe's answer) and re-read at least
every second and at every reset.

Before each start the dispatcher checks, in order:

1. **Pauses.** A 429 pauses everyone: ``Retry-After`` when the server sent one, else until
   ``X-RateLimit-Reset``; then exactly one *probe* goes out and the pool resumes only once it
   is answered without a 429 (a 429 on the probe waits for the reset, or while it says the
   window has budget left, for its ``Retry-After`` doubled). A used-up budget pauses
   everyone until the reset, after which the pace is full again at once.
2. **Outage.** Timeouts, refused connections and 5xx from several pairs with nothing answered
   well for a spell open a breaker: growing pauses, one probe at a time, full pace again once a
   probe is answered. An outage longer than ``max_outage`` stops the run
   (:class:`BrazeUnavailable`), the pairs staying pending.
3. **The window's budget** (:class:`~bulkexport.budget.WindowBudget`): below the ceiling,
   starts are spaced at the pace that spreads what is left until the reset.
4. **The ceiling**, ``share x limit / window``: an aiolimiter bucket,
   ``AsyncLimiter(burst, burst / rate)``: ``rate`` a second with room for ``burst`` (by
   default a batch: a second of the pace, at least :data:`MIN_BURST`), never an hour's budget
   at once.

Time is injectable: waits use the event loop's clock, reset headers are compared with
``wall()`` (``time.time`` by default), so tests drive hours of Braze time in a virtual-time loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import TracebackType

from aiolimiter import AsyncLimiter

from .budget import WindowBudget, retry_after_seconds
from .errors import BrazeUnavailable
from .outage import Outage
from .pauses import Alarm, Pauses, Ticket

__all__ = ["MIN_BURST", "RateController", "RateStats", "Ticket", "retry_after_seconds"]

#: Starts are granted in batches of up to this many seconds' worth of the pace (and at most
#: the burst): see :meth:`RateController._batch`. A batch spans at most this share of the
#: window too, since its tail is what a batch can leave unspent at a reset: nothing on Braze's
#: hour (1 s of 3,600), but a compressed 2-second window is paced start by start.
_TICK = 1.0
_TICK_SHARE = 0.001
#: The bucket's capacity when no burst is given is a batch (a tick of the ceiling pace), and
#: at least this: room for a few starts at once where a tick holds fewer (slow paces,
#: compressed windows). It is also the most that goes out at once before any answer has told
#: the window's budget: the first starts of a run know nothing of what is left of the hour.
MIN_BURST = 10
#: ... and never more than this share of a window's worth of the pace at once (a workspace
#: limited to 5 requests an hour gets one at a time).
_BURST_SHARE = 0.05

log = logging.getLogger("bulkexport")


@dataclass(slots=True)
class RateStats:
    """What the controller saw; copied into the run summary."""

    limit: int | None = None  # X-RateLimit-Limit last seen
    window: float | None = None  # window length learnt from successive resets
    rate_limited: int = 0  # 429 responses
    pauses: int = 0  # times the whole pool was paused (429, used-up budget, outage)
    paused_seconds: float = 0.0  # time requests were really held back by a pause
    probes: int = 0  # probe requests sent after a pause
    outages: int = 0  # times the breaker opened
    max_in_flight: int = 0


class RateController:
    """Decides when each request may start. One per run, shared by all workers."""

    __slots__ = (
        "_alarm", "_broken", "_bucket", "_bucket_rate", "_budget", "_burst", "_capacity", "_failed", "_idle",
        "_in_flight", "_last_batch", "_last_grant", "_max_pause", "_outage", "_pauses", "_seq", "_task", "_waiters",
        "_wall", "stats",
    )  # fmt: skip

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        share: float = 1.0,
        reserve: float = 0.0,
        burst: int | None = None,
        max_rate: float | None = None,
        max_pause: float = 3660.0,
        max_outage: float = 300.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._budget = WindowBudget(limit=limit, window=window, share=share, reserve=reserve, max_rate=max_rate)
        self._burst = burst  # bucket capacity as given; None: a batch (see _capacity_for)
        self._capacity = burst or MIN_BURST  # the bucket's capacity now
        self._max_pause = max_pause  # cap on any single pause (bad headers)
        self._wall = wall  # epoch seconds, for X-RateLimit-Reset
        # -- dispatching
        self._seq = 0  # starts granted so far
        self._in_flight = 0  # granted and not finished
        self._waiters: deque[asyncio.Future[Ticket]] = deque()  # workers waiting, FIFO
        self._alarm = Alarm()  # what the dispatcher sleeps on
        self._idle = False  # the dispatcher waits for a waiter (not for the pace)
        self._task: asyncio.Task[None] | None = None  # the dispatcher
        self._broken: BaseException | None = None  # the dispatcher died of this (a bug)
        self._failed: asyncio.Future[BrazeUnavailable] | None = None  # set when the run must stop
        self._bucket: AsyncLimiter | None = None  # burst and leak at the ceiling pace
        self._bucket_rate = 0.0  # the pace the bucket was built for
        self._last_grant = -math.inf  # loop time of the latest start
        self._last_batch = 1  # starts granted together last time
        self._pauses = Pauses()  # 429s, used-up budgets and outages hold everyone, then one probe
        self._outage = Outage(max_outage)  # the breaker
        self.stats = RateStats()

    # -- public view ----------------------------------------------------------------------------
    @property
    def base_rate(self) -> float:
        """The ceiling: ``share x limit / window``, capped by ``max_rate``."""
        return self._budget.ceiling()

    @property
    def target_rate(self) -> float:
        """Pace right now: 0 while paused, else the ceiling or what the budget allows."""
        if self._pauses.holding(asyncio.get_running_loop().time()):
            return 0.0
        allowed = self._budget.allowed(self._wall(), self._seq, self._noise())
        return self.base_rate if allowed is None else min(self.base_rate, allowed)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def outage_open(self) -> bool:
        """The breaker is open: starts are probes, one at a time, until one is answered."""
        return self._outage.open

    @property
    def paused(self) -> bool:
        return self._pauses.until > asyncio.get_running_loop().time()

    def blames(self, key: Hashable, since: float) -> bool:
        """Whether failures of ``key`` since loop time ``since`` are its own (see
        :class:`~bulkexport.outage.Outage`): a pair fails for good only then."""
        return self._outage.blames(key, since)

    def answered_since(self, since: float) -> bool:
        """Whether any request was answered well after loop time ``since``."""
        return self._outage.answered_since(since)

    async def failure(self) -> BrazeUnavailable:
        """Returns (never raises) when the run must stop because Braze is unavailable."""
        return await self._failure_future()

    # -- workers' side --------------------------------------------------------------------------
    async def acquire(self, key: Hashable = None) -> Ticket:
        """Wait until a request for ``key`` may start; pass the ticket to :meth:`finish`."""
        if self._broken is not None:
            raise RuntimeError("the rate controller failed") from self._broken
        failed = self._failure_future()
        if failed.done():
            raise failed.result()
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name="bulkexport-dispatcher")
        fut: asyncio.Future[Ticket] = loop.create_future()
        self._waiters.append(fut)
        if self._idle:
            self._alarm.poke()
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
        return Ticket(ticket.seq, ticket.at, ticket.probe, key)

    def finish(
        self, ticket: Ticket, status: int | None, headers: Mapping[str, str] | None, *, failed: bool = False
    ) -> None:
        """The request of ``ticket`` ended: with an HTTP status and its headers, or without an
        answer (``status`` None): ``failed`` for a timeout, reset or refusal, not for a cancel."""
        self._in_flight -= 1
        loop = asyncio.get_running_loop()
        # The dispatcher is woken early only by news that can start a request sooner.
        news = False
        if headers is not None:
            sent = self._wall() - (loop.time() - ticket.at)
            news = self._budget.observe(ticket.seq, sent, self._wall(), status, headers)
            self.stats.limit, self.stats.window = self._budget.limit, self._budget.learnt_window
        pauses = self._pauses
        probe = pauses.is_probe(ticket)
        if probe:
            pauses.probe, news = None, True
        if status == 429:
            self._on_429(ticket, headers or {}, probe)
        elif failed or (status is not None and (status >= 500 or status in (408, 425))):
            now = loop.time()
            pause = self._outage.sick(ticket.key, ticket.at, status, probe, now)
            if pause is not None:
                self._pause(now, pause, jitter=0.1 * pause, probe=True)
            elif probe:
                pauses.probe_next = True
            self.stats.outages = self._outage.opened
        elif status is not None:
            now = loop.time()
            if self._outage.healthy(now):
                pauses.until = min(pauses.until, now)  # the breaker's pause is over
                news = True
            pauses.escalation = 0 if probe else pauses.escalation
        elif probe:
            pauses.probe_next = True  # no verdict (cancelled): the next start probes again
        if news:
            self._alarm.poke()

    def _abandon(self, ticket: Ticket) -> None:
        if ticket.probe:
            self._pauses.probe_again()
            self._alarm.poke()

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

    def _noise(self) -> float:
        return max(self._capacity, self.stats.max_in_flight)

    # -- pauses ---------------------------------------------------------------------------------
    def _on_429(self, ticket: Ticket, headers: Mapping[str, str], probe: bool) -> None:
        self.stats.rate_limited += 1
        loop = asyncio.get_running_loop()
        pauses = self._pauses
        if not probe and pauses.same_episode(ticket):
            return  # sent before the pause began: the same episode, already handled
        pauses.escalation += probe
        wait, why, to_reset = self._budget.after_429(headers, self._wall(), probe, pauses.escalation, self._max_pause)
        log.warning("HTTP 429%s: pausing all requests %.1fs (%s), then one probe request",
                    " on the probe" if probe else "", wait, why)  # fmt: skip
        self._pause(loop.time(), wait, jitter=self._reset_jitter() if to_reset else min(1.0, 0.1 * wait), probe=True)

    def _reset_jitter(self) -> float:
        """Waking at a reset: within a quarter second of it (several exporters of one
        workspace should not all start at the same instant, nor lose the window's start)."""
        return min(0.25, 0.01 * self._budget.window_estimate())

    def _pause(self, now: float, seconds: float, *, jitter: float, probe: bool) -> None:
        """Nobody starts for ``seconds`` plus up to ``jitter``."""
        self.stats.pauses += self._pauses.hold(now, seconds, jitter=jitter, probe=probe)

    def _failure_future(self) -> asyncio.Future[BrazeUnavailable]:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    def _outage_left(self, now: float) -> float | None:
        """Seconds the outage may still last (None: no outage); the run's verdict after."""
        try:
            return self._outage.left(now)
        except BrazeUnavailable as exc:
            failed = self._failure_future()
            if not failed.done():
                failed.set_result(exc)
            raise

    # -- the dispatcher -------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._waiters and self._waiters[0].done():
                    self._waiters.popleft()  # cancelled while waiting
                if not self._waiters:
                    self._idle = True
                    try:
                        await self._alarm.sleep(self._outage_left(loop.time()))
                    finally:
                        self._idle = False
                    continue
                starts = await self._clear_to_start()
                granted = 0
                while granted < starts and self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        ticket = self._grant()
                        fut.set_result(ticket)
                        granted += 1
                        if ticket.probe:
                            break  # the probe goes out alone
                self._last_batch = max(granted, 1)
        except asyncio.CancelledError:
            raise
        except BrazeUnavailable as exc:  # the run stops: every waiter learns why
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException as exc:  # a bug: fail loudly rather than stall every worker
            self._broken = exc
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(RuntimeError("the rate controller failed"))
            raise

    def _grant(self) -> Ticket:
        now = asyncio.get_running_loop().time()
        ticket = Ticket(self._seq, now, self._pauses.probe_next, None)
        self._seq += 1
        self._last_grant = now
        self._pauses.granted(ticket)
        self.stats.probes += ticket.probe
        return ticket

    def _tick(self) -> float:
        return min(_TICK, _TICK_SHARE * self._budget.window_estimate())

    def _capacity_for(self, ceiling: float) -> int:
        """The bucket's capacity at ``ceiling``: the burst when one was given, else a batch
        of that pace (at least :data:`MIN_BURST`), so batches are never held back by the
        bucket and a start after an idle spell spends no more than one batch at once.

        Two limits on a batch by default: :data:`MIN_BURST` until an answer has told the
        window's budget (a run resumed near the end of a spent hour, or a workspace whose
        real limit is far below the configured one, must not open with 64 requests Braze
        will refuse), and at most :data:`_BURST_SHARE` of a window's worth of the pace."""
        if self._burst is not None:
            return self._burst
        batch = MIN_BURST if self._budget.reset is None else max(MIN_BURST, int(ceiling * self._tick()))
        return max(1, min(batch, int(ceiling * self._budget.window_estimate() * _BURST_SHARE)))

    def _batch(self, rate: float, until_reset: float | None) -> int:
        """How many starts to grant together at ``rate``: a tick's worth, at most the burst,
        the workers waiting and what the pace allows before the reset, and one for a probe.

        Starts granted one at a time, 14 ms apart at the default pace, each wake the whole
        process for one request; the fewer wake-ups, the less CPU at the same pace: the whole
        export at Braze's default measured ~9 % of a core one at a time, and in alternating
        runs (medians) 3.6-3.8 % ten at a time (a quarter second), 2.9-3.1 % a second's worth
        at a time (``benchmarks/README.md``, paced). Near a reset the batch shrinks, so that
        gathering one never carries starts this window allows past its end."""
        if self._pauses.probe_next:
            return 1
        starts = min(self._capacity, int(rate * self._tick()), len(self._waiters))
        if until_reset is not None:
            starts = min(starts, int(rate * until_reset))
        return max(1, starts)

    async def _clear_to_start(self) -> int:
        """Return how many requests may start now (at least one); every condition is re-read
        after any wait."""
        loop = asyncio.get_running_loop()
        entered = loop.time()
        held_since: float | None = None  # when a pause started holding requests back
        while True:
            now = loop.time()
            outage_left = self._outage_left(now)
            pauses = self._pauses
            if pauses.holding(now):
                if held_since is None:
                    # From the pause's start, though a wait for the bucket may end after it.
                    held_since = min(now, max(entered, pauses.started))
                wait = None if pauses.probe is not None else pauses.until - now
                if outage_left is not None:
                    wait = outage_left if wait is None else min(wait, outage_left)
                await self._alarm.sleep(wait)
                continue
            if held_since is not None:
                self.stats.paused_seconds += now - held_since
                held_since = None
            wall = self._wall()
            allowed = self._budget.allowed(wall, self._seq, self._noise())
            reset = self._budget.reset
            if allowed == 0.0 and reset is not None:
                log.info("rate budget for this window used up (reserve kept); waiting %.1fs for the reset",
                         reset - wall)  # fmt: skip
                self._pause(now, min(reset - wall, self._max_pause), jitter=self._reset_jitter(), probe=False)
                continue
            ceiling = self.base_rate
            pace = ceiling
            if allowed is not None and reset is not None and allowed < ceiling:
                pace = allowed
                # The last batch's share of this pace, counting at most a batch of it: a batch
                # granted at a faster pace just before (the limit has just dropped) is already
                # in the budget's count of starts, and is not repaid by seconds of silence.
                due = self._last_grant + min(self._last_batch, max(1, int(allowed * self._tick()))) / allowed
                if due > now:
                    # Re-read at least every second and at the reset: a slow pace set near the
                    # end of a window must not outlive it.
                    await self._alarm.sleep(min(due - now, 1.0, max(reset - wall, 0.0)))
                    continue
            bucket = self._bucket
            capacity = self._capacity_for(ceiling)
            if bucket is None or abs(self._bucket_rate - ceiling) > 0.01 * ceiling or capacity != self._capacity:
                bucket = self._bucket = AsyncLimiter(capacity, capacity / ceiling)
                self._bucket_rate, self._capacity = ceiling, capacity
            starts = self._batch(pace, None if reset is None or reset <= wall else reset - wall)
            if bucket.has_capacity(starts):
                await bucket.acquire(starts)  # there is room: no wait
                return starts
            # Wait for the bucket, but never blindly: news (a learnt window, a pause, a new
            # pace) cancels the wait and everything is read again.
            token = asyncio.ensure_future(bucket.acquire(starts))
            await self._alarm.sleep(1.0, until=token)
            if not token.done():
                token.cancel()
                continue
            if not self._pauses.holding(loop.time()):
                return starts
            # Paused while waiting for the bucket: that token goes unused.
