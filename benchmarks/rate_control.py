"""Rate control against a shared, clock-windowed limit, compressed in time.

Braze counts 250,000 requests per clock hour per workspace; here the simulator counts
``LIMIT`` requests per ``WINDOW``-second window, so an hour of behaviour fits in seconds.
For each scenario (alone or with a competing client, at 0 ms and 300 ms latency) the table
shows what bulkexport achieved over the full windows of its run, against what it was allowed
(the limit, minus its reserve, minus what the competitor spent), plus 429s and paused time.

    python benchmarks/rate_control.py            # ~1 minute
    python benchmarks/rate_control.py --smoke    # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from collections import Counter
from datetime import UTC, date, datetime
from typing import Any

import bulkexport
from bulkexport.simulator import Simulator

KEY = "0f8b2c6e-3d1a-4e5f-9b7c-2a6d8e4f1c03"  # shaped like a Braze key (36 characters)
ANCHOR = date(2026, 11, 27)


def full_windows(timestamps: list[float], window: float) -> dict[int, int]:
    """Steady windows: not the first or last (partial), nor the one where the pairs run out."""
    counts = Counter(math.floor(t / window) for t in timestamps)
    keys = sorted(counts)
    return {k: counts[k] for k in keys[1:-2]}


async def scenario(
    *, latency: float, competitor: float, limit: int, window: float, reserve: float, seconds: float
) -> dict[str, Any]:
    """Run one export long enough for ``seconds`` of windows; return the measurements."""
    async with Simulator(api_key=KEY, anchor_date=ANCHOR, rate_limit=limit, rate_window=window) as sim:
        sim.latency = latency
        allowed = limit * (1 - reserve) - competitor * limit
        pairs = ((f"c{i // 4}", f"s{i}") for i in range(int(allowed / window * seconds)))
        stop = asyncio.Event()
        others: list[float] = []  # competitor spend times (they are not our requests)

        async def compete() -> None:
            per_tick, owed = competitor * limit / 20, 0.0
            while not stop.is_set():
                owed += per_tick  # fractional requests carried over, so the share is exact
                sim.spend(int(owed))
                owed -= int(owed)
                others.append(asyncio.get_running_loop().time())
                await asyncio.sleep(window / 20)

        task = asyncio.create_task(compete()) if competitor else None
        with tempfile.TemporaryDirectory() as out:
            summary = await bulkexport.export_async(
                pairs, out, endpoint=sim.url, api_key=KEY, ending_at=datetime(2026, 11, 27, tzinfo=UTC),
                rate_limit=limit, window=window, reserve=reserve, concurrency=128,
                backoff_initial=0.01, backoff_max=0.1, checkpoint_interval=1.0,
            )
        stop.set()
        if task is not None:
            await task
        windows = full_windows(sim.stats.timestamps, window)
        achieved = sum(windows.values()) / max(len(windows), 1)
        return {
            "latency_ms": int(latency * 1000),
            "competitor": f"{competitor:.0%}",
            "windows": len(windows),
            "allowed_per_window": allowed,
            "achieved_per_window": achieved,
            "ratio": achieved / allowed,
            "requests": summary.requests,
            "429s": summary.rate_limited,
            "429_share": summary.rate_limited / max(summary.requests, 1),
            "paused_s": summary.paused_seconds,
        }


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'latency':>8} {'competitor':>10} {'windows':>7} {'allowed/w':>9} {'achieved/w':>10} "
        f"{'ratio':>6} {'requests':>8} {'429s':>5} {'429 %':>6} {'paused s':>8}  goal"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        alone = r["competitor"] == "0%"
        ok = (r["ratio"] >= 0.98 and r["429s"] == 0) if alone else r["429_share"] <= 0.01
        goal = ("ratio>=0.98, 0 x 429" if alone else "429s<=1%") + (": PASS" if ok else ": MISS")
        lines.append(
            f"{r['latency_ms']:>6}ms {r['competitor']:>10} {r['windows']:>7} {r['allowed_per_window']:>9.0f} "
            f"{r['achieved_per_window']:>10.1f} {r['ratio']:>6.3f} {r['requests']:>8} {r['429s']:>5} "
            f"{r['429_share']:>6.2%} {r['paused_s']:>8.2f}  {goal}"
        )
    return "\n".join(lines)


async def main(smoke: bool, quiet: bool = False) -> str:
    """Run the four scenarios; return the table (printed too unless ``quiet``)."""
    limit, window, reserve = (200, 1.0, 0.1) if smoke else (300, 2.0, 0.1)
    seconds = 4 if smoke else 14
    rows = []
    for latency in (0.0, 0.3):
        for competitor in (0.0, 0.3):
            rows.append(
                await scenario(
                    latency=latency, competitor=competitor, limit=limit, window=window,
                    reserve=reserve, seconds=seconds,
                )
            )
    table = (
        f"rate control: limit {limit} per {window:g}s window, reserve {reserve:.0%}, "
        f"~{seconds}s of windows per scenario\n{render(rows)}"
    )
    if not quiet:
        print(table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    asyncio.run(main(parser.parse_args().smoke))
