"""The fetch: a feeder, a bounded queue and N workers, sharing one session and one pacer.

::

    RunState.pending() --feeder--> queue (2 x concurrency) --> N workers --> Checkpointer
                                                                 |
                                    RateController (when) + BrazeClient (how) + retry (again?)

Memory is bounded by the queue and the checkpointer, never by the number of pairs. A worker
takes a pair, fetches it under the retry policy (429s pause everyone; 5xx and timeouts back
off; a pair fails for good only for its own reasons), hands the body to the checkpointer,
and repeats. The supervisor ends the fetch on the first fatal error (a 401, a full disk), on
the pacer's verdict that Braze is unavailable, or on a stop request, after giving requests in
flight a grace period; whatever ends it, pairs not committed stay pending.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from .checkpoint import Checkpointer
from .client import BrazeClient
from .config import ExportConfig
from .limiter import RateController
from .pairs import Pair
from .retry import RetryPolicy, attempt_with_retries
from .state import FAILED, RunState
from .summary import ExportSummary, Progress

__all__ = ["FetchPool"]

log = logging.getLogger("bulkexport")

_STOP_GRACE = 5.0  # seconds in-flight requests get to finish after a stop request

Item = tuple[int, Pair] | None  # (pair id, pair), or None: no more work


class FetchPool:
    """Fetches every pending pair of a run into a checkpointer; one per fetch."""

    def __init__(
        self,
        cfg: ExportConfig,
        state: RunState,
        checkpointer: Checkpointer,
        stop: asyncio.Event,
        *,
        on_progress: Callable[[Progress], None] | None,
        progress_interval: float,
    ) -> None:
        self._cfg = cfg
        self._state = state  # pending pairs come from here
        self._ckpt = checkpointer  # fetched bodies and failures go there
        self._stop = stop  # set by a stop request (a signal)
        # Without a callback, a log line every ``progress_interval`` seconds (cron logs);
        # with one (a progress bar on a terminal), a snapshot twice a second.
        self._on_progress = on_progress
        self._progress_interval = progress_interval if on_progress is None else 0.5
        self._retry = RetryPolicy(cfg.max_attempts, cfg.max_rate_limited, cfg.backoff_initial, cfg.backoff_max)
        self._limiter = RateController(
            limit=cfg.rate_limit, window=cfg.window, share=cfg.share, reserve=cfg.reserve, burst=cfg.burst,
            max_rate=cfg.max_rate, max_pause=cfg.max_pause, max_outage=cfg.max_outage,
        )  # fmt: skip
        self._client: BrazeClient | None = None
        self._started = time.monotonic()
        self._total = state.count()  # pairs in the run, for progress
        self._done_before = 0  # pairs committed by earlier sessions
        self._failed_before = 0  # ... and failed for good in them
        self._retries = 0  # retries this session

    async def run(self, summary: ExportSummary) -> BaseException | None:
        """Fetch until no pair is pending or something ends the fetch; account into
        ``summary``. Returns what ended it early (the caller commits, then raises it)."""
        cfg = self._cfg
        self._started = time.monotonic()
        self._done_before = summary.pairs_resumed
        self._failed_before = self._state.count(FAILED)
        queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=cfg.concurrency * 2)
        try:
            async with BrazeClient(cfg, self._limiter) as client:
                self._client = client
                if self._done_before:  # a rerun of a few failing pairs has a canary too (no scan if none)
                    client.canary = self._state.a_done_pair()
                progress = asyncio.create_task(self._progress_loop())
                feeder = asyncio.create_task(self._feed(queue))
                workers = [asyncio.create_task(self._work(queue, client)) for _ in range(cfg.concurrency)]
                ckpt = asyncio.create_task(self._ckpt.run())
                try:
                    return await self._supervise(feeder, workers, ckpt)
                finally:
                    for t in (feeder, *workers, ckpt, progress):
                        t.cancel()
                    await asyncio.gather(feeder, *workers, ckpt, progress, return_exceptions=True)
                    if self._on_progress is not None:
                        self._on_progress(self.progress())  # the bar ends at the real count
                    self._account(client, summary)
        finally:
            await self._limiter.aclose()

    async def _supervise(
        self, feeder: asyncio.Task[None], workers: list[asyncio.Task[None]], ckpt: asyncio.Task[None]
    ) -> BaseException | None:
        """Wait for the workers; return the first fatal error (a worker's, the checkpoint
        loop's, or the pacer's verdict that Braze is unavailable). After a stop request,
        give in-flight requests a grace period, then abandon them (their pairs stay pending)."""
        pending: set[asyncio.Task[Any]] = set(workers)
        stop_wait = asyncio.create_task(self._stop.wait())
        outage = asyncio.create_task(self._limiter.failure())
        watched = {stop_wait, outage, ckpt}
        try:
            while pending:
                done, pending = await asyncio.wait(pending | watched, return_when=asyncio.FIRST_COMPLETED)
                pending -= watched
                if outage in done:
                    return outage.result()
                if ckpt in done:
                    return ckpt.exception()  # the checkpoint loop only ends by failing
                if stop_wait in done:
                    done.discard(stop_wait)
                    if pending:
                        finished, late = await asyncio.wait(pending, timeout=_STOP_GRACE)
                        for t in late:
                            t.cancel()
                        await asyncio.gather(*late, return_exceptions=True)
                        done |= finished
                        pending = set()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        return t.exception()
            if feeder.done() and not feeder.cancelled():
                return feeder.exception()
            return None
        finally:
            stop_wait.cancel()
            outage.cancel()

    async def _feed(self, queue: asyncio.Queue[Item]) -> None:
        finished = False
        try:
            for item in self._state.pending():
                if self._stop.is_set():
                    break
                await queue.put(item)
            finished = not self._stop.is_set()
        finally:
            if finished:
                for _ in range(self._cfg.concurrency):
                    await queue.put(None)
            else:
                # Stopping or failing: drop what is queued (it stays pending in the state)
                # and wake every idle worker.
                while not queue.empty():
                    queue.get_nowait()
                for _ in range(self._cfg.concurrency):
                    queue.put_nowait(None)

    async def _work(self, queue: asyncio.Queue[Item], client: BrazeClient) -> None:
        ckpt = self._ckpt
        while not self._stop.is_set():
            item = await queue.get()
            if item is None:
                return
            pid, pair = item
            outcome = await attempt_with_retries(
                functools.partial(self._attempt, client, pid, pair),
                self._retry,
                blame=functools.partial(self._own_fault, client, pair),
            )
            if outcome.error is None:
                ckpt.exported += 1
            else:
                ckpt.record_failure(pid, pair, outcome.error, outcome.attempts)
            self._retries += outcome.attempts - 1
            await ckpt.after_pair()

    async def _own_fault(self, client: BrazeClient, pair: Pair, since: float) -> bool:
        """Whether the failures of ``pair`` since loop time ``since`` are its own (its
        attempts are used up): yes if other requests were answered since; else Braze is asked
        about a pair it answered before (the canary), whose answer decides, even for a pair
        failing alone (a --retry-failed of one pair during an outage must stay pending);
        with nothing to ask, the limiter's rule (:meth:`RateController.blames`)."""
        limiter = self._limiter
        if limiter.answered_since(since):
            return True
        if await client.ask_canary(pair):
            return limiter.answered_since(since)
        return limiter.blames(pair, since)

    async def _attempt(self, client: BrazeClient, pid: int, pair: Pair) -> None:
        self._ckpt.add(pid, pair, await client.fetch(pair))

    def progress(self) -> Progress:
        """A snapshot of the fetch (counts include pairs not yet committed)."""
        lim, client = self._limiter, self._client
        return Progress(
            pairs_total=self._total,
            pairs_done=self._done_before + self._ckpt.exported,
            pairs_failed=self._failed_before + self._ckpt.failed,
            requests=client.requests if client else 0,
            rate_limited=lim.stats.rate_limited,
            paused_seconds=lim.stats.paused_seconds,
            pace=lim.target_rate,
            elapsed=time.monotonic() - self._started,
        )

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            p = self.progress()
            if self._on_progress is not None:
                self._on_progress(p)
                continue
            log.info("progress: %d/%d pairs done, %d failed, %d requests (%.1f/s), %d x 429, %.0fs paused",
                     p.pairs_done, p.pairs_total, p.pairs_failed, p.requests, p.request_rate, p.rate_limited,
                     p.paused_seconds)  # fmt: skip

    def _account(self, client: BrazeClient, s: ExportSummary) -> None:
        lim = self._limiter
        s.requests += client.requests
        s.retries += self._retries
        for k, v in client.statuses.items():
            s.statuses[k] = s.statuses.get(k, 0) + v
        s.fetch_seconds += time.monotonic() - self._started
        s.rate_limited += lim.stats.rate_limited
        s.paused_seconds += lim.stats.paused_seconds
        s.limit = lim.stats.limit
        s.base_rate = lim.base_rate
        s.max_in_flight = lim.stats.max_in_flight
