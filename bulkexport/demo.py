"""``bulkexport demo``: the whole product on loopback, with no key and no network.

A Braze simulator with a fast window and a few injected 503s, 3,000 generated pairs, the same
engine as a real export; then where the data is and how to read it.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

from .api import export_async
from .summary import ExportSummary

__all__ = ["demo", "print_hints"]


def _demo_pairs(n: int) -> Iterator[tuple[str, str]]:
    """Generated lazily: a few sends per campaign, one duplicate to show de-duplication."""
    for i in range(n):
        yield f"campaign-{i // 4:05d}", f"send-{i:06d}"
    if n:
        yield "campaign-00000", "send-000000"


async def demo(args: argparse.Namespace) -> ExportSummary:
    from .simulator import FaultRule, Simulator

    anchor = date.today()
    key = str(uuid.uuid4())  # shaped like a real Braze key (a UUID), fresh for every demo
    async with Simulator(
        api_key=key, seed=7, anchor_date=anchor, rate_limit=args.limit, rate_window=2.0, extras=True
    ) as sim:
        # A little trouble, so the summary shows retries: 2% of pairs see one 503 first.
        sim.faults.append(FaultRule(kind="status", status=503, times=1, probability=0.02))
        print(f"simulator  {sim.url} (Braze stand-in on loopback, {args.limit} requests per 2 s)")
        return await export_async(
            _demo_pairs(args.pairs),
            args.out,
            endpoint=sim.url,
            api_key=key,
            ending_at=datetime(anchor.year, anchor.month, anchor.day, 23, 59, 59, tzinfo=UTC),
            run_id="demo",
            rate_limit=args.limit,
            window=2.0,
            concurrency=32,
            backoff_initial=0.05,
            backoff_max=0.5,
            checkpoint_interval=1.0,
            overwrite=True,
            handle_signals=True,
        )


def print_hints(out: str) -> None:
    root = os.path.abspath(out)
    print(f"data       {root}/send_stats/date=YYYY-MM-DD/*.parquet, {root}/send_totals/...")
    print(
        "read it    python -c \"import bulkexport; print(bulkexport.read_table("
        f"'{out}').group_by('channel').aggregate([('sent', 'sum')]))\""
    )
    print(
        "DuckDB     python -c \"import duckdb; duckdb.sql(\\\"SELECT date, channel, sum(sent) FROM "
        f"read_parquet('{out}/send_stats/**/*.parquet', hive_partitioning=true) GROUP BY ALL ORDER BY ALL\\\").show()\""
    )
