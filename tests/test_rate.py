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

from .helpers import pairs_for, run

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
    # The cap, plus at most its jitter (a tenth of it), plus the probe's round trip.
    assert 1.0 <= summary.paused_seconds <= 1.0 + 0.1 + 0.3
    assert time.monotonic() - started < 10
    ts = sorted(sim.stats.timestamps)
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert max(gaps) >= 0.95  # the pool really stood still


async def test_after_a_429_one_probe_goes_alone_then_the_pool_resumes(sim: Simulator, tmp_path: Path) -> None:
    sim.latency = 0.05
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="0.5", times=1,
                                match=lambda c, s: s == "s00003"))
    summary = await run(sim, pairs_for(200), tmp_path, concurrency=16)
    assert summary.status == "complete" and summary.rate_limited == 1
    ts = sorted(sim.stats.timestamps)
    gap_at = max(range(1, len(ts)), key=lambda i: ts[i] - ts[i - 1])
    assert 0.45 <= ts[gap_at] - ts[gap_at - 1] <= 0.5 + 0.05 + 0.1  # Retry-After, jitter, slack
    # The probe is answered after 50 ms; nothing else starts before that.
    assert ts[gap_at + 1] - ts[gap_at] >= 0.045


async def test_a_429_storm_with_retry_after_costs_about_a_second(sim: Simulator, tmp_path: Path) -> None:
    """Braze's own hour, default settings: one second in which every answer is a 429 with
    Retry-After: 1 and Remaining: 0. The pool pauses about a second, not until the reset."""
    sim.rate_limit, sim.rate_window = 250_000, 3600.0
    storm: list[float] = []

    def storming(campaign_id: str, send_id: str) -> bool:
        if not storm and sim.stats.requests >= 100:
            storm.append(time.time())
        return bool(storm) and storm[0] <= time.time() < storm[0] + 1.0

    sim.faults.append(FaultRule(kind="rate_limit", retry_after="1", times=None, match=storming,
                                headers={"X-RateLimit-Remaining": "0"}))
    started = time.monotonic()
    summary = await run(sim, pairs_for(400), tmp_path, rate_limit=250_000, window=3600.0, reserve=0.1,
                        concurrency=64)
    assert summary.status == "complete" and summary.rate_limited >= 1
    assert 0.9 <= summary.paused_seconds <= 2.5, summary.paused_seconds
    assert time.monotonic() - started < 400 / 69.4 + 10
    ts = sorted(t for t in sim.stats.timestamps)
    assert 0.9 <= max(b - a for a, b in itertools.pairwise(ts)) <= 2.5


@pytest.mark.parametrize("latency", [0.0, 0.03, 0.3])
async def test_a_window_learnt_from_the_headers_is_used_to_the_full(
    sim: Simulator, tmp_path: Path, latency: float
) -> None:
    """300 requests per 2-second window, which bulkexport is not told: it assumes Braze's
    250,000 per hour and learns the rest from the headers, without a stall or a 429."""
    sim.rate_limit, sim.rate_window, sim.latency = 300, 2.0, latency
    pairs = 1800
    started = time.monotonic()
    summary = await run(sim, pairs_for(pairs), tmp_path, rate_limit=250_000, window=3600.0, reserve=0.0,
                        share=1.0, concurrency=64)
    elapsed = time.monotonic() - started
    assert summary.status == "complete"
    assert summary.rate_limited == 0 and sim.stats.by_status[429] == 0
    windows = per_window(sim.stats.timestamps, 2.0)
    assert len(windows) >= 3
    # Each steady window near the limit and never over it; a scheduling hiccup on a shared
    # 2-core machine (the simulator shares the event loop) may cost one window a few percent.
    assert sum(windows) / len(windows) >= 0.95 * 300 and all(0.85 * 300 <= w <= 300 for w in windows), windows
    assert elapsed <= 2 * pairs / 150 + 20


async def test_every_window_spends_its_budget_minus_the_reserve_never_more(sim: Simulator, tmp_path: Path) -> None:
    """400 per 10-second window, learnt, with a 10% reserve: seven windows of 360 and no tail
    (the stall this replays spent 358 of 360 for six windows, then 85, 1, 1 and 1)."""
    sim.rate_limit, sim.rate_window = 400, 10.0
    summary = await run(sim, pairs_for(2500), tmp_path, rate_limit=250_000, window=3600.0, reserve=0.1,
                        concurrency=64)
    assert summary.status == "complete"
    assert summary.rate_limited == 0 and sim.stats.by_status[429] == 0
    windows = per_window(sim.stats.timestamps, 10.0)
    assert len(windows) >= 3
    assert all(0.9 * 360 <= w <= 360 for w in windows), windows
