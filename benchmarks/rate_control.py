"""Rate control, measured two ways, printed as one table.

**live**: real HTTP to the simulator, whose window is compressed to seconds. bulkexport is
not told the window or the limit (it assumes Braze's 250,000 per hour and learns the rest
from the headers). Scenarios: 300 per 2 s at 0, 30 and 300 ms, reserve 0; 400 per 10 s with
a 10% reserve; a competitor spending 30% of every window; a one-second storm of 429s with
``Retry-After: 1`` and ``Remaining: 0`` in Braze's own hour.

**hours**: Braze's real hour in virtual time: the real ``RateController`` with 64 workers at
200 ms against ``HourlyBraze`` (250,000 per clock hour, default 10% reserve) for three
hours: alone, a competitor spending 30% from minute 20, 429 storms every ~5 minutes, the
limit lowered to 100,000 at 1h30.

    python benchmarks/rate_control.py            # ~4 minutes
    python benchmarks/rate_control.py --smoke    # small sizes, ~50 s
    python benchmarks/rate_control.py --quick    # one scenario of each kind, ~10 s (run.py --smoke, CI)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import bulkexport
from bulkexport.limiter import RateController
from bulkexport.simulator import HOUR, FaultRule, HourlyBraze, Simulator, drive, run_virtual

KEY = "0f8b2c6e-3d1a-4e5f-9b7c-2a6d8e4f1c03"
ANCHOR = date(2026, 11, 27)
EPOCH = 1_790_002_800.0  # the top of an hour


def steady_windows(timestamps: list[float], window: float) -> list[int]:
    """Requests per window, without the first and last (partial) nor the one where the pairs
    run out."""
    counts = Counter(math.floor(t / window) for t in timestamps)
    keys = sorted(counts)
    return [counts[k] for k in keys[1:-2]]


@dataclass
class Row:
    name: str
    allowed: float  # per window
    achieved: list[float]  # per steady window (or hour)
    requests: int
    rate_limited: int
    paused: float
    gap: float  # longest stretch without a request start, seconds (not counting waits for a reset)
    goal: str
    ok: bool

    def cells(self) -> list[str]:
        lo = min(self.achieved) / self.allowed if self.achieved else float("nan")
        hi = max(self.achieved) / self.allowed if self.achieved else float("nan")
        return [self.name, f"{self.allowed:,.0f}", f"{len(self.achieved)}", f"{lo:.3f}", f"{hi:.3f}",
                f"{self.requests:,}", f"{self.rate_limited:,}", f"{self.paused:,.1f}", f"{self.gap:.2f}",
                f"{self.goal}: {'PASS' if self.ok else 'MISS'}"]  # fmt: skip


async def live(
    name: str, *, limit: int, window: float, latency: float, reserve: float, pairs: int,
    competitor: float = 0.0, storm: bool = False,
) -> Row:
    """One export against the simulator; bulkexport assumes Braze's hour and learns."""
    async with Simulator(api_key=KEY, anchor_date=ANCHOR, rate_limit=limit, rate_window=window) as sim:
        sim.latency = latency
        stop = asyncio.Event()
        storm_at: list[float] = []

        async def compete() -> None:
            owed = 0.0
            while not stop.is_set():
                owed += competitor * limit / 20  # fractions carried over: the share is exact
                sim.spend(int(owed))
                owed -= int(owed)
                await asyncio.sleep(window / 20)

        def storming(campaign_id: str, send_id: str) -> bool:
            if not storm_at and sim.stats.requests >= 100:
                storm_at.append(time.time())
            return bool(storm_at) and storm_at[0] <= time.time() < storm_at[0] + 1.0

        if storm:
            sim.faults.append(FaultRule(kind="rate_limit", retry_after="1", times=None, match=storming,
                                        headers={"X-RateLimit-Remaining": "0"}))  # fmt: skip
        task = asyncio.create_task(compete()) if competitor else None
        with tempfile.TemporaryDirectory() as out:
            summary = await bulkexport.export_async(
                ((f"c{i // 4}", f"s{i}") for i in range(pairs)), out, endpoint=sim.url, api_key=KEY,
                ending_at=datetime(2026, 11, 27, tzinfo=UTC), reserve=reserve, concurrency=64,
                backoff_initial=0.01, backoff_max=0.1, checkpoint_interval=1.0,
            )
        stop.set()
        if task is not None:
            await task
    allowed = limit * (1 - reserve) - competitor * limit
    achieved = [float(n) for n in steady_windows(sim.stats.timestamps, window)]
    ts = sorted(sim.stats.timestamps)
    gap = max((b - a for a, b in itertools.pairwise(ts)), default=0.0)
    if storm:
        goal, ok = "paused 0.9-2.5 s", 0.9 <= summary.paused_seconds <= 2.5 and gap <= 2.5
        allowed, achieved = 250_000 * 0.9, []
    elif competitor:
        goal, ok = "<=1% 429, <=limit", summary.rate_limited <= 0.01 * summary.requests
        ok = ok and all(a <= limit * (1 - competitor) for a in achieved)
    else:
        floor = 0.9 if reserve else 0.95
        goal = f"{floor:.2f}-1.00 of allowed, 0 x 429"
        ok = bool(achieved) and all(floor * allowed <= a <= allowed for a in achieved)
        ok = ok and summary.rate_limited == 0
    return Row(name, allowed, achieved, summary.requests, summary.rate_limited, summary.paused_seconds, gap,
               goal, ok)  # fmt: skip


