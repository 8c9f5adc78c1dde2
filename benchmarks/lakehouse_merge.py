"""Merge cost of the lakehouse tables: time and peak memory for N incoming send_stats rows.

    .venv/bin/python benchmarks/lakehouse_merge.py                    # 2,000,000 rows, both formats
    .venv/bin/python benchmarks/lakehouse_merge.py --rows 200000 --formats delta --per-commit 500000

Each format runs in its own child process (imports excluded from the times), which merges
the same rows twice into a fresh local table: first into an empty table (all inserts),
then again with a newer ``exported_at`` (every (pair, date) replaced: the nightly case).
The input is streamed: a base of simulator rows (Flattener output for 4,000 pairs, 176,311
rows) is yielded again and again under new campaign ids, date by date as a run's staging
is published (``--mixed``: copy after copy, every chunk spanning every date), so the child
never holds more than a base copy and one chunk. Peak RSS is ``VmHWM`` from ``/proc/self/status`` (see README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkexport.flatten import Flattener
from bulkexport.simulator import Simulator

ENDING_AT = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)


def _base(pairs: int) -> pa.Table:
    sim = Simulator(seed=0, anchor_date=date(2026, 11, 27))
    flat = Flattener("bench")
    us = int(datetime(2026, 11, 28, tzinfo=UTC).timestamp() * 1e6)
    for i in range(pairs):
        cid, sid = f"c{i // 3:05d}", f"s{i:07d}"
        flat.add(i, cid, sid, orjson.dumps(sim.payload(cid, sid, 15, ENDING_AT)), us)
    return pa.Table.from_batches(flat.build().stats)


def _stream(base: pa.Table, rows: int, shift: timedelta, by_date: bool) -> Iterator[pa.RecordBatch]:
    """``rows`` rows: copies of ``base`` under campaign ids suffixed by the copy number;
    ``by_date``: date by date (as a run's staging is published), else copy by copy."""
    copies = -(-rows // base.num_rows)
    index = base.schema.get_field_index("campaign_id")
    at = base.schema.get_field_index("exported_at")
    exported = pc.add(base.column("exported_at"), pa.scalar(shift, pa.duration("us")))
    base = base.set_column(at, "exported_at", exported)
    dates = pc.unique(base.column("date")) if by_date else []
    parts = [base.filter(pc.equal(base.column("date"), d)) for d in dates] or [base]
    sent = 0
    for part in parts:
        share = -(-rows * part.num_rows // base.num_rows)
        for copy in range(copies):
            cids = pc.binary_join_element_wise(part.column("campaign_id"), pa.scalar(f"{copy:03d}"), "-")
            table = part.set_column(index, "campaign_id", cids).slice(0, min(share, rows - sent))
            share -= table.num_rows
            sent += table.num_rows
            yield from table.to_batches(max_chunksize=65_536)
            if not share or sent >= rows:
                break


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(fmt: str, rows: int, per_commit: int, out: str, by_date: bool) -> dict[str, object]:
    from bulkexport.lakehouse import open_lake_table

    base = _base(4000)
    table = open_lake_table(fmt, out, "send_stats", max_rows_per_commit=per_commit)  # type: ignore[arg-type]
    report: dict[str, object] = {"format": fmt, "rows": rows, "per_commit": per_commit, "by_date": by_date}
    for label, shift in (("insert", timedelta(0)), ("replace", timedelta(hours=1))):
        start = time.perf_counter()
        result = table.merge(_stream(base, rows, shift, by_date))
        report[f"{label}_s"] = round(time.perf_counter() - start, 1)
        report[f"{label}_commits"] = len(result.commits)
        assert result.rows_written == result.rows_in, result
    start = time.perf_counter()
    table.optimize()
    report["optimize_s"] = round(time.perf_counter() - start, 1)
    report["table_rows"] = table.to_arrow().num_rows if rows <= 500_000 else "not read (large)"
    report["peak_rss_mb"] = round(_peak_rss_mb())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--per-commit", type=int, default=1_000_000)
    parser.add_argument("--formats", default="delta,iceberg")
    parser.add_argument("--mixed", action="store_true", help="input not ordered by date")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fmt, out = args.child.split(":", 1)
        print(json.dumps(child(fmt, args.rows, args.per_commit, out, not args.mixed)))
        return
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory() as out:
            argv = [sys.executable, __file__, "--rows", str(args.rows), "--per-commit", str(args.per_commit),
                    *(["--mixed"] if args.mixed else []), "--child", f"{fmt}:{out}"]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{fmt} failed:\n{done.stderr}")
            print(done.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
