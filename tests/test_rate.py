"""Pacing against a clock-window limit compressed in time: the simulator enforces a few
hundred requests per one-second window, which is Braze's hourly window in miniature."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from bulkexport.simulator import FaultRule, Simulator

from .conftest import pairs_for, run

LIMIT, WINDOW, RESERVE = 200, 1.0, 0.1


def per_window(timestamps: list[float], window: float = WINDOW) -> list[int]:
    """Requests counted in each steady window: the first is partial, the last is partial,
    and the one before it is where the work runs out (the tail of the pairs), so all three
    are dropped."""
    counts = Counter(math.floor(t / window) for t in timestamps)
    keys = sorted(counts)
    return [counts[k] for k in keys[1:-2]]


def setup_sim(sim: Simulator) -> None:
    sim.rate_limit = LIMIT
    sim.rate_window = WINDOW


async def test_alone_uses_the_budget_minus_reserve_without_429(sim: Simulator, tmp_path: Path) -> None:
    setup_sim(sim)
    budget = LIMIT * (1 - RESERVE)
    summary = await run(sim, pairs_for(1300), tmp_path, rate_limit=LIMIT, window=WINDOW,
                        reserve=RESERVE, concurrency=32)
    assert summary.status == "complete"
    assert summary.rate_limited == 0 and sim.stats.by_status[429] == 0
    windows = per_window(sim.stats.timestamps)
    assert len(windows) >= 4
    # At least 95% of what we may use over the full windows (each one at least 80%, leaving
    # room for a scheduling hiccup on a shared machine), never more than limit minus reserve.
    assert sum(windows) / len(windows) >= 0.95 * budget, windows
    assert all(w >= 0.8 * budget for w in windows), windows
    assert all(w <= budget + 3 for w in windows), windows  # a request or two of slack


async def test_adapts_to_a_competing_client(sim: Simulator, tmp_path: Path) -> None:
    setup_sim(sim)
    stop = asyncio.Event()

    async def competitor() -> None:
        # Another workspace job steadily spending a third of the budget.
        while not stop.is_set():
            sim.spend(LIMIT // 3 // 20)
            await asyncio.sleep(WINDOW / 20)

    task = asyncio.create_task(competitor())
    try:
        summary = await run(sim, pairs_for(900), tmp_path, rate_limit=LIMIT, window=WINDOW,
                            reserve=RESERVE, concurrency=32)
    finally:
        stop.set()
        await task
    assert summary.status == "complete"
    assert summary.rate_limited <= 0.01 * summary.requests, (summary.rate_limited, summary.requests)
    ours = per_window(sim.stats.timestamps)
    # We got most of what the competitor left (limit - competitor - reserve).
    left = LIMIT - (LIMIT // 3 // 20) * 20 - LIMIT * RESERVE
    assert sum(ours) / len(ours) >= 0.85 * left, ours


async def test_sustains_the_limit_at_300ms_latency(sim: Simulator, tmp_path: Path) -> None:
    setup_sim(sim)
    sim.latency = 0.3
    budget = LIMIT * (1 - RESERVE)
    summary = await run(sim, pairs_for(1200), tmp_path, rate_limit=LIMIT, window=WINDOW,
                        reserve=RESERVE, concurrency=96)
    assert summary.rate_limited == 0
    windows = per_window(sim.stats.timestamps)
    assert len(windows) >= 3
    assert sum(windows) / len(windows) >= 0.95 * budget, windows
    assert all(w >= 0.8 * budget for w in windows), windows
    assert summary.max_in_flight >= budget * 0.3 * 0.8  # Little's law: rate x latency in flight


async def test_learns_a_limit_other_than_configured(sim: Simulator, tmp_path: Path) -> None:
    setup_sim(sim)
    # Configured for 400 but the workspace allows 200: the headers win, no 429 storm.
    summary = await run(sim, pairs_for(700), tmp_path, rate_limit=400, window=WINDOW,
                        reserve=RESERVE, concurrency=32)
    assert summary.limit == LIMIT
    assert summary.rate_limited <= 2
    assert all(w <= LIMIT for w in per_window(sim.stats.timestamps))


async def test_429_pauses_everyone_and_caps_retry_after(sim: Simulator, tmp_path: Path) -> None:
    # A 429 whose Retry-After says "a day": capped by max_pause, and nobody sends meanwhile.
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="86400", times=1,
                                match=lambda c, s: s == "s00005"))
    started = time.monotonic()
    summary = await run(sim, pairs_for(60), tmp_path, max_pause=1.0, concurrency=8)
    assert summary.status == "complete"
    assert summary.rate_limited == 1
    assert 1.0 <= summary.paused_seconds <= 1.0 + 0.03  # the cap plus at most its jitter
    assert time.monotonic() - started < 10
    ts = sorted(sim.stats.timestamps)
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert max(gaps) >= 0.95  # the pool really stood still


async def test_429_with_retry_after_then_gradual_ramp(sim: Simulator, tmp_path: Path) -> None:
    sim.rate_limit = 400
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="0.5", times=1,
                                match=lambda c, s: s == "s00003"))
    summary = await run(sim, pairs_for(200), tmp_path, rate_limit=400, window=WINDOW, reserve=0.0, concurrency=32)
    assert summary.status == "complete" and summary.rate_limited == 1
    ts = sorted(sim.stats.timestamps)
    gap_at = max(range(1, len(ts)), key=lambda i: ts[i] - ts[i - 1])
    resumed = ts[gap_at]
    # Right after the pause the pace ramps from a quarter to full over a quarter of the
    # window: the first 100 ms after resuming hold the burst (10) plus about 40% of full
    # pace (16 of 40), against 50 without a ramp.
    first = sum(1 for t in ts if resumed <= t < resumed + 0.1)
    assert first <= 10 + 16 + 6, first


async def test_own_requests_answered_out_of_order_do_not_read_as_a_competitor() -> None:
    """An hour-long window, 90 of our requests counted by the server but not yet answered
    (slow responses, out of order): that must not look like another client spending 75 req/s
    and pause the exporter until the next hour."""
    from bulkexport.limiter import RateController

    limiter = RateController(limit=250_000, window=3600.0, reserve=0.1)
    reset = str(int(time.time()) + 3599)
    limiter.observe({"X-RateLimit-Limit": "250000", "X-RateLimit-Remaining": "249990", "X-RateLimit-Reset": reset})
    await asyncio.sleep(1.2)
    limiter.observe({"x-ratelimit-limit": "250000", "x-ratelimit-remaining": "249900", "x-ratelimit-reset": reset})
    assert not limiter.paused
    # The pace is what the budget minus the reserve allows over the rest of the hour.
    assert limiter.target_rate == pytest.approx((249_900 - 25_000) / 3598, rel=0.01)