def hours(name: str, braze: HourlyBraze, n_hours: float, allowed: list[float | None]) -> Row:
    """The real controller through ``n_hours`` of Braze time, in virtual time; ``allowed`` is
    what each full hour may spend (None: not judged, e.g. the hour the limit changed)."""

    async def scenario() -> tuple[Any, RateController]:
        async with RateController(limit=250_000, window=HOUR, reserve=0.1, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=n_hours * HOUR), ctrl

    limit_changes = bool(braze.limit_changes)  # the model consumes them as they happen
    run, ctrl = run_virtual(scenario())
    first = math.floor(EPOCH / HOUR)
    judged = [(braze.ours[first + i] + braze.others_in(first + i), a) for i, a in enumerate(allowed) if a]

    def waits_for_reset(a: float, b: float) -> bool:
        reset = math.ceil((EPOCH + a) / HOUR) * HOUR
        return reset <= EPOCH + b <= reset + 1.0

    stalls = [b - a for a, b in itertools.pairwise(run.starts) if b - a > 2.0 and not waits_for_reset(a, b)]
    gap = max((b - a for a, b in itertools.pairwise(run.starts) if not waits_for_reset(a, b)), default=0.0)
    slack = ctrl.stats.max_in_flight
    ok = not stalls and all(0.98 * a <= n <= a + slack for n, a in judged)
    if not limit_changes:  # after a change, requests already under way may be refused
        ok = ok and not braze.over_limit
    return Row(name, judged[0][1] if judged else 0.0, [n / a * judged[0][1] for n, a in judged], len(run.starts),
               run.answers[429], ctrl.stats.paused_seconds, gap, "0.98-1.00 per full hour, no stall", ok)  # fmt: skip


def render(rows: list[Row]) -> str:
    head = ["scenario", "allowed/w", "windows", "min", "max", "requests", "429s", "paused s", "max gap s", "goal"]
    table = [head, *(r.cells() for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in table]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def live_rows(smoke: bool) -> list[Row]:
    scale = 0.25 if smoke else 1.0
    rows = []
    for ms in (0, 30, 300):
        rows.append(await live(f"live 300/2s {ms}ms learnt", limit=300, window=2.0, latency=ms / 1000,
                               reserve=0.0, pairs=int(2100 * scale)))  # fmt: skip
    rows.append(await live("live 400/10s reserve 10%", limit=400, window=10.0, latency=0.0, reserve=0.1,
                           pairs=int(2500 * scale)))  # fmt: skip
    for ms in (0, 300):
        rows.append(await live(f"live 300/2s {ms}ms competitor 30%", limit=300, window=2.0, latency=ms / 1000,
                               reserve=0.1, competitor=0.3, pairs=int(1300 * scale)))  # fmt: skip
    rows.append(await live("live 429 storm, Retry-After: 1", limit=250_000, window=3600.0, latency=0.0,
                           reserve=0.1, pairs=400, storm=True))  # fmt: skip
    return rows


def hour_rows(smoke: bool, n_hours: float | None = None) -> list[Row]:
    n = n_hours or (0.5 if smoke else 3.0)
    full = int(n)
    budget, low = 250_000 * 0.9, 100_000 * 0.9
    rng = random.Random(5)
    storms = [(t, t + 1.0) for t in sorted(rng.uniform(0, n * HOUR) for _ in range(int(12 * n)))]
    drop = [(n / 2 * HOUR, 100_000)]
    return [
        hours(f"{n:g}h virtual alone", HourlyBraze(EPOCH), n, [budget] * full),
        hours(f"{n:g}h virtual competitor 30% from 0:20",
              HourlyBraze(EPOCH, competitor_from=1200.0, competitor_share=0.3), n, [budget] * full),
        hours(f"{n:g}h virtual 429 storms", HourlyBraze(EPOCH, storms=storms), n, [budget] * full),
        hours(f"{n:g}h virtual limit 100k at {n / 2:g}h", HourlyBraze(EPOCH, limit_changes=drop), n,
              [budget, None, low][:full]),
    ]  # fmt: skip


async def quick_rows() -> list[Row]:
    """One live scenario and one with a competitor, at smoke size: the code paths, not the verdicts."""
    return [
        await live("live 300/2s 0ms learnt", limit=300, window=2.0, latency=0.0, reserve=0.0, pairs=525),
        await live("live 300/2s 0ms competitor 30%", limit=300, window=2.0, latency=0.0, reserve=0.1,
                   competitor=0.3, pairs=325),
    ]  # fmt: skip


def main(smoke: bool, quiet: bool = False, quick: bool = False) -> str:
    """Run every scenario (``quick``: one of each kind); return the table (printed too unless ``quiet``)."""
    if quick:
        rows = asyncio.run(quick_rows()) + hour_rows(True, n_hours=0.2)[:1]
    else:
        rows = asyncio.run(live_rows(smoke)) + hour_rows(smoke)
    table = ("rate control (allowed/w: per window or per hour, after reserve and competitor; min/max: "
             f"achieved / allowed over steady windows or full hours)\n{render(rows)}")  # fmt: skip
    if not quiet:
        print(table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small sizes")
    parser.add_argument("--quick", action="store_true", help="one scenario of each kind, small (CI)")
    args = parser.parse_args()
    main(args.smoke or args.quick, quick=args.quick)
